"""Python client of wfcg, the agent that makes workflow runs killable.

    import wfcg

    client = wfcg.Client()                      # WFCG_SOCKET, else /run/wfcg/agent.sock
    run = client.run(["agent-cli", "--task", "t1"], workflow="builder")
    print(run.status().status)                  # initializing, running, ...
    result = run.kill(reason="cancelled")       # KillResult(success=True, ...)

:class:`AsyncClient` is the same for asyncio; :mod:`wfcg.notify` is sd_notify for
code inside a run; :mod:`wfcg.contract` holds the executors' kill contract
(``kill_workflow``, ``WorkflowProcessTracker``, ``SafeKillManager``,
``WorkflowKillPermissions``).
"""

from . import notify
from .client import (
    DEFAULT_SOCKET,
    LIVE_STATUSES,
    AsyncClient,
    AsyncRun,
    Client,
    KillPermission,
    KillResult,
    Run,
    RunInfo,
)
from .contract import (
    SafeKillManager,
    WorkflowKillPermissions,
    WorkflowProcessTracker,
    kill_workflow,
)
from .errors import (
    AgentUnreachable,
    BreakerOpen,
    BadInput,
    KillFailed,
    NoSuchRun,
    NotPermitted,
    WfcgError,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SOCKET",
    "LIVE_STATUSES",
    "AgentUnreachable",
    "BreakerOpen",
    "AsyncClient",
    "AsyncRun",
    "BadInput",
    "Client",
    "KillFailed",
    "KillPermission",
    "KillResult",
    "NoSuchRun",
    "NotPermitted",
    "Run",
    "RunInfo",
    "SafeKillManager",
    "WfcgError",
    "WorkflowKillPermissions",
    "WorkflowProcessTracker",
    "kill_workflow",
    "notify",
]
