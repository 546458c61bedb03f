"""The command-line clients against the real stack: `voicebus talk` (Python, Converse),
`clients/node/talk.js` (Node.js, ProcessTurn, protos loaded at run time), and the clients
built from generated stubs: `clients/typescript` (Converse, buf + protoc-gen-es, Connect's gRPC
transport) and `clients/go` (Converse, Debian's protoc-gen-go and protoc-gen-go-grpc).

One stack for the module, started the way a user starts it (`voicebus up`, free ports,
a token), with the tiny SmolLM2 model so that answers come quickly.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import wave
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway_stack import speech_wav
from helpers import ROOT, VoicebusUp, espeak_wav, free_port, word_error_rate, words
from voicebus.audio import decode_container, wav_bytes
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc

TOKEN = "clients-token-456"
# Whisper tiny.en hears this espeak-ng sentence exactly, through ProcessTurn and Converse alike.
QUESTION = "How far away is the moon?"
NODE_CLIENT = ROOT / "clients" / "node" / "talk.js"
TYPESCRIPT_CLIENT = ROOT / "clients" / "typescript"
GO_CLIENT = ROOT / "clients" / "go"
SETUP_HINT = "run scripts/setup.sh --test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # Two sentences at most per answer: five clients' turns on two cores stay quick.
    up = VoicebusUp("clients", tmp_path_factory.mktemp("clients-data"),
                    {"VOICEBUS_AUTH_TOKEN": TOKEN, "VOICEBUS_LLM_LOCAL_MODEL": "smollm2-135m",
                     "VOICEBUS_LLM_MAX_SENTENCES": "2"})
    yield {"addr": up.address("orchestrator"), "env": up.env}
    up.stop()


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> Path:
    return espeak_wav(QUESTION, tmp_path_factory.mktemp("audio") / "question.wav", speed=130)


def conversation(stack, conversation_id: str) -> assistant_pb2.Conversation:
    with grpc.insecure_channel(stack["addr"]) as channel:
        reply = assistant_pb2_grpc.AssistantStub(channel).GetConversation(
            assistant_pb2.GetConversationRequest(conversation_id=conversation_id),
            metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
    return reply.conversation


def printed(stdout: str) -> dict[str, str]:
    """The client's `label: value` lines (the first of each label)."""
    lines: dict[str, str] = {}
    for line in stdout.splitlines():
        label, sep, value = line.partition(": ")
        if sep:
            lines.setdefault(label, value.strip())
    return lines


def assert_speech_wav(path: Path) -> None:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        assert 8_000 <= w.getframerate() <= 48_000
        assert w.getnframes() / w.getframerate() > 0.3
    samples = decode_container(path.read_bytes())
    assert float(np.sqrt(np.mean(samples ** 2))) > 0.01, "the answer is silent"


def assert_one_line_error(result: subprocess.CompletedProcess[str], prefix: str, *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("usage:")), result.stderr
    assert lines[0].startswith(prefix), result.stderr
    for needle in needles:
        assert needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "    at " not in result.stderr


def without_voicebus_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBUS_")}
    return {**clean, **(extra or {})}


# --- Node.js ---------------------------------------------------------------------------------

def require_node_client() -> None:
    assert shutil.which("node"), "node is not installed (scripts/setup.sh --test installs it)"
    assert (NODE_CLIENT.parent / "node_modules" / "@grpc" / "grpc-js").is_dir(), \
        "run scripts/setup.sh --test (npm ci in clients/node)"


def node(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    require_node_client()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBUS_")}
    return subprocess.run(["node", str(NODE_CLIENT), *args], cwd=ROOT, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def assert_spoken_turn(result, out) -> dict[str, str]:  # noqa: ANN001 - a CompletedProcess
    """A client's audio turn: exit 0, the question heard, an answer printed and saved as speech."""
    assert result.returncode == 0, result.stdout + result.stderr
    shown = printed(result.stdout)
    assert {"far", "moon"} <= set(words(shown["you"])), shown
    assert word_error_rate(QUESTION, shown["you"]) <= 0.34, shown["you"]
    assert shown["assistant"], result.stdout
    assert_speech_wav(out)
    return shown


def test_node_client_sends_a_wav_and_saves_the_spoken_answer(stack, question_wav, tmp_path):
    out = tmp_path / "answer.wav"
    result = node("--audio", str(question_wav), "--addr", stack["addr"], "--token", TOKEN, "--out", str(out))
    shown = assert_spoken_turn(result, out)
    stored = conversation(stack, shown["conversation"])
    assert stored.turn_count == 1
    assert stored.turns[0].user_text == shown["you"] and " ".join(stored.turns[0].assistant_text.split()) == shown["assistant"]


def test_node_client_reads_address_and_token_from_the_environment(stack, tmp_path):
    out = tmp_path / "typed.wav"
    result = node("--text", "Say hello.", "--out", str(out),
                  env={"VOICEBUS_ORCHESTRATOR_ADDR": stack["addr"], "VOICEBUS_AUTH_TOKEN": TOKEN})
    assert result.returncode == 0, result.stdout + result.stderr
    shown = printed(result.stdout)
    assert shown["you"] == "Say hello." and shown["assistant"]
    assert_speech_wav(out)


def test_node_client_wrong_token_is_one_clear_line(stack, question_wav, tmp_path):
    result = node("--audio", str(question_wav), "--addr", stack["addr"], "--token", "wrong",
                  "--out", str(tmp_path / "x.wav"))
    assert_one_line_error(result, "talk.js: UNAUTHENTICATED")
    assert not (tmp_path / "x.wav").exists()


def test_node_client_audio_the_server_cannot_decode(stack, tmp_path):
    """Looks like a WAV to the client, is not one: the server's INVALID_ARGUMENT, in one line."""
    fake = tmp_path / "broken.wav"
    fake.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + os.urandom(2000))
    result = node("--audio", str(fake), "--addr", stack["addr"], "--token", TOKEN, "--out", str(tmp_path / "x.wav"))
    assert_one_line_error(result, "talk.js: INVALID_ARGUMENT")


def test_node_client_bad_input_files(tmp_path):
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("this is text, not sound\n")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    addr = f"127.0.0.1:{free_port()}"  # nothing listens: the file is refused before any call
    assert_one_line_error(node("--audio", str(tmp_path / "missing.wav"), "--addr", addr), "talk.js: no such file")
    assert_one_line_error(node("--audio", str(not_audio), "--addr", addr), "talk.js:", "not an audio file")
    assert_one_line_error(node("--audio", str(empty), "--addr", addr), "talk.js:", "is empty")
    assert_one_line_error(node("--addr", addr), "talk.js:", "--audio FILE or --text TEXT")
    assert_one_line_error(node("--text", "hi", "--addr", addr), "talk.js: UNAVAILABLE", addr)


def copy_of_the_node_client(tmp_path: Path) -> Path:
    """clients/node with its node_modules, outside the repository (no ../../proto there)."""
    require_node_client()
    copy = tmp_path / "voicebus-node-client"
    shutil.copytree(NODE_CLIENT.parent, copy, symlinks=True)
    return copy / "talk.js"


def test_node_client_copied_outside_the_repository_reads_VOICEBUS_PROTO_DIR(stack, tmp_path):
    talk_js = copy_of_the_node_client(tmp_path)
    out = tmp_path / "typed.wav"
    result = subprocess.run(["node", str(talk_js), "--text", "Say hello.", "--addr", stack["addr"], "--token", TOKEN,
                             "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                            env=without_voicebus_env({"VOICEBUS_PROTO_DIR": str(ROOT / "proto")}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert printed(result.stdout)["assistant"], result.stdout
    assert_speech_wav(out)


def test_node_client_copied_outside_the_repository_without_protos_says_so(tmp_path):
    talk_js = copy_of_the_node_client(tmp_path)
    addr = f"127.0.0.1:{free_port()}"
    for extra, needle in (({}, "set VOICEBUS_PROTO_DIR"), ({"VOICEBUS_PROTO_DIR": str(tmp_path)}, str(tmp_path))):
        result = subprocess.run(["node", str(talk_js), "--text", "hi", "--addr", addr], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, env=without_voicebus_env(extra))
        assert_one_line_error(result, "talk.js:", "voicebus/v1/assistant.proto", needle)


# --- TypeScript and Go (stubs generated from proto/) ---------------------------------------

def run_client(command: list[str], *args: str, env: dict[str, str] | None = None,
               timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *args], cwd=ROOT, env=without_voicebus_env(env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def typescript_talk() -> list[str]:
    """`npm run build` (tsc) in clients/typescript; the command that runs the built talk.js."""
    assert shutil.which("node"), f"node is not installed ({SETUP_HINT})"
    assert (TYPESCRIPT_CLIENT / "node_modules" / "typescript").is_dir(), \
        f"clients/typescript has no node_modules: {SETUP_HINT} (npm ci in clients/typescript)"
    built = subprocess.run(["npm", "run", "--silent", "build"], cwd=TYPESCRIPT_CLIENT,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    return ["node", str(TYPESCRIPT_CLIENT / "dist" / "talk.js")]


@pytest.fixture(scope="module")
def go_talk(tmp_path_factory) -> list[str]:
    """clients/go/build.sh (Debian's Go in GOPATH mode); the built talk binary."""
    assert shutil.which("go"), f"go is not installed ({SETUP_HINT}: Debian's golang-go)"
    assert (Path("/usr/share/gocode/src/google.golang.org/grpc")).is_dir(), \
        f"Debian's gRPC for Go is missing ({SETUP_HINT}: golang-google-grpc-dev)"
    binary = tmp_path_factory.mktemp("go-client") / "talk"
    built = subprocess.run(["bash", str(GO_CLIENT / "build.sh"), str(binary)], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    return [str(binary)]


COMPILED_CLIENTS = {"typescript": ("typescript_talk", "talk.ts"), "go": ("go_talk", "talk")}


@pytest.fixture(params=sorted(COMPILED_CLIENTS))
def compiled_client(request) -> tuple[list[str], str]:
    """(command, the prefix of its error lines) of each client built from generated stubs."""
    fixture, program = COMPILED_CLIENTS[request.param]
    return request.getfixturevalue(fixture), program


def test_compiled_client_text_turn(stack, compiled_client, tmp_path):
    command, _ = compiled_client
    out = tmp_path / "typed.wav"
    result = run_client(command, "--text", "Say hello.", "--out", str(out),
                        env={"VOICEBUS_ORCHESTRATOR_ADDR": stack["addr"], "VOICEBUS_AUTH_TOKEN": TOKEN})
    assert result.returncode == 0, result.stdout + result.stderr
    shown = printed(result.stdout)
    assert shown["you"] == "Say hello." and shown["assistant"], result.stdout
    assert shown["audio"] == str(out)
    assert_speech_wav(out)
    stored = conversation(stack, shown["conversation"])
    assert stored.turns[0].assistant_text.split() == shown["assistant"].split()


def test_compiled_client_audio_turn(stack, compiled_client, tmp_path):
    command, _ = compiled_client
    question = speech_wav(QUESTION, tmp_path / "question.wav", lead_silence=0.3, tail_silence=0.5)
    out = tmp_path / "answer.wav"
    result = run_client(command, "--audio", str(question), "--addr", stack["addr"], "--token", TOKEN,
                        "--out", str(out), "--timeout", "120")
    assert_spoken_turn(result, out)


def test_compiled_client_wrong_token_is_one_clear_line(stack, compiled_client, tmp_path):
    command, program = compiled_client
    result = run_client(command, "--text", "hello", "--addr", stack["addr"], "--token", "wrong",
                        "--out", str(tmp_path / "x.wav"))
    assert_one_line_error(result, f"{program}: UNAUTHENTICATED")
    assert not (tmp_path / "x.wav").exists()


def test_compiled_client_bad_input(compiled_client, tmp_path):
    command, program = compiled_client
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("this is text, not sound\n")
    addr = f"127.0.0.1:{free_port()}"  # nothing listens: the file is refused before any call
    assert_one_line_error(run_client(command, "--audio", str(tmp_path / "missing.wav"), "--addr", addr),
                          f"{program}: no such file")
    assert_one_line_error(run_client(command, "--audio", str(not_audio), "--addr", addr),
                          f"{program}:", "not an audio file")
    assert_one_line_error(run_client(command, "--addr", addr), f"{program}:", "--audio FILE or --text TEXT")
    assert_one_line_error(run_client(command, "--text", "hi", "--addr", addr), f"{program}: UNAVAILABLE", addr)


# --- generated stubs ---------------------------------------------------------------------------

def gen_clients_check(root: Path) -> subprocess.CompletedProcess[str]:
    assert (ROOT / "node_modules" / ".bin" / "buf").exists(), f"buf is missing: {SETUP_HINT}"
    return subprocess.run(["bash", str(root / "scripts" / "gen_clients.sh"), "--check"], cwd=root,
                          capture_output=True, text=True, timeout=300)


def test_every_languages_committed_stubs_match_proto():
    """Python (voicebus/v1), TypeScript and Go: `scripts/gen_protos.sh --all --check`."""
    drift = subprocess.run(["bash", "scripts/gen_protos.sh", "--all", "--check"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert drift.returncode == 0, drift.stdout + drift.stderr
    assert "client stubs match proto/" in drift.stdout and "stubs match proto/" in drift.stdout.splitlines()[0]


def test_the_drift_check_names_each_language_whose_stubs_were_edited(tmp_path):
    """In a copy of the generator's inputs: an edited TypeScript and Go stub each fail the check."""
    for part in ("scripts", "proto", "buf.yaml"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, tmp_path / part)
    (tmp_path / "node_modules").symlink_to(ROOT / "node_modules")
    for language in ("typescript", "go"):
        shutil.copytree(ROOT / "clients" / language, tmp_path / "clients" / language,
                        ignore=shutil.ignore_patterns("node_modules", "dist", "bin"))
    (tmp_path / "clients" / "typescript" / "node_modules").symlink_to(TYPESCRIPT_CLIENT / "node_modules")
    assert gen_clients_check(tmp_path).returncode == 0
    with (tmp_path / "clients" / "typescript" / "src" / "gen" / "voicebus" / "v1" / "audio_pb.ts").open("a") as f:
        f.write("// edited by hand\n")
    (tmp_path / "clients" / "go" / "gen" / "voicebus" / "v1" / "tts_grpc.pb.go").unlink()
    drift = gen_clients_check(tmp_path)
    assert drift.returncode != 0, drift.stdout + drift.stderr
    assert "differ from proto/ in clients/go/gen clients/typescript/src/gen" in drift.stderr, drift.stderr


# --- voicebus talk ---------------------------------------------------------------------------

def talk(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicebus.cli", "talk", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def fake_player_env(stack, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A stand-in `aplay` first on PATH (no sound card here) that keeps the file it is given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kept = tmp_path / "played.wav"
    player = bin_dir / "aplay"
    player.write_text(f'#!/bin/sh\nfor last; do :; done\ncp "$last" "{kept}"\n')
    player.chmod(player.stat().st_mode | stat.S_IEXEC)
    return {**stack["env"], "PATH": f"{bin_dir}:{os.environ['PATH']}"}, kept


def test_talk_audio_then_text_in_the_same_conversation(stack, question_wav, tmp_path):
    out = tmp_path / "answer.wav"
    first = talk("--audio", str(question_wav), "--out", str(out), env=stack["env"])
    assert first.returncode == 0, first.stdout + first.stderr
    shown = printed(first.stdout)
    assert {"far", "moon"} <= set(words(shown["you"])), shown
    assert shown["assistant"] and shown["audio"] == str(out)
    assert_speech_wav(out)
    conversation_id = shown["conversation"]

    env, played = fake_player_env(stack, tmp_path)
    second = talk("--text", "And how far is the sun?", "--conversation", conversation_id, "--play", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert printed(second.stdout)["conversation"] == conversation_id
    assert_speech_wav(played)

    stored = conversation(stack, conversation_id)
    assert [t.user_text for t in stored.turns] == [shown["you"], "And how far is the sun?"]
    assert " ".join(stored.turns[0].assistant_text.split()) == shown["assistant"]


def test_talk_unknown_conversation(stack):
    result = talk("--text", "hello", "--conversation", "no-such-conversation", "--out", "/dev/null", env=stack["env"])
    assert_one_line_error(result, "voicebus talk: NOT_FOUND")


def test_talk_wrong_token(stack):
    env = {**stack["env"], "VOICEBUS_AUTH_TOKEN": "wrong"}
    assert_one_line_error(talk("--text", "hello", "--out", "/dev/null", env=env), "voicebus talk: UNAUTHENTICATED")


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicebus.cli", "doctor"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_doctor_on_the_running_stack(stack):
    result = doctor(stack["env"])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.split(None, 1) for line in result.stdout.splitlines() if line.startswith("  ")]
    assert {level for level, _ in lines} <= {"ok", "note"}, result.stdout
    said = [text for _, text in lines]
    assert f"orchestrator answers at {stack['addr']}" in said, result.stdout
    assert "bearer token: on (VOICEBUS_AUTH_TOKEN is set)" in said
    assert any(text.startswith("LLM, local: smollm2-135m") for text in said), result.stdout
    assert any(text.startswith("speech recognition: Whisper tiny.en") for text in said), result.stdout
    assert result.stdout.rstrip().endswith("Nothing is wrong.")


def test_doctor_says_what_is_wrong(stack, tmp_path):
    wrong_token = doctor({**stack["env"], "VOICEBUS_AUTH_TOKEN": "wrong"})
    assert wrong_token.returncode == 1
    assert "PROBLEM the orchestrator refuses this machine's token" in wrong_token.stdout, wrong_token.stdout
    nothing = doctor({**stack["env"], **{f"VOICEBUS_{s}_ADDR": f"127.0.0.1:{free_port()}"
                                         for s in ("STT", "LLM", "TTS", "ORCHESTRATOR", "GATEWAY")},
                      "VOICEBUS_NATS_URL": f"nats://127.0.0.1:{free_port()}",
                      "VOICEBUS_LLM_LOCAL_MODEL": str(tmp_path / "gone.gguf")})
    assert nothing.returncode == 1 and not nothing.stderr, nothing.stderr
    assert "the stack is not running - start it with scripts/up.sh" in nothing.stdout, nothing.stdout
    assert f"local model file not found: {tmp_path / 'gone.gguf'}" in nothing.stdout, nothing.stdout
    assert "2 problem(s)" in nothing.stdout


def rpc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicebus.cli", "rpc", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_rpc_lists_describes_and_calls_like_grpcurl(stack):
    listed = rpc(stack["addr"], "list", env=stack["env"])
    assert listed.returncode == 0, listed.stderr
    assert {"voicebus.v1.Assistant", "grpc.health.v1.Health"} <= set(listed.stdout.split()), listed.stdout
    described = rpc(stack["addr"], "describe", "voicebus.v1.Assistant", env=stack["env"])
    assert ("  rpc Converse(stream voicebus.v1.ConverseRequest) returns (stream voicebus.v1.ConverseResponse)"
            in described.stdout.splitlines()), described.stdout
    opened = talk("--text", "Say hi.", "--out", "/dev/null", env=stack["env"])
    conversation_id = printed(opened.stdout)["conversation"]
    got = rpc(stack["addr"], "call", "voicebus.v1.Assistant/GetConversation",
              json.dumps({"conversation_id": conversation_id}), env=stack["env"])
    assert got.returncode == 0, got.stderr
    reply = json.loads(got.stdout)
    assert reply["conversation"]["conversationId"] == conversation_id
    assert reply["conversation"]["turns"][0]["userText"] == "Say hi."


def test_rpc_mistakes_are_one_line(stack):
    wrong = {**stack["env"], "VOICEBUS_AUTH_TOKEN": "wrong"}
    assert_one_line_error(rpc(stack["addr"], "list", env=wrong), "voicebus rpc: UNAUTHENTICATED")
    env = stack["env"]
    assert_one_line_error(rpc(stack["addr"], "call", "voicebus.v1.Assistant/GetConversation", "{nope", env=env),
                          "voicebus rpc: the request is not a voicebus.v1.GetConversationRequest in JSON")
    assert_one_line_error(rpc(stack["addr"], "call", "voicebus.v1.Assistant/Converse", env=env),
                          "voicebus rpc: voicebus.v1.Assistant.Converse takes a stream of requests")
    assert_one_line_error(rpc(stack["addr"], "call", "voicebus.v1.Assistant/Nope", env=env),
                          "voicebus rpc: voicebus.v1.Assistant has no method 'Nope'")
    assert_one_line_error(rpc(stack["addr"], "call", "voicebus.v1.Assistant/GetConversation",
                              '{"conversation_id": "no-such"}', env=env), "voicebus rpc: NOT_FOUND")
    assert_one_line_error(rpc(f"127.0.0.1:{free_port()}", "list", env=env), "voicebus rpc: nothing answers at")


def test_talk_bad_input(tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is text, not sound\n")
    env = {**os.environ, "VOICEBUS_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}"}
    assert_one_line_error(talk("--audio", str(tmp_path / "missing.wav"), env=env), "voicebus talk: no such file")
    assert_one_line_error(talk("--audio", str(not_audio), env=env), "voicebus talk:", "not usable audio")
    assert_one_line_error(talk("--audio", str(tmp_path), env=env), "voicebus talk:", "not a file")
    unreachable = talk("--text", "hello", "--out", str(tmp_path / "x.wav"), env=env)
    assert_one_line_error(unreachable, "voicebus talk: UNAVAILABLE", env["VOICEBUS_ORCHESTRATOR_ADDR"])
    both = talk("--text", "hi", "--audio", str(not_audio), env=env)
    assert both.returncode == 2 and "not allowed with" in both.stderr


# --- both -------------------------------------------------------------------------------------

def test_silence_is_answered_with_please_repeat_by_both_clients(stack, tmp_path):
    """No speech: no LLM call, a spoken "please say that again", outcome no_speech, exit 0."""
    silence = tmp_path / "silence.wav"
    silence.write_bytes(wav_bytes(b"\x00\x00" * 16_000 * 2, 16_000))
    for result, out in ((node("--audio", str(silence), "--addr", stack["addr"], "--token", TOKEN,
                              "--out", str(tmp_path / "node.wav")), tmp_path / "node.wav"),
                        (talk("--audio", str(silence), "--out", str(tmp_path / "py.wav"), env=stack["env"]),
                         tmp_path / "py.wav")):
        assert result.returncode == 0, result.stdout + result.stderr
        shown = printed(result.stdout)
        assert shown["you"] == "(nothing heard)" and shown["outcome"] == "no_speech", result.stdout
        assert shown["assistant"]
        assert_speech_wav(out)
    # --play where no player is installed: the answer was given, the missing player is one line.
    bare = {**stack["env"], "PATH": str(tmp_path / "no-such-bin")}
    assert_one_line_error(talk("--audio", str(silence), "--play", env=bare), "voicebus talk: no audio player found")
