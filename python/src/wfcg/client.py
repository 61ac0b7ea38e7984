"""Clients of the wfcg agent: :class:`Client` (blocking) and :class:`AsyncClient`
(asyncio), over the agent's HTTP/JSON API on its Unix socket.

Runs are started through the ``wfcg run --detach`` binary, so the way a run is
set up (its cgroup, supervisor, sd_notify socket) has one implementation.
"""

from __future__ import annotations

import asyncio
import builtins
import http.client
import json
import os
import shutil
import socket as _socket
import subprocess
import time
import urllib.parse
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import (
    AgentUnreachable,
    BadInput,
    KillFailed,
    WfcgError,
    error_for_exit_code,
    error_for_kind,
)

__all__ = [
    "DEFAULT_SOCKET",
    "LIVE_STATUSES",
    "AsyncClient",
    "AsyncRun",
    "Client",
    "KillPermission",
    "KillResult",
    "Run",
    "RunInfo",
]

#: Where the agent listens unless ``WFCG_SOCKET`` says otherwise (as for the CLI).
DEFAULT_SOCKET = "/run/wfcg/agent.sock"

#: Statuses of a run that may still have processes.
LIVE_STATUSES = frozenset({"initializing", "running", "stopping", "unkillable", "unknown"})

Duration = float | int | str
"""Seconds (``1.5``), or a duration as the CLI takes it (``"30s"``, ``"5m"``, ``"1h30m"``)."""


def _seconds_text(value: Duration) -> str:
    return value if isinstance(value, str) else f"{float(value):g}"


def _millis(value: float | None) -> int | None:
    return None if value is None else int(round(float(value) * 1000))


@dataclass(frozen=True)
class KillResult:
    """The result of a kill: the contract's ``success``, ``run_id``,
    ``killed_at``, ``cleanup_status`` and ``message``, the most used details,
    and everything the agent said in ``raw`` (see :meth:`to_dict`)."""

    #: Fields of the agent's kill result kept in ``raw`` only (checked against
    #: the API's schema by tests/it/schema.rs, as the fields below are).
    RAW_ONLY: ClassVar[tuple[str, ...]] = ("phases", "graces_expired", "max_wait_expired")

    success: bool
    run_id: str
    killed_at: str | None
    cleanup_status: dict[str, Any]
    message: str
    mode: str = ""
    already_ended: bool = False
    reason: str | None = None
    processes_killed: int = 0
    duration_ms: float = 0.0
    waited_ms: float = 0.0
    sections: builtins.list[dict[str, Any]] = field(default_factory=builtins.list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, metadata={"wire": False})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KillResult:
        return cls(
            success=bool(d.get("success")),
            run_id=str(d.get("run_id", "")),
            killed_at=d.get("killed_at"),
            cleanup_status=dict(d.get("cleanup_status") or {}),
            message=str(d.get("message", "")),
            mode=str(d.get("mode", "")),
            already_ended=bool(d.get("already_ended", False)),
            reason=d.get("reason"),
            processes_killed=int(d.get("processes_killed") or 0),
            duration_ms=float(d.get("duration_ms") or 0.0),
            waited_ms=float(d.get("waited_ms") or 0.0),
            sections=builtins.list(d.get("sections") or []),
            raw=dict(d),
        )

    def to_dict(self) -> dict[str, Any]:
        """The whole answer as a dict: the contract's keys first, then the rest."""
        out: dict[str, Any] = {
            "success": self.success,
            "run_id": self.run_id,
            "killed_at": self.killed_at,
            "cleanup_status": dict(self.cleanup_status),
            "message": self.message,
        }
        for k, v in self.raw.items():
            out.setdefault(k, v)
        return out


@dataclass(frozen=True)
class RunInfo:
    """A run as ``wfcg status`` shows it; every field the agent sent is in ``raw``."""

    #: Fields of the agent's run kept in ``raw`` only (checked against the
    #: API's schema by tests/it/schema.rs, as the fields below are).
    RAW_ONLY: ClassVar[tuple[str, ...]] = ("age_secs", "command", "cgroup")

    run_id: str
    status: str
    workflow: str | None = None
    owner_uid: int = 0
    owner: str | None = None
    pid: int | None = None
    processes: int = 0
    started_at: str | None = None
    ended_at: str | None = None
    workspace: str | None = None
    last_heartbeat: str | None = None
    status_text: str | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    stuck: str | None = None
    #: Critical sections open right now (``status`` only; ``list`` does not scan).
    sections: builtins.list[dict[str, Any]] = field(default_factory=builtins.list)
    kill_result: KillResult | None = None
    #: How an ended run ended, in words (the kill's reason, or its exit).
    end_reason: str | None = None
    #: Its lease (``run(..., lease=...)``): the duration in milliseconds, the
    #: last renewal and when it runs out (RFC 3339); ``None`` without a lease.
    lease_ms: int | None = None
    lease_renewed_at: str | None = None
    lease_expires_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, metadata={"wire": False})

    @property
    def live(self) -> bool:
        """Whether the run may still have processes."""
        return self.status in LIVE_STATUSES

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunInfo:
        kill = d.get("kill_result")
        return cls(
            run_id=str(d["run_id"]),
            status=str(d["status"]),
            workflow=d.get("workflow"),
            owner_uid=int(d.get("owner_uid") or 0),
            owner=d.get("owner"),
            pid=d.get("pid"),
            processes=int(d.get("processes") or 0),
            started_at=d.get("started_at"),
            ended_at=d.get("ended_at"),
            workspace=d.get("workspace"),
            last_heartbeat=d.get("last_heartbeat"),
            status_text=d.get("status_text"),
            exit_code=d.get("exit_code"),
            exit_signal=d.get("exit_signal"),
            stuck=d.get("stuck"),
            sections=builtins.list(d.get("sections") or []),
            kill_result=KillResult.from_dict(kill) if kill else None,
            end_reason=d.get("end_reason"),
            lease_ms=d.get("lease_ms"),
            lease_renewed_at=d.get("lease_renewed_at"),
            lease_expires_at=d.get("lease_expires_at"),
            raw=dict(d),
        )


@dataclass(frozen=True)
class KillPermission:
    """The agent's answer to "may this user kill this run?"."""

    #: Its name in the agent's API (the schema tests/it/schema.rs checks it against).
    WIRE_NAME: ClassVar[str] = "MayKill"

    allowed: bool
    permission: str | None
    message: str
    run_id: str
    uid: int
    user: str | None
    mode: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KillPermission:
        return cls(
            allowed=bool(d["allowed"]),
            permission=d.get("permission"),
            message=str(d.get("message", "")),
            run_id=str(d.get("run_id", "")),
            uid=int(d.get("uid", -1)),
            user=d.get("user"),
            mode=str(d.get("mode", "")),
        )


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket (``http.client`` with a different ``connect``)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("wfcg", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """A blocking client of the agent.

    ``socket``: the agent's socket (``WFCG_SOCKET``, else ``/run/wfcg/agent.sock``).
    ``binary``: the ``wfcg`` program :meth:`run` starts (``WFCG_BIN``, else
    ``wfcg`` on ``PATH``). ``timeout``: seconds to wait for an answer; a kill
    may wait for critical sections (60 s at most by default) before it answers.
    The agent acts with the permissions of the user this process runs as.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        timeout: float | None = 300.0,
    ) -> None:
        self.socket = os.fspath(socket or os.environ.get("WFCG_SOCKET") or DEFAULT_SOCKET)
        self._binary = os.fspath(binary) if binary else None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Client(socket={self.socket!r})"

    # -- transport ---------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        conn = _UnixConnection(self.socket, self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json", "Connection": "close"}
            try:
                conn.request(method, path, body=payload, headers=headers)
            except (FileNotFoundError, ConnectionRefusedError, PermissionError) as e:
                raise AgentUnreachable(
                    f"no wfcg agent answers on {self.socket}: {e.strerror or e}"
                ) from e
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
        except (ConnectionError, http.client.HTTPException) as e:
            raise WfcgError(f"the agent on {self.socket} broke off the answer: {e}") from e
        finally:
            conn.close()
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            answer = None
        if 200 <= status < 300:
            if answer is None and data:
                raise WfcgError(f"bad answer from the agent: {data[:200]!r}")
            return answer
        if isinstance(answer, dict) and "error" in answer:
            message = str(answer["error"])
            if message == "no such API route":
                raise WfcgError(
                    f"the agent on {self.socket} has no {method} {path.split('?')[0]}"
                    " (an older wfcg?)"
                )
            raise error_for_kind(answer.get("kind"), message)
        text = data.decode(errors="replace").strip()
        raise (BadInput if status == 400 else WfcgError)(f"HTTP {status}: {text}")

    @staticmethod
    def _run_path(run_id: str, suffix: str = "") -> str:
        if not isinstance(run_id, str) or not run_id:
            raise BadInput(f"run id must be a non-empty string, not {run_id!r}")
        return f"/v1/runs/{urllib.parse.quote(run_id, safe='')}{suffix}"

    # -- reading -----------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The agent's ``{"ok", "pid", "version"}``; raises :class:`AgentUnreachable`."""
        return dict(self._request("GET", "/v1/health"))

    def status(self, run_id: str) -> RunInfo:
        """One run, with the critical sections it has open now."""
        return RunInfo.from_dict(self._request("GET", self._run_path(run_id)))

    def list(self, all: bool = False, stuck: bool = False) -> builtins.list[RunInfo]:
        """The runs the caller may see: live ones, or all with ``all``; only
        those counted as stuck with ``stuck``."""
        query = urllib.parse.urlencode({"all": str(all).lower(), "stuck": str(stuck).lower()})
        return [RunInfo.from_dict(r) for r in self._request("GET", f"/v1/runs?{query}")]

    def audit(
        self,
        *,
        run_id: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Audit records (all with view_all, else the caller's own), newest last.
        ``since``: only records of the last so many seconds."""
        params: dict[str, str] = {}
        if run_id is not None:
            params["run"] = run_id
        if actor is not None:
            params["actor"] = actor
        if since is not None:
            params["since_secs"] = str(int(since))
        if limit is not None:
            params["limit"] = str(int(limit))
        query = urllib.parse.urlencode(params)
        return builtins.list(self._request("GET", "/v1/audit" + (f"?{query}" if query else "")))

    def audit_verify(self) -> dict[str, Any]:
        """Recomputes the audit chain (needs view_all): ``{"records", "intact", ...}``."""
        return dict(self._request("GET", "/v1/audit/verify"))

    def may_kill(
        self,
        run_id: str,
        *,
        uid: int | None = None,
        force: bool = False,
        emergency: bool = False,
    ) -> KillPermission:
        """Whether ``uid`` (this process's user when ``None``) may kill the run,
        decided as a kill would be; nothing is done to the run. Asking about
        another user needs view_all. The question is audited (``permission_query``)."""
        params = {"force": str(force).lower(), "emergency": str(emergency).lower()}
        if uid is not None:
            params["uid"] = str(int(uid))
        path = self._run_path(run_id, "/may-kill?" + urllib.parse.urlencode(params))
        return KillPermission.from_dict(self._request("GET", path))

    # -- acting ------------------------------------------------------------

    def kill(
        self,
        run_id: str,
        *,
        force: bool = False,
        grace: float | None = None,
        reason: str | None = None,
        emergency: bool = False,
        grace_git: float | None = None,
        grace_db: float | None = None,
        grace_files: float | None = None,
        max_wait: float | None = None,
        check: bool = True,
    ) -> KillResult:
        """Kills a run (the graceful sequence, or at once with ``force``) and
        returns the result once the run is gone. Durations are in seconds.

        Raises :class:`NoSuchRun`, :class:`NotPermitted`, :class:`BadInput`,
        :class:`AgentUnreachable`; and :class:`KillFailed` when processes
        survived (unless ``check=False``, which returns the result instead).
        Killing a run that has ended succeeds with ``already_ended``.
        """
        body: dict[str, Any] = {"force": force, "emergency": emergency}
        for key, value in (
            ("grace_ms", grace),
            ("grace_git_ms", grace_git),
            ("grace_db_ms", grace_db),
            ("grace_files_ms", grace_files),
            ("max_wait_ms", max_wait),
        ):
            if value is not None:
                body[key] = _millis(value)
        if reason is not None:
            body["reason"] = reason
        result = KillResult.from_dict(self._request("POST", self._run_path(run_id, "/kill"), body))
        if check and not result.success:
            raise KillFailed(result.message, result)
        return result

    def renew_lease(self, run_id: str) -> dict[str, Any]:
        """Renews the lease of a run started with ``lease=``: it now runs out a
        full lease from now. Returns ``{"run_id", "lease_ms", "renewed_at",
        "expires_at"}``. Allowed to the run's owner and to users with kill_any.
        Raises :class:`NoSuchRun`, :class:`NotPermitted`, and :class:`BadInput`
        (HTTP 409) when the run has no lease, has ended or is being killed."""
        return dict(self._request("POST", self._run_path(run_id, "/lease"), {}))

    def adopt(
        self,
        pid: int,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        reason: str | None = None,
        markers: Sequence[str] | None = None,
        dry_run: bool = False,
        kill: bool = False,
    ) -> dict[str, Any]:
        """Moves a running process tree that is not a run yet (``pid`` and its
        descendants, and escapees carrying one of ``markers``, ``"VAR=VALUE"``)
        into a new run, which can then be watched and killed like any other.
        ``dry_run`` only says what would be taken; ``kill`` kills it once adopted."""
        body: dict[str, Any] = {"pid": int(pid), "dry_run": dry_run, "kill": kill}
        if run_id is not None:
            body["run_id"] = run_id
        if workflow is not None:
            body["workflow"] = workflow
        if reason is not None:
            body["reason"] = reason
        if markers is not None:
            body["markers"] = builtins.list(markers)
        return dict(self._request("POST", "/v1/runs/adopt", body))

    def binary(self) -> str:
        """The ``wfcg`` program :meth:`run` uses."""
        found = self._binary or os.environ.get("WFCG_BIN") or shutil.which("wfcg")
        if not found:
            raise WfcgError("no wfcg program: pass binary=, set WFCG_BIN, or put wfcg on PATH")
        return found

    def run(
        self,
        command: Sequence[str],
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        workspace: str | os.PathLike[str] | None = None,
        init_timeout: Duration | None = None,
        timeout: Duration | None = None,
        watchdog: Duration | None = None,
        ready_when: str | Sequence[str] | None = None,
        stall_timeout: Duration | None = None,
        output_timeout: Duration | None = None,
        env: Mapping[str, str] | None = None,
        template: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        lease: Duration | None = None,
    ) -> Run:
        """Starts ``command`` as a detached run (``wfcg run --detach``) and returns
        it at once. The command gets this process's environment plus ``env``;
        its output goes to the run's log. Durations are seconds or ``"5m"``-style
        text; ``0`` means none. A run that does not send READY=1 (see
        :mod:`wfcg.notify`), or meet a ``ready_when`` condition (``"output"``,
        ``"log:REGEX"``, ``"file:PATH"``, ``"port:N"``; one or a list), within
        ``init_timeout`` is killed as stuck; so is one that makes no progress for
        ``stall_timeout`` or writes nothing within ``output_timeout``. A
        workflow whose circuit breaker is open raises :class:`BreakerOpen`.
        With ``lease`` (at least 1 s, at most 30 days) the run is killed when
        nobody renews it (:meth:`renew_lease`) for that long."""
        if isinstance(command, (str, bytes)) or not command:
            raise BadInput("command must be a non-empty list of arguments")
        args = [self.binary(), "run", "--detach"]
        for flag, value in (
            ("--run-id", run_id),
            ("--workflow", workflow),
            ("--workspace", os.fspath(workspace) if workspace is not None else None),
            ("--template", os.fspath(template) if template is not None else None),
            ("--init-timeout", _seconds_text(init_timeout) if init_timeout is not None else None),
            ("--timeout", _seconds_text(timeout) if timeout is not None else None),
            ("--watchdog", _seconds_text(watchdog) if watchdog is not None else None),
            (
                "--stall-timeout",
                _seconds_text(stall_timeout) if stall_timeout is not None else None,
            ),
            (
                "--output-timeout",
                _seconds_text(output_timeout) if output_timeout is not None else None,
            ),
            ("--lease", _seconds_text(lease) if lease is not None else None),
        ):
            if value is not None:
                args += [flag, value]
        conditions = [ready_when] if isinstance(ready_when, str) else list(ready_when or [])
        for cond in conditions:
            args += ["--ready-when", cond]
        args += ["--", *(os.fspath(a) for a in command)]
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["WFCG_SOCKET"] = self.socket
        proc = subprocess.run(
            args,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            message = proc.stderr.strip() or f"wfcg run exited with status {proc.returncode}"
            raise error_for_exit_code(proc.returncode, message)
        for line in proc.stderr.splitlines():
            if line.startswith("wfcg: warning: "):
                warnings.warn(line.removeprefix("wfcg: "), RuntimeWarning, stacklevel=2)
        lines = proc.stdout.split()
        if not lines:
            raise WfcgError(f"wfcg run --detach printed no run id: {proc.stderr.strip()}")
        return Run(self, lines[-1])


class Run:
    """A run started by :meth:`Client.run` (or named by id with ``Run(client, id)``)."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.id = run_id

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def status(self) -> RunInfo:
        return self.client.status(self.id)

    def kill(self, **kwargs: Any) -> KillResult:
        """:meth:`Client.kill` of this run (same keyword arguments)."""
        return self.client.kill(self.id, **kwargs)

    def renew_lease(self) -> dict[str, Any]:
        """:meth:`Client.renew_lease` of this run."""
        return self.client.renew_lease(self.id)

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> RunInfo:
        """Waits until the run has ended (exited, killed, timed out, ...) and
        returns how; raises :class:`TimeoutError` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.status()
            if not info.live:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.id} still {info.status} after {timeout} s")
            time.sleep(interval)


class AsyncClient:
    """The asyncio face of :class:`Client` (same arguments and methods, awaited).
    Each call runs the blocking one in a worker thread (``asyncio.to_thread``)."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        timeout: float | None = 300.0,
    ) -> None:
        self.sync = Client(socket, binary=binary, timeout=timeout)

    @property
    def socket(self) -> str:
        return self.sync.socket

    def __repr__(self) -> str:
        return f"AsyncClient(socket={self.socket!r})"

    async def health(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.health)

    async def status(self, run_id: str) -> RunInfo:
        return await asyncio.to_thread(self.sync.status, run_id)

    async def list(self, all: bool = False, stuck: bool = False) -> builtins.list[RunInfo]:
        return await asyncio.to_thread(self.sync.list, all, stuck)

    async def audit(self, **kwargs: Any) -> builtins.list[dict[str, Any]]:
        return await asyncio.to_thread(lambda: self.sync.audit(**kwargs))

    async def audit_verify(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.audit_verify)

    async def may_kill(self, run_id: str, **kwargs: Any) -> KillPermission:
        return await asyncio.to_thread(lambda: self.sync.may_kill(run_id, **kwargs))

    async def kill(self, run_id: str, **kwargs: Any) -> KillResult:
        return await asyncio.to_thread(lambda: self.sync.kill(run_id, **kwargs))

    async def renew_lease(self, run_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.renew_lease, run_id)

    async def adopt(self, pid: int, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(lambda: self.sync.adopt(pid, **kwargs))

    async def run(self, command: Sequence[str], **kwargs: Any) -> AsyncRun:
        run = await asyncio.to_thread(lambda: self.sync.run(command, **kwargs))
        return AsyncRun(self, run.id)


class AsyncRun:
    """A run, for asyncio code (see :class:`Run`)."""

    def __init__(self, client: AsyncClient, run_id: str) -> None:
        self.client = client
        self.id = run_id

    def __repr__(self) -> str:
        return f"AsyncRun({self.id!r})"

    async def status(self) -> RunInfo:
        return await self.client.status(self.id)

    async def kill(self, **kwargs: Any) -> KillResult:
        return await self.client.kill(self.id, **kwargs)

    async def renew_lease(self) -> dict[str, Any]:
        return await self.client.renew_lease(self.id)

    async def wait(self, timeout: float | None = None, interval: float = 0.1) -> RunInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = await self.status()
            if not info.live:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.id} still {info.status} after {timeout} s")
            await asyncio.sleep(interval)
