"""Session fixtures shared by all tests."""

from __future__ import annotations

import pytest

from helpers import NatsServer


@pytest.fixture(scope="session")
def nats_server():
    server = NatsServer()
    yield server
    server.stop()
