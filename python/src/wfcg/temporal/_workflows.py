"""wfcg's Temporal workflows: ``wfcg.RunWorkflow`` (one command under wfcg on a
host's queue) and ``wfcg.AdminWorkflow`` (one admin activity on a host's queue,
what ``python -m wfcg.temporal kill`` starts). Deterministic workflow code: no
I/O here, only activities.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.workflow import ActivityCancellationType

from . import _input

#: Error types no retry can mend: the workflow's retry policy stops at them.
NON_RETRYABLE = [
    "wfcg.bad_input",
    "wfcg.not_permitted",
    "wfcg.breaker_open",
    "wfcg.unkillable",
    "wfcg.killed",
]

#: ``wfcg.RunWorkflow``'s retry policy for ``wfcg.run``: three attempts, 1 s then 2 s
#: apart. A stuck ending (``wfcg.timed_out``, ``wfcg.stalled``) and a lapsed lease
#: (``wfcg.lease_expired``) are retried; :data:`NON_RETRYABLE` are not.
RUN_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=3,
    non_retryable_error_types=NON_RETRYABLE,
)

#: How long an admin activity may take (a graceful kill waits for critical sections).
ADMIN_TIMEOUT = timedelta(minutes=10)


def _bad_input(e: _input.InputError) -> ApplicationError:
    return ApplicationError(str(e), type="wfcg.bad_input", non_retryable=True)


@workflow.defn(name="wfcg.RunWorkflow")
class RunWorkflow:
    """Runs ``command`` under wfcg on the host that serves ``task_queue`` (the
    ``wfcg.run`` activity) and returns the run's outcome: ``run_id``, ``status``,
    ``exit_code``, ``exit_signal``, ``end_reason``, ``kill_result``.

    Cancelling the workflow cancels the activity and waits until it has killed the
    run (``WAIT_CANCELLATION_COMPLETED``), so a cancelled workflow has ended only
    once its tree has."""

    @workflow.run
    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = _input.run_workflow(params)
        except _input.InputError as e:
            raise _bad_input(e) from None
        return await workflow.execute_activity(
            "wfcg.run",
            {k: spec[k] for k in ("command", "workflow", "workspace")},
            task_queue=spec["task_queue"],
            start_to_close_timeout=timedelta(seconds=spec["start_to_close_timeout_s"]),
            heartbeat_timeout=timedelta(seconds=spec["heartbeat_timeout_s"]),
            retry_policy=RUN_RETRY_POLICY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            result_type=dict,
        )


@workflow.defn(name="wfcg.AdminWorkflow")
class AdminWorkflow:
    """Runs one admin activity (``wfcg.kill``, ``wfcg.list`` or ``wfcg.adopt``) on
    the task queue this workflow was started on (a host's queue) and returns its
    answer: the way to reach one host's agent through Temporal."""

    @workflow.run
    async def run(self, params: dict[str, Any]) -> Any:
        try:
            spec = _input.admin_workflow(params)
        except _input.InputError as e:
            raise _bad_input(e) from None
        return await workflow.execute_activity(
            spec["activity"],
            spec["input"],
            task_queue=workflow.info().task_queue,
            start_to_close_timeout=ADMIN_TIMEOUT,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_attempts=3,
                non_retryable_error_types=NON_RETRYABLE + ["wfcg.no_such_run"],
            ),
        )
