"""The real stack behind a real gateway, shared by test_gateway.py and test_browser.py.

STT, LLM (SmolLM2-135M, no Groq key), TTS and the orchestrator as `python -m` processes
on free ports, and `python -m web_gateway` in front of them with a token, a small upload
limit (to test 413) and one allowed CORS origin. Started once per pytest process.
"""

from __future__ import annotations

import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from helpers import OUTPUT, NatsServer, ServiceProcess, espeak_wav, free_port

TOKEN = "gateway-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD_LIMIT_MB = 1.0
CORS_ORIGIN = "http://allowed.example"
QUESTION = "What is the capital of France?"


@dataclass
class GatewayStack:
    base: str
    env: dict[str, str]
    procs: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws"

    def stop(self) -> None:
        for name in ("gateway", "orchestrator", "stt", "llm", "tts"):
            if name in self.procs:
                self.procs[name].stop()


def wait_http_healthy(url: str, proc: ServiceProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with code {proc.proc.returncode}:\n{proc.logs()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


def start_gateway(env: dict[str, str], name: str = "gateway") -> tuple[ServiceProcess, str]:
    port = free_port()
    env = {**env, "VOICEBUS_GATEWAY_ADDR": f"127.0.0.1:{port}"}
    proc = ServiceProcess("web_gateway", env["VOICEBUS_GATEWAY_ADDR"], env, name=name)
    base = f"http://127.0.0.1:{port}"
    wait_http_healthy(f"{base}/healthz", proc)
    return proc, base


def start_stack(nats_url: str, cleanup: list) -> GatewayStack:  # noqa: ANN001
    """STT, LLM, TTS, orchestrator and the gateway; `cleanup` receives the stop function first."""
    ports = {name: free_port() for name in ("stt", "llm", "tts", "orchestrator")}
    env = {
        "VOICEBUS_NATS_URL": nats_url, "VOICEBUS_DATA_DIR": tempfile.mkdtemp(prefix="voicebus-gw-"),
        "GROQ_API_KEY": "", "VOICEBUS_LLM_PROVIDERS": "local", "VOICEBUS_LLM_LOCAL_MODEL": "smollm2-135m",
        "VOICEBUS_AUTH_TOKEN": TOKEN, "VOICEBUS_MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB),
        "VOICEBUS_CORS_ORIGINS": CORS_ORIGIN, "VOICEBUS_HEARTBEAT_SECONDS": "0.5",
        **{f"VOICEBUS_{name.upper()}_ADDR": f"127.0.0.1:{port}" for name, port in ports.items()},
    }
    procs = {name: ServiceProcess(f"{name}_service", env[f"VOICEBUS_{name.upper()}_ADDR"], env, name=f"gw-{name}")
             for name in ("stt", "llm", "tts")}
    procs["orchestrator"] = ServiceProcess("orchestrator", env["VOICEBUS_ORCHESTRATOR_ADDR"], env, name="gw-orch")
    stack = GatewayStack(base="", env=env, procs=procs)
    cleanup.append(stack.stop)
    for proc in procs.values():
        proc.wait_healthy()
    procs["gateway"], stack.base = start_gateway(env)
    return stack


_shared: GatewayStack | None = None


def shared_stack(_nats_url: str, config) -> GatewayStack:  # noqa: ANN001 - pytest.Config
    """Start the stack once per pytest process; pytest stops it when the run ends."""
    global _shared
    if _shared is None:
        stops: list = []
        # Its own NATS: the stack lives for the whole run and must not discover (or be
        # discovered by) other tests' services through their heartbeats.
        nats = NatsServer()
        stops.append(nats.stop)
        try:
            _shared = start_stack(nats.url, stops)
        finally:
            for stop in stops:
                config.add_cleanup(stop)
    return _shared


def speech_wav(text: str, path: Path, lead_silence: float = 0.0, tail_silence: float = 0.0) -> Path:
    """espeak-ng speech, optionally padded with silence (16-bit mono WAV)."""
    espeak_wav(text, path)
    if lead_silence or tail_silence:
        with wave.open(str(path)) as w:
            rate, frames = w.getframerate(), w.readframes(w.getnframes())
        pad = lambda seconds: b"\0\0" * int(rate * seconds)  # noqa: E731
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pad(lead_silence) + frames + pad(tail_silence))
    return path


def wav_pcm(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def pcm16_at(pcm: bytes, rate: int, to_rate: int) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    n_out = int(len(samples) * to_rate / rate)
    resampled = np.interp(np.linspace(0, len(samples) - 1, n_out), np.arange(len(samples)), samples)
    return resampled.astype("<i2").tobytes()


def output_dir(name: str) -> Path:
    path = OUTPUT / name
    path.mkdir(parents=True, exist_ok=True)
    return path
