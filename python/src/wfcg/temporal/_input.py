"""The inputs of wfcg's Temporal workflows and activities, checked: unknown keys,
wrong types and values out of bounds are refused with a message that names the
key. Pure Python (no I/O), so workflow code can use it in Temporal's sandbox.

Every check raises :class:`InputError`; the callers turn it into a non-retryable
``ApplicationError`` of type ``wfcg.bad_input``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: At most this many arguments in a command, and this many characters in all.
MAX_ARGS = 4096
MAX_COMMAND_CHARS = 256 * 1024
#: Bounds of the timeouts, in seconds.
MIN_HEARTBEAT_S = 1.0
MAX_HEARTBEAT_S = 3600.0
MAX_START_TO_CLOSE_S = 30 * 24 * 3600.0
#: Bounds of names and paths.
MAX_NAME = 200
MAX_PATH = 4096
MAX_REASON = 1024
MAX_MARKERS = 64

#: ``wfcg.RunWorkflow``'s input keys and their defaults (``None``: required or absent).
RUN_WORKFLOW_DEFAULTS: dict[str, Any] = {
    "command": None,
    "task_queue": None,
    "workflow": None,
    "workspace": None,
    "heartbeat_timeout_s": 10,
    "start_to_close_timeout_s": 3600,
}


class InputError(ValueError):
    """A workflow's or activity's input is not what it takes."""


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(f"{what} takes a JSON object, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise InputError(f"{what}: keys are strings, not {key!r}")
    return value


def _known(value: Mapping[str, Any], keys: Any, what: str) -> None:
    unknown = sorted(k for k in value if k not in keys)
    if unknown:
        shown = ", ".join(repr(k[:64]) for k in unknown[:5])
        raise InputError(f"{what}: unknown key {shown} (it takes {', '.join(keys)})")


def _string(value: Any, key: str, what: str, limit: int, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise InputError(f"{what}: {key!r} must be a non-empty string")
    if len(value) > limit:
        raise InputError(f"{what}: {key!r} is {len(value)} characters, at most {limit}")
    if "\0" in value:
        raise InputError(f"{what}: {key!r} contains a NUL character")
    return value


def _seconds(value: Any, key: str, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what}: {key!r} must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or not low <= seconds <= high:
        raise InputError(f"{what}: {key!r} is {value!r}, it must be between {low:g} and {high:g}")
    return seconds


def _bool(value: Any, key: str, what: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{what}: {key!r} must be true or false")
    return value


def command(value: Any, what: str) -> list[str]:
    """A non-empty list of strings within :data:`MAX_ARGS` and :data:`MAX_COMMAND_CHARS`."""
    if not isinstance(value, list) or not value:
        raise InputError(f"{what}: 'command' must be a non-empty list of strings")
    if len(value) > MAX_ARGS:
        raise InputError(f"{what}: 'command' has {len(value)} arguments, at most {MAX_ARGS}")
    total = 0
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            raise InputError(f"{what}: 'command'[{i}] must be a string, not {type(arg).__name__}")
        if "\0" in arg:
            raise InputError(f"{what}: 'command'[{i}] contains a NUL character")
        total += len(arg)
    if total > MAX_COMMAND_CHARS:
        raise InputError(
            f"{what}: 'command' has {total} characters in all, at most {MAX_COMMAND_CHARS}"
        )
    if not value[0]:
        raise InputError(f"{what}: 'command'[0] (the program) is empty")
    return list(value)


def run_workflow(value: Any) -> dict[str, Any]:
    """``wfcg.RunWorkflow``'s input with defaults filled in."""
    what = "wfcg.RunWorkflow input"
    value = _mapping(value, what)
    _known(value, RUN_WORKFLOW_DEFAULTS, what)
    merged = {**RUN_WORKFLOW_DEFAULTS, **value}
    out: dict[str, Any] = {
        "command": command(merged["command"], what),
        "task_queue": _string(merged["task_queue"], "task_queue", what, MAX_NAME, optional=False),
        "workflow": _string(merged["workflow"], "workflow", what, MAX_NAME, optional=True),
        "workspace": _string(merged["workspace"], "workspace", what, MAX_PATH, optional=True),
    }
    beat = _seconds(
        merged["heartbeat_timeout_s"], "heartbeat_timeout_s", what, MIN_HEARTBEAT_S, MAX_HEARTBEAT_S
    )
    total = _seconds(
        merged["start_to_close_timeout_s"],
        "start_to_close_timeout_s",
        what,
        MIN_HEARTBEAT_S,
        MAX_START_TO_CLOSE_S,
    )
    if total < beat:
        raise InputError(
            f"{what}: 'start_to_close_timeout_s' ({total:g}) is shorter than "
            f"'heartbeat_timeout_s' ({beat:g})"
        )
    out["heartbeat_timeout_s"] = beat
    out["start_to_close_timeout_s"] = total
    return out


def run_activity(value: Any) -> dict[str, Any]:
    """``wfcg.run``'s input: ``command``, and optionally ``workflow`` and ``workspace``."""
    what = "wfcg.run input"
    value = _mapping(value, what)
    _known(value, ("command", "workflow", "workspace"), what)
    return {
        "command": command(value.get("command"), what),
        "workflow": _string(value.get("workflow"), "workflow", what, MAX_NAME, optional=True),
        "workspace": _string(value.get("workspace"), "workspace", what, MAX_PATH, optional=True),
    }


def kill_activity(value: Any) -> dict[str, Any]:
    """``wfcg.kill``'s input: ``run_id``, and optionally ``force`` and ``reason``."""
    what = "wfcg.kill input"
    value = _mapping(value, what)
    _known(value, ("run_id", "force", "reason"), what)
    return {
        "run_id": _string(value.get("run_id"), "run_id", what, MAX_NAME, optional=False),
        "force": _bool(value.get("force", False), "force", what),
        "reason": _string(value.get("reason"), "reason", what, MAX_REASON, optional=True),
    }


def list_activity(value: Any) -> dict[str, Any]:
    """``wfcg.list``'s input: optionally ``all`` and ``stuck``."""
    what = "wfcg.list input"
    value = _mapping(value if value is not None else {}, what)
    _known(value, ("all", "stuck"), what)
    return {
        "all": _bool(value.get("all", False), "all", what),
        "stuck": _bool(value.get("stuck", False), "stuck", what),
    }


def adopt_activity(value: Any) -> dict[str, Any]:
    """``wfcg.adopt``'s input: ``pid``, and optionally ``run_id``, ``workflow``,
    ``reason``, ``markers``, ``dry_run`` and ``kill``."""
    what = "wfcg.adopt input"
    value = _mapping(value, what)
    _known(value, ("pid", "run_id", "workflow", "reason", "markers", "dry_run", "kill"), what)
    pid = value.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 1 <= pid <= 2**22:
        raise InputError(f"{what}: 'pid' must be a process id (1 to {2**22})")
    markers = value.get("markers")
    if markers is not None:
        if not isinstance(markers, list) or len(markers) > MAX_MARKERS:
            raise InputError(f"{what}: 'markers' must be a list of at most {MAX_MARKERS} strings")
        for i, m in enumerate(markers):
            _string(m, f"markers[{i}]", what, MAX_PATH, optional=False)
    return {
        "pid": pid,
        "run_id": _string(value.get("run_id"), "run_id", what, MAX_NAME, optional=True),
        "workflow": _string(value.get("workflow"), "workflow", what, MAX_NAME, optional=True),
        "reason": _string(value.get("reason"), "reason", what, MAX_REASON, optional=True),
        "markers": markers,
        "dry_run": _bool(value.get("dry_run", False), "dry_run", what),
        "kill": _bool(value.get("kill", False), "kill", what),
    }


ADMIN_ACTIVITIES = ("wfcg.kill", "wfcg.list", "wfcg.adopt")


def admin_workflow(value: Any) -> dict[str, Any]:
    """``wfcg.AdminWorkflow``'s input: ``activity`` (one of :data:`ADMIN_ACTIVITIES`)
    and its ``input``, checked as that activity checks it."""
    what = "wfcg.AdminWorkflow input"
    value = _mapping(value, what)
    _known(value, ("activity", "input"), what)
    name = value.get("activity")
    if name not in ADMIN_ACTIVITIES:
        raise InputError(f"{what}: 'activity' must be one of {', '.join(ADMIN_ACTIVITIES)}")
    check = {"wfcg.kill": kill_activity, "wfcg.list": list_activity, "wfcg.adopt": adopt_activity}
    return {"activity": name, "input": check[name](value.get("input"))}
