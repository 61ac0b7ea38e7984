"""Typed errors that mirror the exit codes of the ``wfcg`` CLI.

=====  ======================  ==========================================
code   exception               meaning
=====  ======================  ==========================================
1      :class:`WfcgError`      failed (agent error)
1      :class:`KillFailed`     a kill left processes alive (unkillable)
2      :class:`BadInput`       bad input (a bad run id, a run id in use)
3      :class:`NoSuchRun`      no such run
4      :class:`NotPermitted`   the policy does not allow it
5      :class:`AgentUnreachable`  nothing answers on the socket
6      :class:`BreakerOpen`    the workflow's circuit breaker is open: run refused
=====  ======================  ==========================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import KillResult

__all__ = [
    "WfcgError",
    "BadInput",
    "NoSuchRun",
    "NotPermitted",
    "AgentUnreachable",
    "BreakerOpen",
    "KillFailed",
    "error_for_kind",
    "error_for_exit_code",
]


class WfcgError(Exception):
    """Any failure of a wfcg call; ``exit_code`` is what the CLI would exit with."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(WfcgError):
    """The request was malformed, or conflicts with the state (exit code 2)."""

    exit_code = 2


class NoSuchRun(WfcgError):
    """The run does not exist (exit code 3)."""

    exit_code = 3


class NotPermitted(WfcgError):
    """The agent's policy does not allow this caller to do this (exit code 4)."""

    exit_code = 4


class AgentUnreachable(WfcgError):
    """No agent answers on the socket (exit code 5)."""

    exit_code = 5


class BreakerOpen(WfcgError):
    """The workflow's last runs all ended stuck: new runs are refused until the
    breaker's cooldown passes or an operator runs ``wfcg breaker reset`` (exit code 6)."""

    exit_code = 6


class KillFailed(WfcgError):
    """A kill ran but processes survived it (the run is ``unkillable``); exit code 1.

    ``result`` is the kill result the agent answered with.
    """

    exit_code = 1

    def __init__(self, message: str, result: KillResult) -> None:
        super().__init__(message)
        self.result = result


_KINDS: dict[str, type[WfcgError]] = {
    "bad_input": BadInput,
    "conflict": BadInput,
    "not_found": NoSuchRun,
    "forbidden": NotPermitted,
    "breaker_open": BreakerOpen,
}

_CODES: dict[int, type[WfcgError]] = {
    2: BadInput,
    3: NoSuchRun,
    4: NotPermitted,
    5: AgentUnreachable,
    6: BreakerOpen,
}


def error_for_kind(kind: Any, message: str) -> WfcgError:
    """The exception for an error answer of the agent (its ``kind``)."""
    return _KINDS.get(str(kind), WfcgError)(message)


def error_for_exit_code(code: int, message: str) -> WfcgError:
    """The exception for an exit code of the ``wfcg`` binary."""
    return _CODES.get(code, WfcgError)(message)
