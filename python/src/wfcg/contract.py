"""The executors' kill contract, as thin asyncio functions over :class:`AsyncClient`.

- :func:`kill_workflow` ``(run_id, force=False) -> dict`` with ``success``,
  ``run_id``, ``killed_at``, ``cleanup_status`` and ``message`` (plus the rest
  of the kill result). It never raises a wfcg error: a run that does not exist, a
  kill that is not permitted, an unreachable agent come back as ``success:
  False`` with the ``message``, and ``error`` naming the exception.
- :class:`WorkflowProcessTracker`: ``register_process`` (adopt a process tree
  that is not a run yet), ``get_process_info``, ``emergency_kill``.
- :class:`SafeKillManager`: ``check_safe_to_kill`` / ``wait_for_safe_kill``, from
  the critical sections the run has open (git locks, database writes, file writes).
- :class:`WorkflowKillPermissions`: ``can_kill_workflow(user, run_id, force)``,
  asked of the agent's policy.

Each takes an optional ``client``; by default an :class:`AsyncClient` on
``WFCG_SOCKET``.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from typing import Any

from .client import AsyncClient, KillPermission, RunInfo
from .errors import BadInput, NoSuchRun, WfcgError

__all__ = [
    "kill_workflow",
    "WorkflowProcessTracker",
    "SafeKillManager",
    "WorkflowKillPermissions",
]


def _failure(run_id: str, e: WfcgError) -> dict[str, Any]:
    return {
        "success": False,
        "run_id": run_id,
        "killed_at": None,
        "cleanup_status": {},
        "message": str(e),
        "error": type(e).__name__,
        "exit_code": e.exit_code,
    }


async def kill_workflow(
    run_id: str,
    force: bool = False,
    *,
    reason: str | None = None,
    emergency: bool = False,
    client: AsyncClient | None = None,
) -> dict[str, Any]:
    """Kills a run: gracefully (critical sections are waited for, then SIGTERM,
    then ``cgroup.kill``), or at once with ``force``. Returns the kill result as a
    dict; ``success`` is True once nothing of the run is left."""
    client = client or AsyncClient()
    try:
        result = await client.kill(
            run_id, force=force, emergency=emergency, reason=reason, check=False
        )
    except WfcgError as e:
        return _failure(run_id, e)
    return result.to_dict()


def _process_info(info: RunInfo) -> dict[str, Any]:
    """A run in the shape of the executors' ``workflow_processes`` table, plus more."""
    return {
        "run_id": info.run_id,
        "pid": info.pid,
        "status": info.status,
        "started_at": info.started_at,
        "workspace_path": info.workspace,
        "last_heartbeat": info.last_heartbeat,
        "workflow": info.workflow,
        "owner": info.owner,
        "processes": info.processes,
        "ended_at": info.ended_at,
        "status_text": info.status_text,
        "stuck": info.stuck,
        "sections": info.sections,
    }


class WorkflowProcessTracker:
    """Tracks executors' processes as wfcg runs."""

    def __init__(self, client: AsyncClient | None = None) -> None:
        self.client = client or AsyncClient()

    async def register_process(
        self,
        run_id: str,
        pid: int,
        workspace: str | os.PathLike[str] | None = None,
        *,
        workflow: str | None = None,
        reason: str | None = None,
        markers: list[str] | None = None,
    ) -> dict[str, Any]:
        """Adopts ``pid`` (and its descendants) into a new run ``run_id``: from
        then on it is tracked and killable like a run started with ``wfcg run``.
        (Processes started through :meth:`AsyncClient.run` are runs already.)
        ``workspace`` is recorded as the reason's context: an adopted tree keeps
        the working directory it has."""
        why = reason or "registered by executor"
        if workspace is not None:
            why += f" (workspace {os.fspath(workspace)})"
        return await self.client.adopt(
            pid, run_id=run_id, workflow=workflow, reason=why, markers=markers
        )

    async def get_process_info(self, run_id: str) -> dict[str, Any] | None:
        """The run as a ``workflow_processes`` row (``run_id``, ``pid``,
        ``status``, ``started_at``, ``workspace_path``, ``last_heartbeat``) plus
        its processes, open critical sections and more; None if there is no such run."""
        try:
            return _process_info(await self.client.status(run_id))
        except NoSuchRun:
            return None

    async def emergency_kill(self, run_id: str, reason: str | None = None) -> dict[str, Any]:
        """A force kill that needs the ``emergency_kill`` permission rather than
        the right to the run; it does not wait for critical sections and also
        takes unkillable and frozen runs. Returns the kill result as a dict."""
        return await kill_workflow(
            run_id, force=True, emergency=True, reason=reason, client=self.client
        )


class SafeKillManager:
    """Whether a run can be killed without tearing a write: no git lock, database
    transaction or workspace file write is open in it right now. (A graceful kill
    waits for these by itself; this is for executors that would rather wait first.)"""

    def __init__(self, client: AsyncClient | None = None) -> None:
        self.client = client or AsyncClient()

    async def open_sections(self, run_id: str) -> list[dict[str, Any]]:
        """The critical sections the run has open now (``kind``, ``path``, ``pid``,
        ``command``, ``since``, ``open_secs``); empty for a run that has ended."""
        info = await self.client.status(run_id)
        return info.sections if info.live else []

    async def check_safe_to_kill(self, run_id: str) -> bool:
        """True when the run has no critical section open (or has ended)."""
        return not await self.open_sections(run_id)

    async def wait_for_safe_kill(
        self, run_id: str, timeout: float = 60.0, interval: float = 0.25
    ) -> bool:
        """Waits until :meth:`check_safe_to_kill` holds; False if ``timeout``
        seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            if await self.check_safe_to_kill(run_id):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(interval)


def _uid(user: str | int) -> int:
    if isinstance(user, int):
        return user
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise BadInput(f"no such user: {user}") from None


class WorkflowKillPermissions:
    """What the agent's policy allows, asked of the agent (the policy file is
    the agent's; nothing is decided here)."""

    def __init__(self, client: AsyncClient | None = None) -> None:
        self.client = client or AsyncClient()

    async def check(self, user: str | int, run_id: str, force: bool = False) -> KillPermission:
        """The full answer: ``allowed``, the ``permission`` it rests on (or the one
        missing) and a ``message``. Asking about another user needs view_all
        (:class:`NotPermitted` otherwise)."""
        return await self.client.may_kill(run_id, uid=_uid(user), force=force)

    async def can_kill_workflow(self, user: str | int, run_id: str, force: bool = False) -> bool:
        """Whether ``user`` (a name or a uid) may kill the run (with ``force``)."""
        return (await self.check(user, run_id, force)).allowed
