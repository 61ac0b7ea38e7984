"""The client against a real agent: runs, list, kills, errors, notify, asyncio."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Agent, OtherUser, pids_with_env, wait_until

import wfcg
from wfcg import notify
from wfcg.contract import (
    SafeKillManager,
    WorkflowKillPermissions,
    WorkflowProcessTracker,
    kill_workflow,
)

CONTRACT_KEYS = {"success", "run_id", "killed_at", "cleanup_status", "message"}
SLEEPER = ["sh", "-c", "sleep 1000 & setsid sleep 1001 & wait"]


DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "cgroup-templates" / "default.toml"


def start(client: wfcg.Client, marker: str, command: list[str] = SLEEPER, **kw: object) -> wfcg.Run:
    """A run that needs no READY=1, whose processes carry the test's marker."""
    kw.setdefault("init_timeout", 0)
    return client.run(command, env={"WFCG_TEST_MARK": marker}, **kw)  # type: ignore[arg-type]


def wait_processes(client: wfcg.Client, run_id: str, n: int) -> None:
    wait_until(lambda: client.status(run_id).processes >= n, 15, f"{n} processes in {run_id}")


def test_run_is_listed_and_killed_gracefully_then_by_force(agent: Agent, marker: str) -> None:
    client = agent.client()
    # A workflow named like no template runs with a template file: the default.
    graceful = start(client, marker, workflow="py-test", template=DEFAULT_TEMPLATE)
    forced = start(client, marker, run_id="py-forced-1")
    assert forced.id == "py-forced-1"
    for run in (graceful, forced):
        wait_processes(client, run.id, 3)  # sh and two sleeps (the supervisor is not counted)

    listed = {r.run_id: r for r in client.list()}
    assert {graceful.id, forced.id} <= set(listed)
    assert listed[graceful.id].workflow == "py-test"
    # Started with init_timeout=0: no initialization phase, running at once.
    assert listed[graceful.id].live and listed[graceful.id].status == "running"
    assert listed[graceful.id].owner_uid == 0

    result = graceful.kill(reason="cancelled by the executor", grace=5)
    assert result.success, result
    assert result.mode == "graceful"
    assert result.reason == "cancelled by the executor"
    assert result.cleanup_status["processes_remaining"] == 0
    assert result.cleanup_status["cgroup_removed"] is True
    assert result.killed_at
    assert graceful.wait(timeout=15).status == "killed"

    result = client.kill(forced.id, force=True)
    assert result.success and result.mode == "force", result
    assert forced.wait(timeout=15).status == "killed"

    assert not pids_with_env("WFCG_RUN_ID", graceful.id)
    assert not pids_with_env("WFCG_RUN_ID", forced.id)
    assert graceful.id not in {r.run_id for r in client.list()}
    assert graceful.id in {r.run_id for r in client.list(all=True)}
    # Killing it again is a success that says it had ended.
    again = graceful.kill()
    assert again.success and again.already_ended
    # The kill is on the record, with its reason.
    kills = [r for r in client.audit(run_id=graceful.id) if r["action"] == "kill"]
    assert kills[0]["reason"] == "cancelled by the executor"
    assert kills[0]["outcome"] == "killed"


def test_a_run_that_exits_by_itself_is_waited_for(agent: Agent, marker: str) -> None:
    client = agent.client()
    run = start(client, marker, command=["sh", "-c", "exit 7"])
    info = run.wait(timeout=15)
    assert info.status == "exited" and info.exit_code == 7, info


def test_kill_workflow_answers_the_contract(agent: Agent, marker: str) -> None:
    client = agent.client()
    run = start(client, marker)
    wait_processes(client, run.id, 3)

    result = asyncio.run(kill_workflow(run.id, client=agent.async_client()))

    assert CONTRACT_KEYS <= set(result), result
    assert list(result)[:5] == ["success", "run_id", "killed_at", "cleanup_status", "message"]
    assert result["success"] is True, result
    assert result["run_id"] == run.id
    assert result["cleanup_status"]["processes_remaining"] == 0
    assert "phases" in result and result["mode"] == "graceful"
    json.dumps(result)  # plain data

    missing = asyncio.run(kill_workflow("run_000000000000", True, client=agent.async_client()))
    assert CONTRACT_KEYS <= set(missing)
    assert missing["success"] is False
    assert missing["error"] == "NoSuchRun" and missing["exit_code"] == 3
    assert "no such run: run_000000000000" in missing["message"]


def test_errors_are_typed_like_the_cli_exit_codes(agent: Agent, tmp_path: Path) -> None:
    client = agent.client()
    with pytest.raises(wfcg.NoSuchRun, match="no such run: run_000000000000") as e:
        client.kill("run_000000000000")
    assert e.value.exit_code == 3
    with pytest.raises(wfcg.NoSuchRun):
        client.status("run_000000000000")
    with pytest.raises(wfcg.BadInput, match="must not contain"):
        client.kill("a..b")
    with pytest.raises(wfcg.BadInput, match="run id"):
        client.run(["true"], run_id="bad id!")
    with pytest.raises(wfcg.BadInput, match="--timeout"):
        client.run(["true"], timeout="soon")
    client.run(["true"], run_id="py-dup", init_timeout=0).wait(timeout=15)
    with pytest.raises(wfcg.BadInput, match="already in use") as dup:
        client.run(["true"], run_id="py-dup")
    assert dup.value.exit_code == 2
    with pytest.raises(wfcg.AgentUnreachable, match="no wfcg agent answers") as u:
        wfcg.Client(tmp_path / "nothing.sock").list()
    assert u.value.exit_code == 5
    # A bad question to the permission route is bad input, in the API's error shape.
    with pytest.raises(wfcg.BadInput, match="bad query"):
        client._request("GET", "/v1/runs/run_000000000000/may-kill?uid=nobody")
    with pytest.raises(wfcg.BadInput, match="run id"):
        client.may_kill("bad id!")
    # The agent is unharmed.
    assert client.health()["ok"] is True


def test_a_leased_run_lives_while_renewed_and_dies_when_not(agent: Agent, marker: str) -> None:
    client = agent.client()
    run = start(client, marker, lease=2)
    info = run.status()
    assert info.lease_ms == 2000 and info.lease_renewed_at is None, info
    assert info.lease_expires_at
    # Renewed past two leases' time: alive, and each answer moves the expiry on.
    deadline = time.monotonic() + 4.5
    last = None
    while time.monotonic() < deadline:
        renewed = run.renew_lease()
        assert set(renewed) == {"run_id", "lease_ms", "renewed_at", "expires_at"}, renewed
        assert renewed["run_id"] == run.id and renewed["lease_ms"] == 2000
        assert last is None or renewed["expires_at"] > last
        last = renewed["expires_at"]
        time.sleep(0.5)
    renewed = asyncio.run(agent.async_client().renew_lease(run.id))
    assert renewed["run_id"] == run.id
    assert run.status().live
    assert run.status().lease_renewed_at == renewed["renewed_at"]
    # Not renewed: killed once the lease runs out, for that reason.
    ended = run.wait(timeout=15)
    assert ended.status == "timed_out", ended
    assert ended.end_reason == "lease expired: its executor stopped renewing it", ended
    assert not pids_with_env("WFCG_TEST_MARK", marker)
    # An ended run's lease is not renewed; a run without one has none to renew.
    with pytest.raises(wfcg.BadInput, match="lease"):
        run.renew_lease()
    plain = start(client, marker)
    assert plain.status().lease_ms is None
    with pytest.raises(wfcg.BadInput, match="no lease"):
        asyncio.run(wfcg.AsyncRun(agent.async_client(), plain.id).renew_lease())
    with pytest.raises(wfcg.BadInput, match="--lease"):
        client.run(["true"], lease="0.5s")
    assert plain.kill(force=True).success


def test_a_kill_by_another_user_is_denied(
    agent: Agent, marker: str, test_user: OtherUser
) -> None:
    client = agent.client()
    run = start(client, marker)
    wait_processes(client, run.id, 3)
    theirs = agent.client()  # used in the child, as the test user

    denied = test_user.call(lambda: theirs.kill(run.id, reason="not mine"))

    assert isinstance(denied, wfcg.NotPermitted), denied
    assert denied.exit_code == 4
    assert "kill_any" in str(denied), denied
    assert client.status(run.id).live
    records = [r for r in client.audit(run_id=run.id) if r["action"] == "kill"]
    assert records[-1]["decision"] == "denied"
    assert records[-1]["actor_uid"] == test_user.uid
    assert client.kill(run.id).success


def test_permission_questions_are_answered_by_the_agent_and_audited(
    agent: Agent, marker: str, test_user: OtherUser
) -> None:
    client = agent.client()
    run = start(client, marker)
    theirs = agent.client()

    # Root (admin) may ask about anyone.
    perms = WorkflowKillPermissions(agent.async_client())
    assert asyncio.run(perms.can_kill_workflow("root", run.id, force=True)) is True
    assert asyncio.run(perms.can_kill_workflow(test_user.name, run.id)) is False
    answer = client.may_kill(run.id, uid=test_user.uid, force=True)
    assert (answer.allowed, answer.permission) == (False, "kill_any"), answer
    assert answer.user == test_user.name and answer.mode == "force"

    # A user may ask about themselves, not about others.
    own = test_user.call(lambda: theirs.may_kill(run.id))
    assert isinstance(own, wfcg.KillPermission), own
    assert (own.allowed, own.permission, own.uid) == (False, "kill_any", test_user.uid)
    other = test_user.call(lambda: theirs.may_kill(run.id, uid=0))
    assert isinstance(other, wfcg.NotPermitted) and "view_all" in str(other), other

    # The user's own run: they may kill it, and do.
    def own_run() -> object:
        mine = theirs.run(["sleep", "1000"], env={"WFCG_TEST_MARK": marker})
        return (mine.id, theirs.may_kill(mine.id, force=True), mine.kill(force=True))

    got = test_user.call(own_run)
    assert isinstance(got, tuple), got
    mine_id, may, killed = got
    assert (may.allowed, may.permission) == (True, "kill_own"), may
    assert killed.success, killed

    # Nothing was killed by asking, and every question is on the record.
    assert client.status(run.id).live
    asked = [r for r in client.audit(run_id=run.id) if r["action"] == "permission_query"]
    assert [r["decision"] for r in asked] == ["allowed", "denied", "denied", "denied", "denied"]
    assert [r["outcome"] for r in asked] == ["answered"] * 4 + ["denied"]
    assert [r["permission"] for r in asked][1:] == ["kill_any"] * 3 + ["view_all"]
    assert asked[-1]["actor_uid"] == test_user.uid and asked[-1]["permission"] == "view_all"
    assert client.audit_verify()["intact"] is True
    with pytest.raises(wfcg.NoSuchRun):
        client.may_kill("run_000000000000")
    client.kill(run.id, force=True)


HOLD_LOCK = """
import os, sys, time
lock, ready, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
open(ready, "w").close()
time.sleep(hold)
os.unlink(lock)
os.close(fd)
time.sleep(1000)
"""


def test_wait_for_safe_kill_waits_for_a_held_git_lock(
    agent: Agent, marker: str, tmp_path: Path
) -> None:
    client = agent.client()
    ws = tmp_path / "ws"
    (ws / ".git").mkdir(parents=True)
    lock, ready = ws / ".git" / "index.lock", tmp_path / "ready"
    hold = 2.0
    run = start(
        client,
        marker,
        command=[sys.executable, "-c", HOLD_LOCK, str(lock), str(ready), str(hold)],
        workspace=ws,
    )
    wait_until(ready.exists, 15, "the lock to be taken")
    taken = time.monotonic()
    safe = SafeKillManager(agent.async_client())

    assert asyncio.run(safe.check_safe_to_kill(run.id)) is False
    sections = asyncio.run(safe.open_sections(run.id))
    assert [(s["kind"], s["path"]) for s in sections] == [("git", str(lock))]
    assert asyncio.run(safe.wait_for_safe_kill(run.id, timeout=0.3)) is False
    assert asyncio.run(safe.wait_for_safe_kill(run.id, timeout=30)) is True
    waited = time.monotonic() - taken
    assert waited >= hold - 0.5, f"safe after {waited:.2f} s, the lock was held {hold} s"
    assert not lock.exists()
    assert asyncio.run(safe.check_safe_to_kill(run.id)) is True
    assert client.kill(run.id).sections == []


NOTIFYING = """
import os, sys, time
from wfcg import notify
notify.status("warming up")
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
notify.ready()
notify.heartbeat()
time.sleep(1000)
"""


def test_notify_moves_a_run_to_running(
    agent: Agent, marker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = agent.client()
    go = tmp_path / "go"
    src = str(Path(wfcg.__file__).parent.parent)
    run = client.run(
        [sys.executable, "-c", NOTIFYING, str(go)],
        init_timeout=60,
        env={"WFCG_TEST_MARK": marker, "PYTHONPATH": src},
    )
    wait_until(
        lambda: client.status(run.id).status_text == "warming up", 15, "STATUS=warming up"
    )
    assert client.status(run.id).status == "initializing"

    go.touch()
    wait_until(lambda: client.status(run.id).status == "running", 15, "READY=1")
    info = client.status(run.id)
    assert info.raw["ready_at"]
    wait_until(lambda: client.status(run.id).last_heartbeat, 15, "WATCHDOG=1")
    client.kill(run.id, force=True)

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with pytest.warns(RuntimeWarning, match="NOTIFY_SOCKET is not set"):
        assert notify.ready() is False


def test_asyncio_client_runs_lists_and_kills(agent: Agent, marker: str) -> None:
    async def main() -> None:
        client = agent.async_client()
        run = await client.run(SLEEPER, init_timeout=0, env={"WFCG_TEST_MARK": marker})
        assert run.id in {r.run_id for r in await client.list()}
        assert (await run.status()).live
        assert (await client.may_kill(run.id, force=True)).allowed
        # Two kills at once share one kill sequence.
        a, b = await asyncio.gather(run.kill(), client.kill(run.id, force=True))
        assert a.success and b.success and a.raw == b.raw
        assert (await run.wait(timeout=15)).status == "killed"
        with pytest.raises(wfcg.NoSuchRun):
            await client.kill("run_000000000000")
        assert len(await client.audit(run_id=run.id, limit=50)) >= 2

    asyncio.run(main())


def test_workflow_processes_view_reads_like_the_executors_table(
    agent: Agent, marker: str, tmp_path: Path
) -> None:
    client = agent.client()
    run = start(client, marker, workspace=tmp_path)
    wait_processes(client, run.id, 3)

    rows = json.loads(
        agent.sql(
            "select run_id, pid, status, started_at, workspace_path, last_heartbeat, created_at "
            f"from workflow_processes where run_id = '{run.id}'"
        )
    )
    info = asyncio.run(WorkflowProcessTracker(agent.async_client()).get_process_info(run.id))

    assert len(rows) == 1, rows
    row = rows[0]
    assert info is not None
    for key in ("run_id", "pid", "status", "started_at", "workspace_path"):
        assert row[key] == info[key], (key, row, info)
    assert row["status"] == "running" and row["workspace_path"] == str(tmp_path)
    assert row["created_at"]
    assert asyncio.run(WorkflowProcessTracker(agent.async_client()).get_process_info("nope")) is None
    client.kill(run.id, force=True)
    assert json.loads(agent.sql(f"select status from workflow_processes where run_id = '{run.id}'")) == [
        {"status": "killed"}
    ]


def test_emergency_kill_takes_the_run_at_once(agent: Agent, marker: str) -> None:
    client = agent.client()
    run = start(client, marker)
    wait_processes(client, run.id, 3)
    result = asyncio.run(WorkflowProcessTracker(agent.async_client()).emergency_kill(run.id))
    assert result["success"] is True and result["mode"] == "emergency", result
    assert not pids_with_env("WFCG_RUN_ID", run.id)
    assert os.path.exists(agent.socket)


def test_the_example_executor_kills_its_tasks_on_cancellation(agent: Agent, marker: str) -> None:
    example = Path(__file__).parent.parent / "examples" / "executor.py"
    out = subprocess.run(
        [sys.executable, str(example), "--tasks", "2", "--cancel-after", "2"],
        env={**os.environ, **agent.env, "WFCG_BIN": agent.binary, "WFCG_TEST_MARK": marker},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["task"] for r in results] == ["t0", "t1"]
    client = agent.client()
    for r in results:
        assert r["status"] == "cancelled", r
        assert CONTRACT_KEYS <= set(r["kill"]) and r["kill"]["success"] is True, r
        info = client.status(r["run_id"])
        assert (info.status, info.workflow) == ("killed", "builder"), info
        # It had initialized and heartbeated before it was cancelled.
        assert info.raw["ready_at"] and info.last_heartbeat, info
        assert info.status_text and info.status_text.startswith(f"{r['task']}: step"), info
        kill = [a for a in client.audit(run_id=r["run_id"]) if a["action"] == "kill"]
        assert kill[0]["reason"] == f"task {r['task']} cancelled"


def test_register_process_adopts_a_tree_started_outside_wfcg(agent: Agent, marker: str) -> None:
    """The executor's own process (started without wfcg) becomes a run under its
    own id; kill_workflow then ends its whole tree."""
    # Without the markers executors set: wfcg takes them (with the root's values)
    # as the tree's own, and a CI job sets them on every process.
    executor_markers = ("WFCG_RUN_ID", "RUNNER_TRACKING_ID", "GITHUB_RUN_ID", "CI_JOB_ID")
    env = {k: v for k, v in os.environ.items() if k not in executor_markers}
    tree = subprocess.Popen(
        ["sh", "-c", "sleep 1000 & setsid sleep 1001 & wait"],
        env={**env, "WFCG_TEST_MARK": marker},
    )
    try:
        wait_until(lambda: len(pids_with_env("WFCG_TEST_MARK", marker)) == 3, 15, "the tree")
        tracker = WorkflowProcessTracker(agent.async_client())
        dry = agent.client().adopt(tree.pid, dry_run=True)
        assert dry["dry_run"] is True and len(dry["members"]) == 3, dry
        assert dry["members"][0]["pid"] == tree.pid and dry["members"][0]["reason"] == "root"

        adopted = asyncio.run(
            tracker.register_process("run_5fbae44ab6f0", tree.pid, workflow="builder")
        )

        assert adopted["run_id"] == "run_5fbae44ab6f0" and len(adopted["members"]) == 3, adopted
        assert adopted["started_at"] and adopted["cgroup"].endswith("runs/run_5fbae44ab6f0"), adopted
        info = asyncio.run(tracker.get_process_info("run_5fbae44ab6f0"))
        assert info is not None and info["pid"] == tree.pid and info["status"] == "running", info
        result = asyncio.run(kill_workflow("run_5fbae44ab6f0", True, client=agent.async_client()))
        assert result["success"] is True, result
        tree.wait(10)
        assert pids_with_env("WFCG_TEST_MARK", marker) == []
    finally:
        tree.kill()
        tree.wait()


def test_a_run_ready_at_its_first_output_and_an_open_breaker(
    agent: Agent, marker: str, tmp_path: Path
) -> None:
    client = agent.client()
    go = tmp_path / "go"
    run = client.run(
        ["sh", "-c", f"while [ ! -e '{go}' ]; do sleep 0.05; done; echo up; sleep 1000"],
        ready_when="output",
        init_timeout=60,
        stall_timeout="10m",
        env={"WFCG_TEST_MARK": marker},
    )
    time.sleep(0.5)
    assert client.status(run.id).status == "initializing"
    go.touch()
    wait_until(lambda: client.status(run.id).status == "running", 15, "first output")
    client.kill(run.id, force=True)

    template = tmp_path / "breaker.toml"
    template.write_text('[breaker]\nfailures = 1\ncooldown = "10m"\n[timeouts]\ninit = "1s"\n')
    stuck = client.run(
        ["sleep", "1000"], workflow="py-flaky", template=template, env={"WFCG_TEST_MARK": marker}
    )
    assert stuck.wait(timeout=30).status == "timed_out"
    with pytest.raises(wfcg.BreakerOpen, match="circuit breaker open") as e:
        client.run(["true"], workflow="py-flaky", template=template)
    assert e.value.exit_code == 6
