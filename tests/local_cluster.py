"""The whole stack as a cluster on loopback, no containers (tests/test_local_cluster.py, bench/cluster.py).

    async with LocalCluster("name") as cluster:
        cluster.ws_url, cluster.base          # the gateway, behind TOKEN
        cluster.kill("orchestrator-a")        # SIGKILL one process
        cluster.nats.kill("n1")               # SIGKILL one NATS node

- PostgreSQL from Debian (tests/postgres_server.py), one fresh database for both orchestrators;
- NATS: three routed nats-servers (tests/nats_cluster.py) with the stack's users and fsync on
  every write; every process is given all three nodes and logs in as its own role; the turn
  stream and the lease bucket have three replicas;
- two STT replicas (the orchestrators are configured with the first and learn the second from
  its heartbeats), one LLM (the local SmolLM2-135M, no Groq key), one TTS;
- orchestrators A and B on the same postgresql:// URL, and one gateway configured with A that
  learns B from its heartbeats.

Every service is `python -m <folder>` on a free port with the auth token (logs in
test-output/logs/). `start()` returns when every piece is ready for traffic: health checks
pass, /readyz is 200, the gateway knows both orchestrators, both orchestrators know both STT
replicas, and the R3 stream has a leader and two followers. `stop()` ends what is still
running and removes the temporary folders, also after a failed start.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
from nats.aio.client import Client

from gateway_stack import wait_http_healthy
from helpers import ServiceProcess, eventually, free_port
from nats_cluster import NatsCluster
from postgres_server import PostgresServer
from voicebus.bus import TURN_STREAM

TOKEN = "local-cluster-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE_SECONDS = 2.0
ENGINES = {"stt-0": "stt_service", "stt-1": "stt_service", "llm": "llm_service", "tts": "tts_service"}
ORCHESTRATORS = ("orchestrator-a", "orchestrator-b")
READY_SECONDS = 240.0  # model loads of four engines at once on 2 busy cores

# What every process gets. Short heartbeats and lease, so that a killed process is noticed within
# a few seconds; short answers (SmolLM2 on 2 cores), so that traffic keeps moving.
SETTINGS = {
    "VOICEBUS_AUTH_TOKEN": TOKEN, "GROQ_API_KEY": "", "VOICEBUS_LLM_PROVIDERS": "local",
    "VOICEBUS_LLM_LOCAL_MODEL": "smollm2-135m", "VOICEBUS_LLM_MAX_TOKENS": "40", "VOICEBUS_LLM_MAX_SENTENCES": "2",
    "VOICEBUS_LLM_THREADS": "1", "VOICEBUS_STT_CPU_THREADS": "1", "VOICEBUS_NATS_STREAM_REPLICAS": "3",
    "VOICEBUS_HEARTBEAT_SECONDS": "0.5", "VOICEBUS_TURN_LEASE_SECONDS": str(LEASE_SECONDS),
    "VOICEBUS_INSTANCE_RETRY_SECONDS": "5", "VOICEBUS_ORCHESTRATOR_RETRY_SECONDS": "5",
    "VOICEBUS_METRICS_PORT_OFFSET": "0", "VOICEBUS_TRACE_VIEW": "false", "VOICEBUS_SHUTDOWN_GRACE_SECONDS": "2",
}


class LocalCluster:
    def __init__(self, name: str = "cluster", settings: dict[str, str] | None = None) -> None:
        self.name = name
        self.settings = {**SETTINGS, **(settings or {})}
        self.data = Path(tempfile.mkdtemp(prefix=f"voicebus-{name}-"))
        self.addresses = {n: f"127.0.0.1:{free_port()}" for n in (*ENGINES, *ORCHESTRATORS)}
        self.postgres: PostgresServer | None = None
        self.nats: NatsCluster | None = None
        self.database_url = ""
        self.procs: dict[str, ServiceProcess] = {}
        self.base = ""

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + f"/ws?token={TOKEN}"

    def env(self, role: str, own_address: str = "") -> dict[str, str]:
        """A process's environment: its NATS user, the engines' and orchestrator's addresses (its
        own where it has one), and for orchestrators the shared database."""
        assert self.nats is not None
        env = {**self.nats.env_for(role), **self.settings, "VOICEBUS_DATA_DIR": str(self.data),
               "VOICEBUS_STT_ADDR": self.addresses["stt-0"],
               "VOICEBUS_LLM_ADDR": self.addresses["llm"], "VOICEBUS_TTS_ADDR": self.addresses["tts"],
               "VOICEBUS_ORCHESTRATOR_ADDR": self.addresses["orchestrator-a"]}
        if own_address:
            env[f"VOICEBUS_{role.upper()}_ADDR"] = own_address
        if role == "orchestrator":
            env["VOICEBUS_DATABASE_URL"] = self.database_url
        return env

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.to_thread(self.stop)

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._start_processes)
            await self._wait_ready()
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise

    def _start_processes(self) -> None:
        self.postgres = PostgresServer()
        self.database_url = self.postgres.create_database()
        self.nats = NatsCluster(3)
        for name, module in ENGINES.items():
            role = name.split("-")[0]
            self.procs[name] = ServiceProcess(module, self.addresses[name], self.env(role, self.addresses[name]),
                                              name=f"{self.name}-{name}")
        for name in ORCHESTRATORS:
            self.procs[name] = ServiceProcess("orchestrator", self.addresses[name],
                                              self.env("orchestrator", self.addresses[name]),
                                              name=f"{self.name}-{name}")
        for proc in self.procs.values():
            proc.wait_healthy(READY_SECONDS)
        address = f"127.0.0.1:{free_port()}"
        self.procs["gateway"] = ServiceProcess("web_gateway", address, {**self.env("gateway"),
                                               "VOICEBUS_GATEWAY_ADDR": address}, name=f"{self.name}-gateway")
        self.base = f"http://{address}"
        wait_http_healthy(f"{self.base}/healthz", self.procs["gateway"])

    async def _wait_ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.base, headers=AUTH, timeout=10) as http:
            await eventually(lambda: _status_ok(http.get("/readyz")), "the gateway's /readyz", READY_SECONDS)
        b = self.addresses["orchestrator-b"]
        await eventually(lambda: _logged(self.procs["gateway"], "instance joined", b), "the gateway to hear B")
        for name in ORCHESTRATORS:
            await eventually(lambda: _logged(self.procs[name], "instance joined", self.addresses["stt-1"]),
                             f"{name} to hear the second STT replica")
        admin = await self.admin()
        try:
            await eventually(lambda: stream_cluster(admin), "the R3 turn stream with a leader and two followers", 60)
        finally:
            await admin.close()

    async def admin(self) -> Client:
        """A NATS client that may do anything (reads the turn stream), reconnecting to any node."""
        assert self.nats is not None
        async def quiet(_: Exception) -> None:  # a killed node refuses reconnects: expected here
            pass
        return await nats.connect(self.nats.admin_urls(), max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                  connect_timeout=3, error_cb=quiet)

    async def database(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url, timeout=10)

    def kill(self, name: str) -> None:
        """SIGKILL a service process (no drain, no goodbye heartbeat)."""
        proc = self.procs[name].proc
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        """Everything still running is stopped, each whatever happened to the one before."""
        stops = [self.procs[n].stop for n in ("gateway", *ORCHESTRATORS, *ENGINES) if n in self.procs]
        stops += [s.stop for s in (self.nats,) if s is not None] + [s.close for s in (self.postgres,) if s is not None]
        failures = []
        for stop in stops:
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - the others are stopped first, then it is raised
                failures.append(exc)
        shutil.rmtree(self.data, ignore_errors=True)
        if failures:
            raise failures[0]


async def stream_cluster(admin: Client) -> Any:
    """The turn stream's cluster info when it has a leader and two current followers, else None."""
    info = await admin.jetstream(timeout=2).stream_info(TURN_STREAM)
    followers = [r for r in info.cluster.replicas or [] if r.current] if info.cluster else []
    return info.cluster if info.cluster and info.cluster.leader and len(followers) == 2 else None


async def _status_ok(request: Any) -> bool:
    return (await request).status_code == 200


async def _logged(proc: ServiceProcess, message: str, needle: str) -> bool:
    return any(message in line and needle in line for line in proc.logs().splitlines())
