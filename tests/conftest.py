"""Session fixtures shared by all tests."""

from __future__ import annotations

import pytest

from helpers import NatsServer


@pytest.fixture(scope="module")
def nats_server():
    """A NATS server per test module: services of different modules never discover each other."""
    server = NatsServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server per test session (tests/postgres_server.py); each test makes its own database."""
    from postgres_server import PostgresServer

    server = PostgresServer()
    yield server
    server.close()
