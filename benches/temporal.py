"""The Temporal benchmark (run by scripts/bench-temporal): how long from a
workflow cancel to its tree dead, and from a lapsed lease to its tree dead.

A private fleet like the tests' (python/tests/temporal_env.py): the real Temporal
dev server on a loopback port, a wfcg agent of its own, and one worker
(``python -m wfcg.temporal worker``). Figures:

- cancel -> tree dead: ``WorkflowHandle.cancel()`` of a running ``wfcg.RunWorkflow``
  until the run's cgroup has no process, for heartbeat intervals of 1 s and 5 s
  (heartbeat timeouts of 3 s and 15 s; the activity beats three times a timeout),
  each cancel at a random moment of the heartbeat cycle; median, p99, max;
- the baseline, measured in the same run: ``wfcg kill`` of the same tree through
  the agent directly, and the ratio;
- lease lapse -> tree dead: the worker SIGKILLed with runs under way; from the
  lease's expiry (as the agent last stated it) until the run's cgroup is empty,
  and from the SIGKILL.

The tree is ``sh`` with two ``sleep`` children that end at SIGTERM, so the figures
are the path's own, not a TERM grace.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python" / "tests"))

from conftest import Agent  # noqa: E402
from temporal_env import Host, TemporalServer  # noqa: E402

TREE = ["sh", "-c", "sleep 1000 & sleep 1001 & wait"]


def populated(agent: Agent, run_id: str) -> bool:
    """Whether the run's cgroup still has processes (gone counts as empty)."""
    try:
        events = (agent.cgroup_root / "runs" / run_id / "cgroup.events").read_text()
    except OSError:
        return False
    return "populated 1" in events


async def until(cond: Any, timeout: float, what: str, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<40} n={len(values):<3} median {statistics.median(values):7.3f} s  "
        f"p99 {percentile(values, 99):7.3f} s  max {max(values):7.3f} s"
    )


async def running_run(agent: Agent, known: set[str]) -> str:
    """The id of the one run of ``agent`` not in ``known``, once it has its tree."""

    def new() -> str | None:
        for r in agent.client().list():
            if r.run_id not in known and r.processes >= 3:
                return r.run_id
        return None

    run_id = await until(new, 60, "a new run with its tree", 0.02)
    known.add(run_id)
    return run_id


async def one_cancel(client: Any, host: Host, beat_s: float, known: set[str], lock: asyncio.Lock) -> float:
    interval = beat_s / 3
    async with lock:  # one start at a time: the new run is told apart by its id
        handle = await client.start_workflow(
            "wfcg.RunWorkflow",
            {"command": TREE, "task_queue": host.queue, "heartbeat_timeout_s": beat_s},
            id=f"bench-{beat_s}-{time.monotonic_ns()}",
            task_queue=host.queue,
        )
        run_id = await running_run(host.agent, known)
    await asyncio.sleep(random.uniform(interval, 2 * interval))  # a random phase of the beat
    t0 = time.monotonic()
    await handle.cancel()
    await until(lambda: not populated(host.agent, run_id), 120, "the tree to die")
    took = time.monotonic() - t0
    try:
        await asyncio.wait_for(handle.result(), 60)
    except Exception:
        pass  # cancelled, as it should
    return took


async def cancels(client: Any, host: Host, beat_s: float, n: int, parallel: int) -> list[float]:
    known = {r.run_id for r in host.agent.client().list(all=True)}
    lock = asyncio.Lock()
    sem = asyncio.Semaphore(parallel)

    async def guarded() -> float:
        async with sem:
            return await one_cancel(client, host, beat_s, known, lock)

    return list(await asyncio.gather(*(guarded() for _ in range(n))))


async def direct_kills(host: Host, n: int) -> list[float]:
    out = []
    client = host.agent.client()
    known = {r.run_id for r in client.list(all=True)}
    for _ in range(n):
        run = client.run(TREE, init_timeout=0)
        await running_run(host.agent, known)
        t0 = time.monotonic()
        client.kill(run.id)
        await until(lambda: not populated(host.agent, run.id), 60, "the tree to die")
        out.append(time.monotonic() - t0)
    return out


def expires(agent: Agent, run_id: str) -> float:
    """The lease's expiry the agent states, as a time.time() value."""
    text = agent.client().status(run_id).lease_expires_at
    assert text, f"{run_id} has no lease"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def lease_lapses(client: Any, host: Host, beat_s: float, per_round: int, rounds: int) -> tuple[list[float], list[float]]:
    from_expiry, from_sigkill = [], []
    known = {r.run_id for r in host.agent.client().list(all=True)}
    for _ in range(rounds):
        runs, handles = [], []
        for _ in range(per_round):
            handles.append(await client.start_workflow(
                "wfcg.RunWorkflow",
                {"command": TREE, "task_queue": host.queue, "heartbeat_timeout_s": beat_s},
                id=f"bench-lease-{time.monotonic_ns()}",
                task_queue=host.queue,
            ))
            runs.append(await running_run(host.agent, known))
        await asyncio.sleep(random.uniform(0, beat_s / 3))
        host.worker.sigkill()
        killed = time.monotonic()
        expiry = {r: expires(host.agent, r) for r in runs}
        pending = set(runs)
        while pending:
            for r in list(pending):
                if not populated(host.agent, r):
                    pending.discard(r)
                    from_expiry.append(time.time() - expiry[r])
                    from_sigkill.append(time.monotonic() - killed)
            if time.monotonic() - killed > 120:
                raise RuntimeError(f"leased runs still alive 120 s after the SIGKILL: {pending}")
            await asyncio.sleep(0.005)
        # The workflows would retry on this queue: ended before a worker polls it again.
        for handle in handles:
            await handle.terminate("benchmark round over")
        host.new_worker()
    return from_expiry, from_sigkill


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cancels", type=int, default=50, help="cancels per heartbeat interval (50)")
    p.add_argument("--parallel", type=int, default=5, help="workflows cancelled at once (5)")
    p.add_argument("--lease-runs", type=int, default=5, help="runs per SIGKILLed worker (5)")
    p.add_argument("--lease-rounds", type=int, default=4, help="SIGKILLed workers (4)")
    p.add_argument("--baseline", type=int, default=20, help="direct kills for the baseline (20)")
    args = p.parse_args()
    binary = os.environ.get("WFCG_BIN")
    if not binary:
        print("bench-temporal: set WFCG_BIN to the wfcg binary", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="wfcg-bench-temporal-"))
    server = TemporalServer(work)
    agent = Agent(binary)
    host = Host(server, "bench-host", agent, work)
    try:
        client = await server.client()
        print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs", flush=True)
        base = await direct_kills(host, args.baseline)
        print(summary("baseline: wfcg kill -> tree dead", base), flush=True)
        for interval in (1, 5):
            took = await cancels(client, host, interval * 3.0, args.cancels, args.parallel)
            print(summary(f"cancel -> tree dead, heartbeat {interval} s", took), flush=True)
            print(
                f"{'':<40} median {statistics.median(took) / statistics.median(base):.1f}x the baseline",
                flush=True,
            )
        lapse, sigkill = await lease_lapses(client, host, 3.0, args.lease_runs, args.lease_rounds)
        print(summary("lease expiry -> tree dead (lease 3 s)", lapse), flush=True)
        print(summary("worker SIGKILL -> tree dead (lease 3 s)", sigkill), flush=True)
    finally:
        host.worker.stop()
        agent.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
