"""The orchestrator's fast test layer: scripted fake STT/LLM/TTS servers (fake_services.py).

This folder has no __init__.py on purpose: with one, pytest would import it as the package
`orchestrator` and hide the real one. Test modules here are imported by their file name
alone (like those in tests/), so their names must differ from every other test module's,
and `from fake_services import ...` works because the folder is on sys.path.
"""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# The repository root must be importable too: tests/ is on sys.path, and its folder
# `orchestrator/` (this one) would otherwise pass for a namespace package of that name.
for folder in (str(HERE), str(ROOT)):
    if folder not in sys.path:
        sys.path.insert(0 if folder == str(HERE) else len(sys.path), folder)

from fake_services import FakeServices  # noqa: E402
from helpers import NatsServer  # noqa: E402


@pytest.fixture
async def fake_services():
    """Default fakes of all three stages, started; tests that script them build their own."""
    async with FakeServices() as fakes:
        yield fakes


@pytest.fixture(scope="module")
def nats_url():
    server = NatsServer()
    yield server.url
    server.stop()


HUNG_AFTER_SECONDS = 120.0  # a test of this layer takes about a second, and its waits end by 30 s


@pytest.fixture(autouse=True)
async def report_a_hang(request):
    """A test still running after HUNG_AFTER_SECONDS is hung: write where every task waits to
    test-output/hangs.txt and the terminal (a thread dump shows only the event loop, and
    pytest captures stderr), then cancel them so the run goes on."""
    async def watch() -> None:
        await asyncio.sleep(HUNG_AFTER_SECONDS)
        report = io.StringIO()
        print(f"--- {request.node.nodeid} hung for {HUNG_AFTER_SECONDS:g} s; its tasks:", file=report)
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                print(task, file=report)
                try:
                    task.print_stack(file=report)
                except TypeError:  # a grpc Cython coroutine's frame has no line number
                    print("  (no Python stack)", file=report)
        out = ROOT / "test-output"
        out.mkdir(exist_ok=True)
        with open(out / "hangs.txt", "a") as file:
            file.write(report.getvalue())
        sys.__stderr__.write(report.getvalue())
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
    watchdog = asyncio.ensure_future(watch())
    yield
    watchdog.cancel()
