"""``python -m wfcg.temporal``: a host's Temporal worker, and kills through Temporal.

Exit codes: 0 done; 1 failed (the kill left processes alive, or another error);
2 bad usage or input; 3 no such run on that host; 4 not permitted by the host's
agent; 5 the Temporal server, a worker on the queue or the host's agent did not
answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import uuid
from datetime import timedelta
from typing import Any, NoReturn

from ..client import DEFAULT_SOCKET, AsyncClient
from ..errors import AgentUnreachable

EXIT_FAILED, EXIT_USAGE, EXIT_NO_SUCH_RUN, EXIT_NOT_PERMITTED, EXIT_UNREACHABLE = 1, 2, 3, 4, 5

#: ApplicationError types of the admin activities, and the exit code each maps to.
_EXIT_FOR_TYPE = {
    "wfcg.bad_input": EXIT_USAGE,
    "wfcg.no_such_run": EXIT_NO_SUCH_RUN,
    "wfcg.not_permitted": EXIT_NOT_PERMITTED,
    "wfcg.agent_unreachable": EXIT_UNREACHABLE,
}

DESCRIPTION = """\
wfcg through Temporal: run one worker per host on the host's task queue; it runs
wfcg.RunWorkflow's commands under the host's wfcg agent, leased for the heartbeat
timeout, and kills them when Temporal cancels them.
"""

EPILOG = """\
examples:
  python -m wfcg.temporal worker --address temporal:7233 --task-queue host-a
  python -m wfcg.temporal kill --address temporal:7233 --task-queue host-a RUN_ID

exit codes: 0 done; 1 failed (the kill left processes alive, or another error);
2 bad usage or input; 3 no such run on that host; 4 not permitted; 5 the Temporal
server, a worker on the queue or the host's agent did not answer.
"""


class _Failed(Exception):
    """Ends the command with ``code`` after printing ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _fail(code: int, message: str) -> NoReturn:
    raise _Failed(code, message)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wfcg.temporal",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--address", required=True, metavar="HOST:PORT", help="the Temporal frontend"
        )
        q.add_argument(
            "--namespace", default="default", metavar="NS", help="Temporal namespace (default)"
        )

    w = sub.add_parser(
        "worker",
        help="run this host's worker (until SIGTERM or SIGINT)",
        description="Runs this host's worker: polls --task-queue for wfcg.RunWorkflow, "
        "wfcg.AdminWorkflow and the activities wfcg.run, wfcg.kill, wfcg.list and "
        "wfcg.adopt, and acts through the wfcg agent on --socket. SIGTERM or SIGINT "
        "stops it; the runs its activities started are killed then (their activities "
        "are cancelled), as their leases would have them.",
    )
    common(w)
    w.add_argument("--task-queue", required=True, metavar="QUEUE", help="this host's queue")
    w.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the agent's socket (WFCG_SOCKET, else {DEFAULT_SOCKET})",
    )
    w.add_argument(
        "--identity",
        metavar="TEXT",
        help="how the worker names itself to Temporal and in kill reasons "
        "(default: wfcg-worker@HOST:PID/QUEUE)",
    )

    k = sub.add_parser(
        "kill",
        help="kill a run on a host, through that host's worker",
        description="Kills RUN_ID on the host whose worker polls --task-queue (the "
        "wfcg.kill activity, in a wfcg.AdminWorkflow), and prints the kill result. "
        "Works for any run of that host's agent, started through Temporal or not.",
    )
    common(k)
    k.add_argument("--task-queue", required=True, metavar="QUEUE", help="the run's host queue")
    k.add_argument("run_id", metavar="RUN_ID")
    k.add_argument("--force", action="store_true", help="skip the graceful steps")
    k.add_argument("--reason", metavar="TEXT", help="recorded in the host's audit trail")
    k.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up when no worker has answered within this (default 120)",
    )
    k.add_argument("--json", action="store_true", help="print the kill result as JSON")
    return p


async def _connect(address: str, namespace: str, identity: str | None = None) -> Any:
    from temporalio.client import Client

    try:
        kwargs: dict[str, Any] = {"namespace": namespace}
        if identity:
            kwargs["identity"] = identity
        return await Client.connect(address, **kwargs)
    except Exception as e:  # the SDK raises RuntimeError with the gRPC status
        _fail(EXIT_UNREACHABLE, f"cannot reach the Temporal server at {address}: {e}")


async def _worker(args: argparse.Namespace) -> int:
    from . import new_worker

    identity = args.identity or f"wfcg-worker@{socket.gethostname()}:{os.getpid()}/{args.task_queue}"
    agent = AsyncClient(args.socket)
    try:
        await agent.health()
    except AgentUnreachable as e:
        print(f"wfcg.temporal: warning: {e}; runs start once it answers", file=sys.stderr)
    client = await _connect(args.address, args.namespace, identity)
    worker = new_worker(client, args.task_queue, agent=agent, identity=identity)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"wfcg.temporal: worker {identity} polls {args.task_queue!r} on {args.address} "
        f"(namespace {args.namespace}), agent {agent.socket}",
        file=sys.stderr,
        flush=True,
    )
    async with worker:
        await stop.wait()
        print("wfcg.temporal: stopping: running activities are cancelled", file=sys.stderr)
    return 0


def _cause_type(e: BaseException) -> tuple[str | None, str]:
    """The ApplicationError type at the root of a workflow failure, and its message."""
    from temporalio.exceptions import ApplicationError, TimeoutError

    seen = e
    while seen is not None:
        if isinstance(seen, ApplicationError):
            return seen.type, seen.message
        if isinstance(seen, TimeoutError):
            return "timeout", str(seen)
        seen = seen.__cause__
    return None, str(e)


async def _kill(args: argparse.Namespace) -> int:
    from temporalio.client import WorkflowFailureError

    if not args.timeout > 0:
        _fail(EXIT_USAGE, f"--timeout must be positive, not {args.timeout}")
    client = await _connect(args.address, args.namespace)
    body: dict[str, Any] = {"run_id": args.run_id, "force": args.force}
    if args.reason is not None:
        body["reason"] = args.reason
    workflow_id = f"wfcg-kill-{args.task_queue}-{args.run_id}-{uuid.uuid4().hex[:8]}"
    try:
        result = await client.execute_workflow(
            "wfcg.AdminWorkflow",
            {"activity": "wfcg.kill", "input": body},
            id=workflow_id,
            task_queue=args.task_queue,
            execution_timeout=timedelta(seconds=args.timeout),
            result_type=dict,
        )
    except WorkflowFailureError as e:
        kind, message = _cause_type(e)
        if kind == "timeout":
            _fail(
                EXIT_UNREACHABLE,
                f"no worker on queue {args.task_queue!r} killed {args.run_id} within "
                f"{args.timeout:g} s (is the host's worker running?)",
            )
        _fail(_EXIT_FOR_TYPE.get(kind or "", EXIT_FAILED), message)
    except Exception as e:  # RPC errors
        _fail(EXIT_UNREACHABLE, f"the Temporal server at {args.address} failed: {e}")
    if args.json:
        print(json.dumps(result, indent=2))
    elif result.get("success"):
        print(f"killed {args.run_id} on {args.task_queue}: {result.get('message', '')}")
    if not result.get("success"):
        if not args.json:
            print(
                f"wfcg.temporal: kill of {args.run_id} on {args.task_queue} failed: "
                f"{result.get('message', '')}",
                file=sys.stderr,
            )
        return EXIT_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = _worker if args.command == "worker" else _kill
    try:
        return asyncio.run(run(args))
    except _Failed as e:
        print(f"wfcg.temporal: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    code = main()
    # Ends at once: the Temporal SDK's native threads may crash the interpreter's
    # finalization (seen as SIGSEGV after a failed connect), which would hide the code.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
