"""Cluster benchmark: continuous traffic on a loopback cluster while its parts are killed with SIGKILL.

    .venv/bin/python bench/cluster.py [--seconds-between 10] [--turns-between 4] [--set VOICEBUS_X=VALUE]

The harness and the run are the tests' (tests/local_cluster.py, tests/cluster_scenario.py,
tests/cluster_traffic.py; bench/common.py puts tests/ on sys.path, as for bench/load.py):
PostgreSQL, three routed NATS nodes (R3 turn stream), two orchestrators, two STT replicas, one
LLM (SmolLM2-135M), one TTS and the gateway; five clients (two typed and two spoken over /ws,
one REST) ask without pause while the run kills the turn stream's leading NATS node, the
orchestrator of the `memory` conversation and an STT replica, with traffic in between.

Prints: tries and questions (completed, not completed by how they ended), p50/p95 turn latency
(end of input to end of turn, completed tries) before the first kill and after each, per kind
of client; for each kill how long it disturbed traffic (until the next completed turn, and until
every client's next completed turn) and the tries it cut short; what PostgreSQL
and the JetStream stream hold, and how long after a turn ended its events were stored; and the
load average (os.getloadavg, 1 min: before, at the end, the highest seen).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import tempfile
import time
from pathlib import Path

from common import percentile  # sets sys.path (tests/ and the repository)
from cluster_audit import Audit, gaps, stored_turns, stream_events
from cluster_scenario import Run, run_with_kills
from cluster_traffic import Attempt
from local_cluster import LocalCluster

KINDS = (("typed", ("typed", "rest")), ("spoken", ("spoken",)))


async def watch_load(peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], os.getloadavg()[0])
        await asyncio.sleep(1.0)


def phases(run: Run) -> list[tuple[str, float, float]]:
    """(name, from, to) in time.monotonic: before the first kill, then after each until the next."""
    edges = [run.began, *(k.at for k in run.kills), float("inf")]
    names = ["before any kill", *(f"after kill {k.what} {k.victim}" for k in run.kills)]
    return [(name, edges[i], edges[i + 1]) for i, name in enumerate(names)]


def latency_line(attempts: list[Attempt]) -> str:
    values = [a.latency for a in attempts]
    if not values:
        return f"{'-':>22}"
    return f"n={len(values):<3} p50={percentile(values, 50):5.2f}s p95={percentile(values, 95):5.2f}s"


def report_traffic(run: Run) -> None:
    attempts = run.traffic.attempts
    completed = run.traffic.completed()
    not_completed = collections.Counter(a.outcome for a in attempts if a.outcome != "completed")
    questions = {(a.client, a.asked) for a in attempts}
    answered = {(a.client, a.asked) for a in completed}
    print(f"\ntries       {len(attempts)} started, {len(completed)} completed, "
          f"{sum(not_completed.values())} not completed {dict(not_completed) or ''}")
    print(f"questions   {len(questions)} asked, {len(answered)} answered "
          f"(max tries for one: {max(a.number for a in attempts)})")
    print(f"moves       {len(run.traffic.moves)} streams moved to another orchestrator "
          f"({sum(1 for m in run.traffic.moves if m.get('lost_turn_id'))} with a turn lost)")
    print(f"\n{'latency, end of input -> end of turn':<44}" + "".join(f"{kind:<34}" for kind, _ in KINDS))
    for name, start, end in phases(run):
        row = [a for a in completed if start <= a.started < end]
        print(f"  {name:<42}" + "".join(f"{latency_line([a for a in row if a.kind in kinds]):<34}"
                                        for _, kinds in KINDS))
    print("\ndisturbance (from the kill)                  next completed turn   every client's next completed turn")
    for kill in run.kills:
        after = [a for a in completed if a.ended > kill.at]
        first = min((a.ended for a in after), default=float("nan")) - kill.at
        per_client = [min((a.ended for a in after if a.client == c), default=float("nan")) for c in run.clients]
        print(f"  {kill.what + ' ' + kill.victim:<43}{first:8.2f} s {max(per_client) - kill.at:20.2f} s")
    print("\ntries not completed, by phase")
    for name, start, end in phases(run):
        broken = collections.Counter(f"{a.client}, {a.outcome}: {a.detail[:90]}" for a in attempts
                                     if a.outcome != "completed" and start <= a.ended < end)
        print(f"  {name:<42}{sum(broken.values())}")
        for what, n in broken.most_common():
            print(f"      {n} x {what}")


async def report_leftovers(cluster: LocalCluster, run: Run) -> None:
    completed = run.traffic.completed()
    database = await cluster.database()
    try:
        # The killed orchestrator's running turns get their outcome at the survivor's next sweep.
        deadline = time.monotonic() + 30
        while (audit := Audit(await stored_turns(database), [])).half_written() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
    finally:
        await database.close()
    admin = await cluster.admin()
    try:
        audit.events = await stream_events(admin)
    finally:
        await admin.close()
    outcomes = collections.Counter(row["outcome"].removeprefix("TURN_OUTCOME_").lower() for row in audit.turns.values())
    print(f"\nstored      {len(audit.turns)} turn rows {dict(outcomes)}; completed tries stored as heard: "
          f"{len(completed) - len(audit.missing_rows(completed))}/{len(completed)}; half-written: "
          f"{len(audit.half_written())}; conversations with gaps: {len(gaps(audit.turns))}")
    print(f"events      {len(audit.events)} in the stream; duplicated: {len(audit.duplicated_events())}; "
          f"missing for completed turns: {len(audit.missing_events(completed))}")
    lag = audit.event_lag(completed, run.traffic.clock_offset)
    print("\nevent lag: the client heard a turn end -> its turn_completed was stored (JetStream's clock)")
    for name, start, end in phases(run):
        values = [lag[a.turn_id] for a in completed if start <= a.ended < end and a.turn_id in lag]
        if values:
            print(f"  {name:<42}n={len(values):<3} p50={percentile(values, 50):+6.3f}s max={max(values):+6.3f}s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds-between", type=float, default=10.0, help="traffic before, between and after kills")
    parser.add_argument("--turns-between", type=int, default=4, help="completed turns needed between kills too")
    parser.add_argument("--set", action="append", default=[], metavar="VOICEBUS_X=VALUE",
                        help="a setting for every process of the cluster (repeatable)")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    async with LocalCluster("bench-cluster", overrides) as cluster:
        print(f"cluster ready in {time.monotonic() - began:.0f} s: PostgreSQL, NATS x3 (R3), orchestrator x2, "
              f"STT x2, LLM x1 (smollm2-135m), TTS x1, gateway x1; load average before: {load_before:.2f}"
              + "".join(f"; {k}={v}" for k, v in overrides.items()))
        peak, stop = [os.getloadavg()[0]], asyncio.Event()
        watcher = asyncio.create_task(watch_load(peak, stop))
        run = await run_with_kills(cluster, Path(tempfile.mkdtemp(prefix="voicebus-bench-cluster-")),
                                   args.seconds_between, args.turns_between)
        stop.set()
        await watcher
        print(f"traffic ran {time.monotonic() - run.began:.0f} s after every client's first turn; clients: "
              + ", ".join(f"{name} ({c.kind})" for name, c in run.clients.items()))
        report_traffic(run)
        await report_leftovers(cluster, run)
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end, {peak[0]:.2f} at most (1 min)")


if __name__ == "__main__":
    asyncio.run(main())
