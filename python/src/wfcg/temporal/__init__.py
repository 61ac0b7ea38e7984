"""wfcg through Temporal: one worker per host, each polling its host's task queue,
runs commands under that host's wfcg agent and kills them when Temporal cancels.

Install with ``pip install 'wfcg[temporal]'`` (``pip install './python[temporal]'``
from a checkout). Registered on every worker:

- the workflow ``wfcg.RunWorkflow``: input ``{"command": [...], "task_queue":
  "<host queue>", "workflow": None, "workspace": None, "heartbeat_timeout_s": 10,
  "start_to_close_timeout_s": 3600}`` (unknown keys refused); runs ``wfcg.run`` on
  that queue and waits, when cancelled, until the run is killed;
- the activity ``wfcg.run``: the command as a wfcg run leased for the heartbeat
  timeout, heartbeating (run id, status, status text) and renewing the lease; on
  cancellation a kill (graceful within the time left, then force) and the
  cancellation raised with the kill result; a stuck ending as ``ApplicationError``
  of type ``wfcg.timed_out``, ``wfcg.stalled``, ``wfcg.unkillable``, ...;
- the admin activities ``wfcg.kill``, ``wfcg.list``, ``wfcg.adopt`` and the workflow
  ``wfcg.AdminWorkflow`` that runs one of them on a host's queue.

``python -m wfcg.temporal worker`` runs a worker, ``python -m wfcg.temporal kill``
kills a run on a host through Temporal. See docs/fleet.md.
"""

from __future__ import annotations

from datetime import timedelta

try:
    from temporalio.client import Client as TemporalClient
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        "wfcg.temporal needs the temporalio package: pip install 'wfcg[temporal]'"
    ) from e

from ..client import AsyncClient
from ._activities import Activities, outcome, run_id_for, stuck_error
from ._input import InputError
from ._workflows import NON_RETRYABLE, RUN_RETRY_POLICY, AdminWorkflow, RunWorkflow

__all__ = [
    "NON_RETRYABLE",
    "RUN_RETRY_POLICY",
    "Activities",
    "AdminWorkflow",
    "InputError",
    "RunWorkflow",
    "new_worker",
    "outcome",
    "run_id_for",
    "stuck_error",
]

#: Heartbeats reach the server at once, up to one a second (the SDK's default
#: holds them back up to 0.8 heartbeat timeouts, and a cancellation only reaches
#: an activity with the answer to a heartbeat).
HEARTBEAT_THROTTLE = timedelta(seconds=1)


def new_worker(
    client: TemporalClient,
    task_queue: str,
    *,
    agent: AsyncClient | None = None,
    identity: str | None = None,
) -> Worker:
    """A worker for ``task_queue`` (this host's queue) with ``wfcg.RunWorkflow``,
    ``wfcg.AdminWorkflow`` and every activity, talking to ``agent`` (by default
    the agent on ``WFCG_SOCKET``). Stopping it cancels its running activities,
    which kill their runs."""
    activities = Activities(agent or AsyncClient(), identity=identity or client.identity)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[RunWorkflow, AdminWorkflow],
        activities=activities.all(),
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("wfcg")
        ),
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    )
