"""wfcg's Temporal activities, run by the worker on each host against that host's
agent: ``wfcg.run`` (a command under wfcg, leased, heartbeating, killed on
cancellation) and the admin activities ``wfcg.kill``, ``wfcg.list``, ``wfcg.adopt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

import temporalio.exceptions
from temporalio import activity
from temporalio.exceptions import ApplicationError

from .. import errors
from ..client import AsyncClient, RunInfo
from . import _input

#: The heartbeat (and lease renewal) comes this many times per heartbeat timeout.
BEATS_PER_TIMEOUT = 3
#: How often the run's status is read, at most (its end is seen this soon).
POLL_S = 0.25
#: Kept free of a cancelled activity's time left, to report the kill.
REPORT_MARGIN_S = 2.0
#: At most this long for a graceful kill when the worker shuts down.
SHUTDOWN_BUDGET_S = 30.0
#: How long a force kill is retried while the agent does not answer.
FORCE_KILL_WAIT_S = 60.0

#: How the end reason of a run killed by its lapsed lease begins.
LEASE_EXPIRED = "lease expired"


def _application_error(e: errors.WfcgError) -> ApplicationError:
    """A wfcg error as Temporal sees it: its type names it, and what no retry can
    mend (bad input, no permission, an open breaker, no such run) is non-retryable."""
    kinds: dict[type[errors.WfcgError], tuple[str, bool]] = {
        errors.BadInput: ("wfcg.bad_input", True),
        errors.NotPermitted: ("wfcg.not_permitted", True),
        errors.BreakerOpen: ("wfcg.breaker_open", True),
        errors.NoSuchRun: ("wfcg.no_such_run", True),
        errors.AgentUnreachable: ("wfcg.agent_unreachable", False),
    }
    kind, final = kinds.get(type(e), ("wfcg.error", False))
    return ApplicationError(str(e), type=kind, non_retryable=final)


def _bad_input(e: _input.InputError) -> ApplicationError:
    return ApplicationError(str(e), type="wfcg.bad_input", non_retryable=True)


def run_id_for(info: activity.Info) -> tuple[str, str]:
    """The run id of this attempt, and the prefix every attempt of the same
    activity shares: ``t-<hash of namespace, workflow and activity>-<attempt>``."""
    key = "\0".join(
        [info.namespace, info.workflow_id or "", info.workflow_run_id or "", info.activity_id]
    )
    prefix = "t-" + hashlib.sha256(key.encode()).hexdigest()[:24] + "-"
    return prefix + str(info.attempt), prefix


def outcome(info: RunInfo) -> dict[str, Any]:
    """An ended run as ``wfcg.run`` answers it."""
    return {
        "run_id": info.run_id,
        "status": info.status,
        "exit_code": info.exit_code,
        "exit_signal": info.exit_signal,
        "end_reason": info.raw.get("end_reason"),
        "kill_result": info.kill_result.to_dict() if info.kill_result else None,
    }


def stuck_error(info: RunInfo) -> ApplicationError | None:
    """The error for a run wfcg ended as stuck, or killed for another reason than
    this activity's cancellation; None when the run ended by itself."""
    reason = str(info.raw.get("end_reason") or "")
    details = outcome(info)
    if reason.startswith(LEASE_EXPIRED) and info.status in ("killed", "timed_out"):
        return ApplicationError(f"run {info.run_id}: {reason}", details, type="wfcg.lease_expired")
    if info.status == "timed_out":
        kind = "wfcg.stalled" if reason.startswith("stalled") else "wfcg.timed_out"
        return ApplicationError(f"run {info.run_id}: {reason}", details, type=kind)
    if info.status == "unkillable":
        return ApplicationError(
            f"run {info.run_id} is unkillable: processes survived cgroup.kill ({reason})",
            details,
            type="wfcg.unkillable",
            non_retryable=True,
        )
    if info.status == "killed":
        return ApplicationError(
            f"run {info.run_id} was killed on its host: {reason or 'no reason given'}",
            details,
            type="wfcg.killed",
            non_retryable=True,
        )
    return None


def _kill_failure(run_id: str, message: str, error: str = "AgentUnreachable") -> dict[str, Any]:
    """A kill result for a kill that could not be done (the contract's keys)."""
    return {
        "success": False,
        "run_id": run_id,
        "killed_at": None,
        "cleanup_status": {},
        "message": message,
        "error": error,
    }


def time_left(info: activity.Info, now: datetime) -> float:
    """Seconds until this attempt's start-to-close or schedule-to-close timeout."""
    ends = []
    if info.start_to_close_timeout:
        ends.append(info.started_time + info.start_to_close_timeout)
    if info.schedule_to_close_timeout:
        ends.append(info.scheduled_time + info.schedule_to_close_timeout)
    if not ends:
        return float("inf")
    return (min(ends) - now).total_seconds()


class Activities:
    """The activities of one host's worker, talking to that host's agent.

    ``client``: the agent (by default on ``WFCG_SOCKET``); ``identity``: how the
    worker names itself in kill reasons (the audit on the host shows it)."""

    def __init__(self, client: AsyncClient | None = None, identity: str = "") -> None:
        self.client = client or AsyncClient()
        self.identity = identity

    def all(self) -> list[Any]:
        """Every activity, as ``Worker(activities=...)`` takes them."""
        return [self.run, self.kill, self.list, self.adopt]

    # -- wfcg.run ------------------------------------------------------------

    @activity.defn(name="wfcg.run")
    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Starts ``command`` under wfcg with a lease of the heartbeat timeout,
        heartbeats (run id, status, status text) and renews the lease until it
        ends; on cancellation kills it and raises the cancellation with the kill
        result."""
        try:
            spec = _input.run_activity(params)
        except _input.InputError as e:
            raise _bad_input(e) from None
        info = activity.info()
        if not info.heartbeat_timeout or info.heartbeat_timeout < timedelta(seconds=1):
            raise ApplicationError(
                "wfcg.run needs a heartbeat timeout of at least 1 s: it is the run's lease",
                type="wfcg.bad_input",
                non_retryable=True,
            )
        lease = info.heartbeat_timeout.total_seconds()
        interval = lease / BEATS_PER_TIMEOUT
        run_id, prefix = run_id_for(info)
        beat = _Beat(self.client, run_id)
        try:
            try:
                await self._end_earlier_attempts(prefix, run_id)
                await self._start(spec, run_id, lease)
                final = await beat.watch(interval)
            except errors.WfcgError as e:
                raise _application_error(e) from None
        except asyncio.CancelledError:
            result = await self._kill_on_cancel(run_id, info, beat, interval)
            await _report_cancellation(info, result)
            raise temporalio.exceptions.CancelledError(
                f"run {run_id} killed: {result.get('message', '')}", result
            ) from None
        error = stuck_error(final)
        if error is not None:
            raise error
        return outcome(final)

    async def _start(self, spec: dict[str, Any], run_id: str, lease: float) -> None:
        """Starts the run; a cancellation meanwhile waits for the start to finish
        (``wfcg run --detach`` goes on in its thread), so the kill that follows
        finds the run."""
        start = asyncio.ensure_future(
            self.client.run(
                spec["command"],
                run_id=run_id,
                workflow=spec["workflow"],
                workspace=spec["workspace"],
                lease=lease,
            )
        )
        try:
            await asyncio.shield(start)
        except asyncio.CancelledError:
            with contextlib.suppress(errors.WfcgError):
                await start
            raise

    async def _end_earlier_attempts(self, prefix: str, run_id: str) -> None:
        """Force-kills a live run of an earlier attempt of this activity on this
        host (its worker died and its lease has not lapsed yet): the retry never
        runs beside it."""
        try:
            live = await self.client.list()
        except errors.WfcgError as e:
            raise _application_error(e) from None
        for r in live:
            if r.run_id.startswith(prefix) and r.run_id != run_id:
                activity.logger.warning("killing %s, an earlier attempt still alive", r.run_id)
                await self._kill(
                    r.run_id,
                    f"a later attempt ({run_id}) of its Temporal activity starts{self._by()}",
                    force=True,
                )

    def _by(self) -> str:
        return f" (worker {self.identity})" if self.identity else ""

    async def _kill_on_cancel(
        self, run_id: str, info: activity.Info, beat: _Beat, interval: float
    ) -> dict[str, Any]:
        """Kills the run after a cancellation: gracefully within the activity's
        time left, then by force; heartbeats meanwhile so the kill is not cut short
        by the heartbeat timeout. Returns the kill result as a dict (the contract's
        ``success``, ``run_id``, ``killed_at``, ``cleanup_status``, ``message``)."""
        details = activity.cancellation_details()
        why = "cancelled"
        budget = time_left(info, datetime.now(timezone.utc)) - REPORT_MARGIN_S
        if details is not None and details.timed_out:
            why = "timed out (heartbeat or start-to-close timeout)"
        elif details is not None and details.worker_shutdown:
            why = "stopped: its worker shuts down"
            budget = min(budget, SHUTDOWN_BUDGET_S)
        reason = (
            f"Temporal activity {why}: workflow {info.workflow_id} run "
            f"{info.workflow_run_id}, activity {info.activity_id} attempt {info.attempt}"
            f"{self._by()}"
        )
        keeper = asyncio.create_task(beat.keep_alive(interval))
        try:
            result = None
            if budget >= 1.0:
                budget = min(budget, 3600.0)
                try:
                    result = await asyncio.wait_for(
                        self._kill(run_id, reason, force=False, max_wait=budget / 2), budget
                    )
                except asyncio.TimeoutError:
                    result = None
            if result is None or not result.get("success"):
                tail = "" if result is None else f"; the graceful kill: {result.get('message')}"
                try:
                    result = await asyncio.wait_for(
                        self._kill(run_id, reason + tail, force=True), FORCE_KILL_WAIT_S
                    )
                except asyncio.TimeoutError:
                    result = _kill_failure(
                        run_id, f"the agent did not answer a kill within {FORCE_KILL_WAIT_S:g} s"
                    )
            return result
        finally:
            keeper.cancel()

    async def _kill(
        self, run_id: str, reason: str, *, force: bool, max_wait: float | None = None
    ) -> dict[str, Any]:
        """One kill through the agent, retried while the agent does not answer
        (it may be restarting), as a kill result dict; never raises a wfcg error."""
        delay = 0.1
        while True:
            try:
                result = await self.client.kill(
                    run_id, force=force, reason=reason, max_wait=max_wait, check=False
                )
                return result.to_dict()
            except errors.AgentUnreachable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except (errors.WfcgError, OSError) as e:  # OSError: the answer timed out
                return _kill_failure(run_id, str(e), type(e).__name__)

    # -- the admin activities ------------------------------------------------

    @activity.defn(name="wfcg.kill")
    async def kill(self, params: dict[str, Any]) -> dict[str, Any]:
        """Kills a run of this host (``run_id``, ``force``, ``reason``) and returns
        the kill result; a kill that left processes alive answers ``success: false``."""
        try:
            spec = _input.kill_activity(params)
        except _input.InputError as e:
            raise _bad_input(e) from None
        info = activity.info()
        reason = spec["reason"] or (
            f"killed through Temporal: workflow {info.workflow_id}{self._by()}"
        )
        try:
            result = await self.client.kill(
                spec["run_id"], force=spec["force"], reason=reason, check=False
            )
        except errors.WfcgError as e:
            raise _application_error(e) from None
        return result.to_dict()

    @activity.defn(name="wfcg.list")
    async def list(self, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The runs of this host (``all``: ended ones too; ``stuck``: stuck only),
        as the agent answers them."""
        try:
            spec = _input.list_activity(params)
        except _input.InputError as e:
            raise _bad_input(e) from None
        try:
            return [r.raw for r in await self.client.list(spec["all"], spec["stuck"])]
        except errors.WfcgError as e:
            raise _application_error(e) from None

    @activity.defn(name="wfcg.adopt")
    async def adopt(self, params: dict[str, Any]) -> dict[str, Any]:
        """Adopts a process tree of this host into a new run (``pid``, ``run_id``,
        ``workflow``, ``reason``, ``markers``, ``dry_run``, ``kill``)."""
        try:
            spec = _input.adopt_activity(params)
        except _input.InputError as e:
            raise _bad_input(e) from None
        pid = spec.pop("pid")
        try:
            return await self.client.adopt(pid, **spec)
        except errors.WfcgError as e:
            raise _application_error(e) from None


async def _report_cancellation(info: activity.Info, result: dict[str, Any]) -> None:
    """Reports a requested cancellation with the kill result as its details.

    The SDK completes a cancelled activity without the details its
    ``CancelledError`` carries, so the cancellation is reported here through the
    client (the activity then completes asynchronously: already done). Returns
    without reporting when the cancellation was not requested (a timeout, the
    worker's shutdown: the server takes no cancellation then) or the report
    fails; the caller raises the cancellation either way."""
    details = activity.cancellation_details()
    if details is None or not details.cancel_requested:
        return
    try:
        handle = activity.client().get_async_activity_handle(task_token=info.task_token)
        await handle.report_cancellation(result)
    except Exception as e:  # the SDK's own report follows, without the details
        activity.logger.warning("cancellation not reported with the kill result: %s", e)
        return
    activity.raise_complete_async()


class _Beat:
    """One run's heartbeat to Temporal and lease renewal to the agent."""

    def __init__(self, client: AsyncClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.status = "initializing"
        self.status_text: str | None = None

    def details(self, **more: Any) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "status_text": self.status_text,
            **more,
        }

    async def _look(self) -> RunInfo | None:
        """The run's status; None while the agent does not answer (a restart:
        the run goes on, and so does the activity)."""
        try:
            info = await self.client.status(self.run_id)
        except errors.AgentUnreachable as e:
            self.status_text = f"agent unreachable: {e}"
            return None
        self.status, self.status_text = info.status, info.status_text
        return info

    async def _renew(self) -> None:
        try:
            await self.client.renew_lease(self.run_id)
        except (errors.AgentUnreachable, errors.NoSuchRun, errors.BadInput) as e:
            # Unreachable: renewed at the next beat. Gone or ended (409): the
            # status read next says how it ended.
            activity.logger.info("lease of %s not renewed: %s", self.run_id, e)

    async def watch(self, interval: float) -> RunInfo:
        """Heartbeats and renews every ``interval`` until the run has ended (or is
        unkillable); returns how it ended."""
        loop = asyncio.get_running_loop()
        next_beat = 0.0
        while True:
            info = await self._look()
            if info is not None and (not info.live or info.status == "unkillable"):
                activity.heartbeat(self.details())
                return info
            if loop.time() >= next_beat:
                activity.heartbeat(self.details())
                await self._renew()
                next_beat = loop.time() + interval
            await asyncio.sleep(POLL_S)

    async def keep_alive(self, interval: float) -> None:
        """Heartbeats every ``interval`` (while a kill goes on)."""
        while True:
            activity.heartbeat(self.details())
            await asyncio.sleep(interval)
