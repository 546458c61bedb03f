"""The kill sequence of issue 16 under continuous traffic, on a started tests/local_cluster.py.

Clients (tests/cluster_traffic.py) talk all the time; once each has completed a turn, the run
kills with SIGKILL, in turn and with traffic flowing in between:
1. the NATS node that leads the turn stream (its election and the clients' reconnects);
2. the orchestrator running the `memory` conversation, while a turn of it runs (the gateway
   moves the conversation to the other orchestrator);
3. the first STT replica (the one the orchestrators are configured with), while a spoken turn runs.
Between kills the run waits for some seconds and some completed turns, and for the events of
every turn completed so far to be in the stream: the kills come one at a time, each after the
cluster got over the one before. (An orchestrator killed while NATS still elects a stream
leader loses the events it holds for it: publishing only enqueues, and a turn never waits for
NATS.) The run fails when a wait lasts STALL_SECONDS. Then the clients finish their questions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors

from cluster_audit import ran_turn, stored_turn_ends
from cluster_traffic import MAX_ATTEMPTS, TURN_TIMEOUT_SECONDS, Client, Traffic, clients
from helpers import eventually
from local_cluster import ORCHESTRATORS, LocalCluster, stream_cluster

STALL_SECONDS = 120.0  # waiting this long for the next step of the run is a stall, not slowness


@dataclass
class Kill:
    what: str  # "nats", "orchestrator", "stt"
    victim: str  # the node's or process's name
    at: float  # time.monotonic()


@dataclass
class Run:
    traffic: Traffic
    clients: dict[str, Client]
    kills: list[Kill] = field(default_factory=list)
    began: float = 0.0  # every client had completed a turn

    def kill(self, what: str) -> Kill:
        return next(k for k in self.kills if k.what == what)

    def since_kills(self, moment: float) -> str:
        """A moment of the run in words, for messages: "+1.23 s after the nats kill"."""
        last = max((k for k in self.kills if k.at <= moment), key=lambda k: k.at, default=None)
        return f"{moment - last.at:+.2f} s after the {last.what} kill" if last else "before the kills"


async def run_with_kills(cluster: LocalCluster, folder: Path, seconds_between: float = 6.0,
                         turns_between: int = 4) -> Run:
    traffic = Traffic()
    run = Run(traffic, clients(cluster, traffic, folder))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop), name=name) for name, c in run.clients.items()]
    try:
        await _until(tasks, lambda: {a.client for a in traffic.completed()} >= set(run.clients),
                     "every client's first completed turn")
        run.began = time.monotonic()
        await _keep_going(run, tasks, seconds_between, turns_between)

        admin = await cluster.admin()
        try:
            leader = (await eventually(lambda: stream_cluster(admin), "the turn stream's leader")).leader
        finally:
            await admin.close()
        assert cluster.nats is not None
        _killed(run, "nats", leader, lambda: cluster.nats.kill(leader))
        await _keep_going(run, tasks, seconds_between, turns_between)

        await _until_events_stored(run, cluster, tasks)
        memory = run.clients["memory"]
        last = [a for a in traffic.completed() if a.client == "memory"][-1]
        holder = next(n for n in ORCHESTRATORS if ran_turn(cluster.procs[n], last.turn_id))
        await _until(tasks, memory.in_turn.is_set, "a turn of the memory conversation")
        _killed(run, "orchestrator", holder, lambda: cluster.kill(holder))
        await _keep_going(run, tasks, seconds_between, turns_between)

        await _until_events_stored(run, cluster, tasks)
        await _until(tasks, run.clients["spoken-1"].in_turn.is_set, "a spoken turn")
        _killed(run, "stt", "stt-0", lambda: cluster.kill("stt-0"))
        await _keep_going(run, tasks, seconds_between, turns_between)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    stop.set()
    # Each client ends its question: at most MAX_ATTEMPTS bounded tries and their pauses.
    done, pending = await asyncio.wait(tasks, timeout=MAX_ATTEMPTS * (TURN_TIMEOUT_SECONDS + 5))
    for task in pending:
        task.cancel()
    for task in done:
        task.result()  # a client's crash fails the run with its own traceback
    assert not pending, f"clients still asking after their last bounded try: {[t.get_name() for t in pending]}"
    return run


def _killed(run: Run, what: str, victim: str, kill: Callable[[], None]) -> None:
    run.kills.append(Kill(what, victim, time.monotonic()))
    run.traffic.mark(f"kill {what} {victim}")
    kill()


async def _keep_going(run: Run, tasks: list[asyncio.Task[None]], seconds: float, turns: int) -> None:
    """Traffic goes on for `seconds` and `turns` more completed turns, whichever is later."""
    since, before = time.monotonic(), len(run.traffic.completed())
    await _until(tasks, lambda: time.monotonic() - since >= seconds and len(run.traffic.completed()) - before >= turns,
                 f"{turns} completed turns after {run.traffic.marks[-1][0] if run.traffic.marks else 'the start'}")


async def _until_events_stored(run: Run, cluster: LocalCluster, tasks: list[asyncio.Task[None]]) -> None:
    """Until the stream holds `turn_completed` of every turn completed so far."""
    completed = {a.turn_id for a in run.traffic.completed()}
    admin = await cluster.admin()
    try:
        stored: set[str] = set()
        deadline = time.monotonic() + STALL_SECONDS
        while not completed <= stored:
            if time.monotonic() > deadline:
                raise AssertionError(f"events of {len(completed - stored)} completed turns not stored "
                                     f"within {STALL_SECONDS:g} s")
            for task in tasks:
                if task.done():
                    task.result()
            try:
                stored = await stored_turn_ends(admin)
            except (nats.errors.Error, asyncio.TimeoutError):
                pass  # no answer while the stream elects a leader: ask again
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def _until(tasks: list[asyncio.Task[None]], condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until true; fail when a client crashed or STALL_SECONDS passed."""
    deadline = time.monotonic() + STALL_SECONDS
    while not condition():
        for task in tasks:
            if task.done():
                task.result()  # a client's crash fails the run with its own traceback
                raise AssertionError(f"client {task.get_name()} stopped before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"traffic stalled: no {what} within {STALL_SECONDS:g} s")
        await asyncio.sleep(0.1)
