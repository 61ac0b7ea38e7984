#!/usr/bin/env python3
"""An example executor: one agent CLI per task, each a wfcg run, cancellable.

Each task's command runs under wfcg with a workflow template (its cgroup, its
deadlines: 30 minutes to initialize for ``builder``, heartbeats watched every
30 s), so everything it starts can be killed at once. The command itself says
when it is ready and heartbeats (here a stand-in agent CLI, this same file with
``--agent-cli``, using ``wfcg.notify``). When a task is cancelled, the executor
calls ``kill_workflow``: critical sections (git locks, database writes) are
waited for, then the whole tree is killed, and the result comes back as a dict.

    sudo python3 executor.py --tasks 3 --cancel-after 2
    # prints one JSON line per task: its run id and how it ended

Environment: ``WFCG_SOCKET`` (the agent), ``WFCG_BIN`` (the ``wfcg`` program
when it is not on PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import wfcg
from wfcg import notify
from wfcg.contract import kill_workflow


async def run_task(client: wfcg.AsyncClient, task: str, workflow: str) -> dict[str, object]:
    """Runs one task to its end, or kills it when the task is cancelled."""
    # -- what an executor adds: start the command as a run ...
    run = await client.run(
        [sys.executable, __file__, "--agent-cli", task],
        workflow=workflow,  # the template: deadlines, graces, limits
        watchdog=30,  # killed as stuck after two missed heartbeats
        env={"TASK": task},
    )
    try:
        info = await run.wait()  # ... wait for it ...
        return {"task": task, "run_id": run.id, "status": info.status, "exit": info.exit_code}
    except asyncio.CancelledError:
        # ... and on cancellation kill it, whole tree, critical sections honoured.
        result = await kill_workflow(run.id, reason=f"task {task} cancelled")
        return {"task": task, "run_id": run.id, "status": "cancelled", "kill": result}


async def executor(tasks: int, cancel_after: float, workflow: str) -> list[dict[str, object]]:
    client = wfcg.AsyncClient()
    jobs = [asyncio.create_task(run_task(client, f"t{i}", workflow)) for i in range(tasks)]
    _, pending = await asyncio.wait(jobs, timeout=cancel_after)
    for job in pending:
        job.cancel()
    # A cancelled run_task kills its run and returns the kill result.
    return list(await asyncio.gather(*jobs))


def agent_cli(task: str) -> None:
    """A stand-in for an agent CLI: initializes, says so, works with heartbeats."""
    notify.status(f"{task}: cloning")
    time.sleep(0.2)
    notify.ready()  # initializing -> running
    for step in range(1_000_000):
        notify.status(f"{task}: step {step}")
        notify.heartbeat()
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--cancel-after", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--workflow", default="builder")
    parser.add_argument("--agent-cli", metavar="TASK", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_cli:
        agent_cli(args.agent_cli)
        return
    for result in asyncio.run(executor(args.tasks, args.cancel_after, args.workflow)):
        print(json.dumps(result))


if __name__ == "__main__":
    main()
