"""A real PostgreSQL server for tests, from Debian's `postgresql` package (scripts/setup.sh --test).

`initdb` in a temporary folder, `postgres` on a free port of 127.0.0.1 with password logins,
as the `postgres` OS user when the tests run as root (PostgreSQL refuses to run as root).
One server serves a whole test session; each test takes a fresh database of its own:

    server = PostgresServer()
    url = server.create_database()   # postgresql://postgres:PASSWORD@127.0.0.1:PORT/voicebus_1
    server.stop(); server.start()    # an outage, then the same server and data back on the same port
    server.close()                   # stopped and its folder removed
"""

from __future__ import annotations

import glob
import itertools
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from helpers import free_port

USER = "postgres"


def bin_dir() -> Path:
    """The newest installed server's binaries (/usr/lib/postgresql/<version>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/setup.sh --test (apt-get install postgresql)")
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self) -> None:
        self.bin = bin_dir()
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.folder = Path(tempfile.mkdtemp(prefix="voicebus-postgres-"))
        self.data = self.folder / "data"
        self._as_root = os.geteuid() == 0
        self._names = itertools.count(1)
        (self.folder / "password").write_text(self.password)
        if self._as_root:
            shutil.chown(self.folder, USER, USER)
            shutil.chown(self.folder / "password", USER, USER)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(self.folder / "password"),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, cwd=self.folder, timeout=60)

    @property
    def url(self) -> str:
        """The maintenance database `postgres`, as the superuser."""
        return self.url_for("postgres")

    def url_for(self, database: str, password: str | None = None, port: int | None = None) -> str:
        return (f"postgresql://{USER}:{self.password if password is None else password}"
                f"@127.0.0.1:{port or self.port}/{database}")

    def start(self) -> None:
        """Start (or start again) on the same port and data; returns once it accepts connections."""
        # No fsync: the tests do not survive power loss, and a commit then costs no disk flush.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off -c full_page_writes=off"
        result = self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l",
                           str(self.folder / "postgres.log"), "-o", options, check=False)
        if result.returncode != 0:
            log = (self.folder / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"postgres did not start: {result.stdout}{result.stderr}\n{log}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
            pass

    def stop(self) -> None:
        """Fast shutdown: open connections are ended, as when a database server goes down."""
        self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data), check=False)

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"voicebus_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url_for(name)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """One statement through psql over the local socket; its output, unaligned."""
        result = self._run("psql", "-h", str(self.folder), "-p", str(self.port), "-U", USER, "-d", database,
                           "-v", "ON_ERROR_STOP=1", "-At", "-c", statement, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"psql {statement!r}: {result.stderr.strip()}")
        return result.stdout.strip()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
