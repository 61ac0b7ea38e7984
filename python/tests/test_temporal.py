"""wfcg.temporal against the real Temporal server and real agents: two "hosts"
(agents of their own, workers on the queues ``host-a`` and ``host-b``), process
trees that try to escape, and a marker scan for survivors.

Each test has its own server (port and database), agents and workers, so the
tests run side by side; ``tests/it/temporal.rs`` runs each as a test of its own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, pids_with_env
from temporal_env import Host, TemporalServer, escaping_command, free_port, wait_for

from wfcg.temporal import _input

from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    RetryState,
)

#: The operator's templates: runs that never become ready (1 s to initialize),
#: and runs whose processes get 1 s after SIGTERM (5 s by default).
TEMPLATES = {
    "never-ready": '[timeouts]\ninit = "1s"\n',
    "quick-term": '[kill]\nterm_grace = "1s"\n',
}
#: A heartbeat timeout (and so a lease) short enough for tests: a beat every second.
BEAT_S = 3


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TemporalServer]:
    s = TemporalServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def fleet(binary: str, marker: str, server: TemporalServer, tmp_path: Path) -> Iterator[dict[str, Host]]:
    """Two hosts, ``host-a`` and ``host-b``. Torn down before ``marker`` checks
    that no process of the test's trees is left."""
    agents: list[Agent] = []
    hosts: dict[str, Host] = {}
    try:
        for queue in ("host-a", "host-b"):
            agents.append(Agent(binary, templates=TEMPLATES))
            hosts[queue] = Host(server, queue, agents[-1], tmp_path)
        yield hosts
    finally:
        for host in hosts.values():
            host.worker.stop()
            print(f"--- worker {host.queue}:\n{host.worker.log()[-3000:]}")
        for agent in agents:
            agent.stop()


async def start(
    server: TemporalServer, workflow_id: str, queue: str, command: list[str], **more: Any
) -> WorkflowHandle[Any, Any]:
    client = await server.client()
    return await client.start_workflow(
        "wfcg.RunWorkflow",
        {"command": command, "task_queue": queue, "heartbeat_timeout_s": BEAT_S, **more},
        id=workflow_id,
        task_queue=queue,
    )


async def failure_of(handle: WorkflowHandle[Any, Any], timeout: float = 90) -> BaseException:
    """How the workflow failed (the cause of its WorkflowFailureError)."""
    try:
        result = await asyncio.wait_for(handle.result(), timeout)
    except WorkflowFailureError as e:
        assert e.cause is not None
        return e.cause
    pytest.fail(f"the workflow succeeded: {result}")


def tree(marker: str) -> list[int]:
    return pids_with_env("WFCG_TEST_MARK", marker)


async def cancel_details(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    """The details the activity's cancellation carried (its ActivityTaskCanceled event)."""
    client = handle._client
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_canceled_event_attributes"):
            payloads = event.activity_task_canceled_event_attributes.details.payloads
            return await client.data_converter.decode(payloads)
    pytest.fail("no ActivityTaskCanceled event in the workflow's history")


def test_workflow_cancel_kills_the_whole_tree_on_its_host(
    fleet: dict[str, Host], server: TemporalServer, marker: str
) -> None:
    """`temporal workflow cancel` of a RunWorkflow on host-b: once the workflow has
    ended, no process of its escaping tree is left; the cancellation carries the
    kill result; host b's audit names the worker's request."""
    b = fleet["host-b"]

    async def body() -> None:
        workflow_id = f"cancel-{marker}"
        handle = await start(server, workflow_id, "host-b", escaping_command(marker))
        await wait_for(lambda: len(tree(marker)) >= 5, 30, "the tree on host-b")
        [run] = b.agent.client().list()
        assert fleet["host-a"].agent.client().list() == []

        out = await asyncio.to_thread(server.cli, "workflow", "cancel", "--workflow-id", workflow_id)
        assert out.returncode == 0, out

        cause = await failure_of(handle)
        # The workflow ended only once the activity had killed the run.
        assert tree(marker) == [], "processes of the cancelled workflow are alive"
        assert isinstance(cause, CancelledError), repr(cause)

        [result] = await cancel_details(handle)
        assert {"success", "run_id", "killed_at", "cleanup_status", "message"} <= set(result)
        assert result["success"] is True and result["run_id"] == run.run_id, result
        assert result["cleanup_status"]["processes_remaining"] == 0, result
        assert result["killed_at"]

        info = b.agent.client().status(run.run_id)
        assert info.status == "killed", info
        kills = [r for r in b.agent.client().audit(run_id=run.run_id) if r["action"] == "kill"]
        assert len(kills) == 1 and kills[0]["outcome"] == "killed", kills
        reason = kills[0]["reason"]
        assert reason.startswith("Temporal activity cancelled: "), reason
        assert f"workflow {workflow_id}" in reason and b.worker.identity in reason, reason

    asyncio.run(body())


def test_a_run_that_never_becomes_ready_fails_as_timed_out_and_is_retried(
    fleet: dict[str, Host], server: TemporalServer, marker: str
) -> None:
    a = fleet["host-a"]

    async def body() -> None:
        handle = await start(
            server,
            f"never-ready-{marker}",
            "host-a",
            ["env", f"WFCG_TEST_MARK={marker}", "sleep", "1000"],
            workflow="never-ready",
        )
        cause = await failure_of(handle)
        assert isinstance(cause, ActivityError), repr(cause)
        assert cause.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED, cause
        app = cause.cause
        assert isinstance(app, ApplicationError) and app.type == "wfcg.timed_out", repr(app)
        assert not app.non_retryable
        [outcome] = app.details
        assert outcome["status"] == "timed_out" and outcome["end_reason"], outcome
        # Three attempts, each its own run, each ended by wfcg as stuck.
        runs = [r for r in a.agent.client().list(all=True) if r.workflow == "never-ready"]
        assert sorted(r.run_id.rsplit("-", 1)[1] for r in runs) == ["1", "2", "3"], runs
        assert all(r.status == "timed_out" for r in runs), runs
        assert tree(marker) == []

    asyncio.run(body())


def test_a_dead_worker_s_run_dies_by_its_lease_and_never_runs_beside_its_retry(
    fleet: dict[str, Host], server: TemporalServer, marker: str
) -> None:
    """SIGKILL the worker of host-a mid-run: the agent kills the run when its lease
    (the heartbeat timeout) lapses, and its tree is dead within heartbeat timeout
    + 5 s (the tree has a process that ignores SIGTERM: its template's TERM grace is
    1 s); when Temporal retries it on host-a, only the new attempt's tree is alive."""
    a = fleet["host-a"]

    async def body() -> None:
        handle = await start(
            server, f"lease-{marker}", "host-a", escaping_command(marker), workflow="quick-term"
        )
        await wait_for(lambda: len(tree(marker)) >= 5, 30, "the tree on host-a")
        [first] = a.agent.client().list()
        assert first.lease_ms == BEAT_S * 1000, first
        await wait_for(lambda: a.agent.client().status(first.run_id).lease_renewed_at, 10, "a renewal")

        a.worker.sigkill()
        killed_at = time.time()
        await wait_for(lambda: tree(marker) == [], 60, "the lease to kill the tree")
        # The record follows the kill's end: its time is the agent's, not this scan's.
        info = await wait_for(
            lambda: (i := a.agent.client().status(first.run_id)).live is False and i, 30, "the end"
        )
        assert info.end_reason == "lease expired: its executor stopped renewing it", info
        assert info.ended_at
        ended = datetime.fromisoformat(info.ended_at.replace("Z", "+00:00")).timestamp()
        print(f"worker killed -> run ended: {ended - killed_at:.2f} s")
        assert ended - killed_at <= BEAT_S + 5, (ended - killed_at, info)

        # Temporal retries the activity on host-a once a worker polls there again.
        a.new_worker()
        second = await wait_for(
            lambda: [r for r in a.agent.client().list() if r.run_id != first.run_id],
            60,
            "the retry's run",
        )
        assert [r.run_id for r in second] == [first.run_id[:-1] + "2"], second
        await wait_for(lambda: len(tree(marker)) >= 5, 30, "the retry's tree")
        # Every process of the workflow on host-a is the retry's.
        assert set(tree(marker)) <= set(pids_with_env("WFCG_RUN_ID", second[0].run_id))
        await handle.cancel()
        assert isinstance(await failure_of(handle), CancelledError)
        assert tree(marker) == []

    asyncio.run(body())


def test_kill_through_temporal_kills_a_run_started_outside_it(
    fleet: dict[str, Host], server: TemporalServer, marker: str
) -> None:
    b = fleet["host-b"]
    run = b.agent.client().run(escaping_command(marker), init_timeout=0)
    asyncio.run(wait_for(lambda: len(tree(marker)) >= 5, 30, "the tree on host-b"))

    def kill(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wfcg.temporal", "kill", "--address", server.address, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    out = kill("--task-queue", "host-b", "--json", run.id)
    assert out.returncode == 0, out
    result = json.loads(out.stdout)
    assert result["success"] is True and result["run_id"] == run.id, result
    assert tree(marker) == []
    assert run.status().status == "killed"
    [record] = [r for r in b.agent.client().audit(run_id=run.id) if r["action"] == "kill"]
    assert record["reason"].startswith("killed through Temporal: workflow wfcg-kill-host-b-")
    assert b.worker.identity in record["reason"], record

    # On the wrong host: no such run there (exit 3), said so.
    out = kill("--task-queue", "host-a", run.id)
    assert out.returncode == 3 and run.id in out.stderr, out
    # A run id the agent refuses: bad input (exit 2).
    out = kill("--task-queue", "host-a", "../etc")
    assert out.returncode == 2, out
    # A queue no worker polls: exit 5 after --timeout, naming the queue.
    out = kill("--task-queue", "host-nowhere", "--timeout", "2", run.id)
    assert out.returncode == 5 and "host-nowhere" in out.stderr, out
    # No Temporal server there: exit 5 at once, for kill and worker alike, naming it.
    closed = f"127.0.0.1:{free_port()}"
    for command in (["kill", "--task-queue", "host-b", run.id], ["worker", "--task-queue", "q"]):
        out = subprocess.run(
            [sys.executable, "-m", "wfcg.temporal", command[0], "--address", closed, *command[1:]],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert out.returncode == 5 and f"cannot reach the Temporal server at {closed}" in out.stderr, out
    # Bad usage: exit 2, with the usage.
    out = kill("--task-queue", "host-b")
    assert out.returncode == 2 and "usage:" in out.stderr, out


def test_an_agent_restart_leaves_the_activity_running_and_cancellable(
    fleet: dict[str, Host], server: TemporalServer, marker: str
) -> None:
    a = fleet["host-a"]

    async def body() -> None:
        handle = await start(server, f"restart-{marker}", "host-a", escaping_command(marker))
        await wait_for(lambda: len(tree(marker)) >= 5, 30, "the tree on host-a")
        [run] = a.agent.client().list()
        before = set(tree(marker))

        a.agent.restart()
        # The activity goes on renewing the lease through the new agent, for longer
        # than a lease (a renewal a second): the run lives through it.
        renewals: set[str] = set()

        def renewed_past_a_lease() -> bool:
            info = a.agent.client().status(run.run_id)
            assert info.live, info
            if info.lease_renewed_at:
                renewals.add(info.lease_renewed_at)
            return len(renewals) > BEAT_S + 1

        await wait_for(renewed_past_a_lease, 30, "renewals through the restarted agent")
        assert set(tree(marker)) == before
        described = await handle.describe()
        assert described.status is not None and described.status.name == "RUNNING"

        await handle.cancel()
        assert isinstance(await failure_of(handle), CancelledError)
        assert tree(marker) == []
        assert a.agent.client().status(run.run_id).status == "killed"

    asyncio.run(body())


def test_run_workflow_refuses_bad_input(server: TemporalServer, fleet: dict[str, Host]) -> None:
    async def body() -> None:
        client = await server.client()
        for bad, needle in [
            ({"command": ["true"], "task_queue": "host-a", "bogus": 1}, "unknown key 'bogus'"),
            ({"command": "true", "task_queue": "host-a"}, "'command'"),
            ({"command": ["true"]}, "'task_queue'"),
            ({"command": ["true"], "task_queue": "host-a", "heartbeat_timeout_s": 0}, "between"),
        ]:
            handle = await client.start_workflow(
                "wfcg.RunWorkflow", bad, id=f"bad-{time.monotonic_ns()}", task_queue="host-a"
            )
            cause = await failure_of(handle, 30)
            assert isinstance(cause, ApplicationError), repr(cause)
            assert cause.type == "wfcg.bad_input" and cause.non_retryable, cause
            assert needle in cause.message, (needle, cause.message)
        assert fleet["host-a"].agent.client().list(all=True) == []

    asyncio.run(body())


@pytest.mark.parametrize(
    "value, needle",
    [
        ([], "JSON object"),
        ({"command": [], "task_queue": "q"}, "non-empty list"),
        ({"command": ["a", 1], "task_queue": "q"}, "'command'[1]"),
        ({"command": ["a\0b"], "task_queue": "q"}, "NUL"),
        ({"command": ["x" * (_input.MAX_COMMAND_CHARS + 1)], "task_queue": "q"}, "characters in all"),
        ({"command": ["a"] * (_input.MAX_ARGS + 1), "task_queue": "q"}, "arguments"),
        ({"command": ["a"], "task_queue": ""}, "'task_queue'"),
        ({"command": ["a"], "task_queue": "q", "heartbeat_timeout_s": True}, "number"),
        ({"command": ["a"], "task_queue": "q", "heartbeat_timeout_s": float("nan")}, "between"),
        ({"command": ["a"], "task_queue": "q", "start_to_close_timeout_s": 5}, "shorter"),
        ({"command": ["a"], "task_queue": "q", "workspace": 3}, "'workspace'"),
    ],
)
def test_run_workflow_input_is_checked(value: Any, needle: str) -> None:
    with pytest.raises(_input.InputError) as e:
        _input.run_workflow(value)
    assert needle in str(e.value), str(e.value)


def test_run_workflow_input_defaults() -> None:
    assert _input.run_workflow({"command": ["true"], "task_queue": "host-a"}) == {
        "command": ["true"],
        "task_queue": "host-a",
        "workflow": None,
        "workspace": None,
        "heartbeat_timeout_s": 10.0,
        "start_to_close_timeout_s": 3600.0,
    }
    assert _input.kill_activity({"run_id": "r1"}) == {"run_id": "r1", "force": False, "reason": None}
    with pytest.raises(_input.InputError, match="'pid'"):
        _input.adopt_activity({"pid": True})
    with pytest.raises(_input.InputError, match="'activity'"):
        _input.admin_workflow({"activity": "wfcg.run", "input": {}})


@pytest.mark.parametrize(
    "status, reason, kind, retryable",
    [
        ("timed_out", "initializing since 12:00:00Z: no READY=1 within 1s", "wfcg.timed_out", True),
        ("timed_out", "stalled: no progress (new output, ...) for 5s", "wfcg.stalled", True),
        ("unkillable", "processes survived", "wfcg.unkillable", False),
        ("timed_out", "lease expired: its executor stopped renewing it", "wfcg.lease_expired", True),
        ("killed", "lease expired: its executor stopped renewing it", "wfcg.lease_expired", True),
        ("killed", "operator: runaway", "wfcg.killed", False),
        ("exited", "exited with status 1", None, None),
        ("oom_killed", "out of memory", None, None),
    ],
)
def test_how_a_run_ended_is_what_temporal_sees(
    status: str, reason: str, kind: str | None, retryable: bool | None
) -> None:
    from wfcg import RunInfo
    from wfcg.temporal import stuck_error

    info = RunInfo.from_dict({"run_id": "r1", "status": status, "end_reason": reason})
    error = stuck_error(info)
    if kind is None:
        assert error is None
        return
    assert error is not None and error.type == kind, error
    assert error.non_retryable is not retryable
    assert error.details[0]["status"] == status and error.details[0]["end_reason"] == reason
