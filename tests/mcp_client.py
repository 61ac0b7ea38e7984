#!/usr/bin/env python3
"""A client from another ecosystem for `wfcg mcp`: the Python `mcp` package.

Usage: mcp_client.py [--wfcg PATH] [--socket PATH] [--reason TEXT] RUN_ID

Starts `wfcg mcp` as a child process and talks to it over stdio with
`mcp.client.stdio.stdio_client` and `ClientSession`:

1. initialize, and list the tools: the six of wfcg, each with an object input
   schema, kill_workflow and adopt_workflow marked destructive, the others read-only;
2. get_workflow RUN_ID: the run is live;
3. kill_workflow RUN_ID: the kill result says success, names the run, has
   killed_at, a cleanup_status with no process remaining, and a message;
4. get_workflow RUN_ID again: its status is `killed`;
5. get_workflow on a run that does not exist: a tool error `no such run: ...`.

Exits 0 when all of that holds, 1 with a message on stderr otherwise (2 when the
`mcp` package is missing). Run by tests/it/mcp.rs with $WFCG_PYTHON, a venv made
with `python3 -m venv .venv && .venv/bin/pip install 'mcp>=2.3,<3'`.
"""

import argparse
import asyncio
import json
import os
import sys

try:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
except ImportError as e:  # pragma: no cover - environment problem, not a test failure
    print(
        f"mcp_client.py: the Python `mcp` package is missing ({e}); create the venv: "
        "python3 -m venv .venv && .venv/bin/pip install 'mcp>=2.3,<3' "
        "and set WFCG_PYTHON=.venv/bin/python",
        file=sys.stderr,
    )
    sys.exit(2)

TOOLS = {"list_workflows", "get_workflow", "kill_workflow", "list_stuck", "audit_log", "adopt_workflow"}
DESTRUCTIVE = {"kill_workflow", "adopt_workflow"}
LIVE = {"initializing", "running", "stopping", "unknown"}


class Failed(Exception):
    """A check did not hold."""


def check(cond, what):
    if not cond:
        raise Failed(what)


def text_of(result):
    """The text content of a tool result, joined."""
    return "".join(getattr(c, "text", "") for c in result.content)


def answer(result, tool):
    """The structured answer of a successful tool call (an object)."""
    check(not result.is_error, f"{tool} failed: {text_of(result)}")
    data = result.structured_content
    if data is None:  # the text content carries the same JSON
        data = json.loads(text_of(result))
    check(isinstance(data, dict), f"{tool}: the answer is not an object: {data!r}")
    # The text content is the same answer, as JSON.
    check(json.loads(text_of(result)) == data, f"{tool}: text and structured content differ")
    return data


async def run(args):
    env = dict(os.environ)  # WFCG_* point wfcg at the agent
    server_args = ["mcp"]
    if args.socket:
        server_args = ["--socket", args.socket, "mcp"]
    params = StdioServerParameters(command=args.wfcg, args=server_args, env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            check(init.server_info.name == "wfcg", f"server name: {init.server_info.name!r}")

            tools = {t.name: t for t in (await session.list_tools()).tools}
            check(set(tools) == TOOLS, f"tools: {sorted(tools)}, want {sorted(TOOLS)}")
            for name, tool in tools.items():
                check(tool.input_schema.get("type") == "object", f"{name}: input schema {tool.input_schema}")
                check(bool(tool.description), f"{name}: no description")
                ann = tool.annotations
                check(ann is not None, f"{name}: no annotations")
                if name in DESTRUCTIVE:
                    check(ann.destructive_hint is True, f"{name} not destructive: {ann}")
                    check(ann.read_only_hint is False, f"{name} read-only: {ann}")
                else:
                    check(ann.read_only_hint is True, f"{name} not read-only: {ann}")
            check("run_id" in tools["kill_workflow"].input_schema.get("required", []), "kill_workflow: run_id not required")
            print(f"tools: {', '.join(sorted(tools))}")

            run = answer(await session.call_tool("get_workflow", {"run_id": args.run_id}), "get_workflow")
            check(run.get("run_id") == args.run_id, f"get_workflow answered {run.get('run_id')!r}")
            check(run.get("status") in LIVE, f"the run is not live: {run.get('status')!r}")
            print(f"before: {args.run_id} is {run['status']} with {run.get('processes')} processes")

            kill = answer(
                await session.call_tool(
                    "kill_workflow", {"run_id": args.run_id, "force": False, "reason": args.reason}
                ),
                "kill_workflow",
            )
            check(kill.get("success") is True, f"kill failed: {kill}")
            check(kill.get("run_id") == args.run_id, f"kill result names {kill.get('run_id')!r}")
            check(isinstance(kill.get("killed_at"), str), f"no killed_at: {kill}")
            check(isinstance(kill.get("message"), str) and kill["message"], f"no message: {kill}")
            cleanup = kill.get("cleanup_status") or {}
            check(cleanup.get("processes_remaining") == 0, f"processes remain: {cleanup}")
            check(kill.get("reason") == args.reason, f"reason: {kill.get('reason')!r}")
            print(f"kill: {kill['message']}")

            after = answer(await session.call_tool("get_workflow", {"run_id": args.run_id}), "get_workflow")
            check(after.get("status") == "killed", f"after the kill the run is {after.get('status')!r}")
            check(after.get("processes") == 0, f"after the kill it has {after.get('processes')} processes")
            print(f"after: {args.run_id} is {after['status']}")

            missing = "run_000000000000"
            err = await session.call_tool("get_workflow", {"run_id": missing})
            check(err.is_error, f"get_workflow {missing} did not fail: {text_of(err)}")
            check(text_of(err) == f"no such run: {missing}", f"error text: {text_of(err)!r}")
            print(f"unknown run: {text_of(err)}")


def leaves(e):
    """The exceptions inside (nested) exception groups, as anyio's task groups wrap them."""
    if isinstance(getattr(e, "exceptions", None), (list, tuple)):  # BaseExceptionGroup (3.11+)
        return [leaf for sub in e.exceptions for leaf in leaves(sub)]
    return [e]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wfcg", default="wfcg", help="the wfcg binary (default: wfcg on PATH)")
    parser.add_argument("--socket", help="the agent's socket (default: WFCG_SOCKET)")
    parser.add_argument("--reason", default="killed by the Python MCP client test")
    parser.add_argument("run_id")
    args = parser.parse_args()
    try:
        asyncio.run(asyncio.wait_for(run(args), timeout=60))
    except Exception as e:  # noqa: BLE001 - any failure fails the test
        for leaf in leaves(e):
            what = str(leaf) if isinstance(leaf, Failed) else f"{type(leaf).__name__}: {leaf}"
            print(f"mcp_client.py: FAILED: {what}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
