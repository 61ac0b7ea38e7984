"""Fixtures for the client's tests: a real agent of each test's own (its own
socket, state directory and cgroup root under the cgroup2 mount), the ``wfcg``
binary under test (``WFCG_BIN``), and the unprivileged test user
(``WFCG_TEST_USER``). The Rust test ``tests/it/python.rs`` runs this suite with
all of them set; without root, cgroup2 or ``WFCG_BIN`` the tests fail, saying why.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import wfcg

T = TypeVar("T")
_counter = itertools.count()


def wait_until(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Polls ``cond`` every 10 ms until it returns something true; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def cgroup2_mount() -> Path:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return Path(left.split()[4])
    pytest.fail("no cgroup2 mount in /proc/self/mountinfo: these tests need cgroup2")


def _state_and_start(pid: str) -> tuple[str, int]:
    """A process's state letter and start time (clock ticks after boot)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return fields[0], int(fields[19])


#: When this test process started: a process that carries a value made by a test
#: (a marker, a run id) was started after it.
_SESSION_START = _state_and_start("self")[1]


def pids_with_env(key: str, value: str) -> list[int]:
    """Live processes anywhere on the host whose environment holds ``key=value``
    (a value this test session made: processes older than the session are not read)."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            # /proc/PID/stat is cheap to read, environ is not (on a host with
            # thousands of processes): only new, live processes are looked into.
            state, start = _state_and_start(entry)
            if state == "Z" or start < _SESSION_START:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            found.append(int(entry))
    return found


def _kill_cgroup_tree(root: Path) -> None:
    """cgroup.kill on ``root`` (reaching every run below it), then removes the
    directories bottom-up."""
    if not root.exists():
        return
    try:
        (root / "cgroup.kill").write_text("1")
    except OSError:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if "populated 0" in (root / "cgroup.events").read_text():
                break
        except OSError:
            break
        time.sleep(0.01)
    for dirpath, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
        for _ in range(100):  # EBUSY while the last tasks are reaped
            try:
                os.rmdir(dirpath)
                break
            except OSError as e:
                if e.errno == errno.ENOENT:
                    break
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.01)


def _detach_mounts(root: Path) -> None:
    """Detaches (``umount -l``) every mount at or below ``root``, deepest first:
    the runs' TMPDIRs are tmpfs mounts below the state directory, and an agent
    killed with SIGKILL leaves them."""
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


class Agent:
    """``wfcg agent`` with its own socket, state directory and cgroup root."""

    def __init__(
        self, binary: str, policy: str | None = None, templates: dict[str, str] | None = None
    ) -> None:
        """``templates``: the operator's templates (name to TOML text), in a
        directory of the agent's own (``WFCG_TEMPLATES_DIR``)."""
        self.binary = binary
        # World-traversable, as /run/wfcg is: the test user connects to the socket.
        self.dir = Path(tempfile.mkdtemp(prefix="wfcg-pytest"))
        self.dir.chmod(0o755)
        self.socket = self.dir / "agent.sock"
        self.state_dir = self.dir / "state"
        self.policy = self.dir / "policy.toml"
        if policy is not None:
            self.policy.write_text(policy)
        self.cgroup_root = cgroup2_mount() / f"wfcg-pytest-{os.getpid()}-{next(_counter)}"
        self.env = {
            "WFCG_SOCKET": str(self.socket),
            "WFCG_STATE_DIR": str(self.state_dir),
            "WFCG_CGROUP_ROOT": str(self.cgroup_root),
            "WFCG_POLICY": str(self.policy),
        }
        if templates:
            (self.dir / "templates").mkdir()
            for name, text in templates.items():
                (self.dir / "templates" / f"{name}.toml").write_text(text)
            self.env["WFCG_TEMPLATES_DIR"] = str(self.dir / "templates")
        self.log_path = self.dir / "agent.log"
        self._start()

    def _start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "agent"],
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_answers()

    def wait_answers(self) -> None:
        client = self.client()

        def answers() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"wfcg agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                client.health()
                return True
            except wfcg.AgentUnreachable:
                return False

        wait_until(answers, 10, "the agent to answer")

    def restart(self) -> None:
        """Stops the agent (SIGTERM; its runs go on) and starts it again on the
        same socket, state directory and cgroup root."""
        self.proc.terminate()
        self.proc.wait(30)
        self._start()

    def client(self) -> wfcg.Client:
        return wfcg.Client(self.socket, binary=self.binary)

    def async_client(self) -> wfcg.AsyncClient:
        return wfcg.AsyncClient(self.socket, binary=self.binary)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sql(self, query: str) -> str:
        """One query through the sqlite3 CLI, as an operator would read the store."""
        out = subprocess.run(
            ["sqlite3", "-json", str(self.state_dir / "wfcg.db"), query],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        _kill_cgroup_tree(self.cgroup_root)
        _detach_mounts(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The tests run the installed package (as executors would): it must be this
    checkout's, not one installed before python/src changed."""
    src = Path(__file__).resolve().parent.parent / "src" / "wfcg"
    installed = Path(wfcg.__file__).resolve().parent
    if installed == src:
        return
    stale = sorted(
        f.name
        for f in src.glob("*.py")
        if not (installed / f.name).is_file()
        or (installed / f.name).read_bytes() != f.read_bytes()
    )
    if stale:
        pytest.exit(
            f"the installed wfcg package ({installed}) differs from python/src in {stale}: "
            f"reinstall it with `{sys.executable} -m pip install ./python`",
            returncode=3,
        )


@pytest.fixture(scope="session")
def binary() -> str:
    path = os.environ.get("WFCG_BIN")
    if not path:
        pytest.fail(
            "WFCG_BIN is not set: these tests run the wfcg binary under test "
            "(cargo nextest runs them through tests/it/python.rs, which sets it)"
        )
    if os.geteuid() != 0:
        pytest.fail("these tests need root (the agent creates cgroups and moves processes)")
    return path


@pytest.fixture
def agent(binary: str, marker: str) -> Iterator[Agent]:
    # After `marker`, so it stops (killing its runs) before the marker is checked.
    a = Agent(binary)
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def marker(request: pytest.FixtureRequest) -> Iterator[str]:
    """A value for ``WFCG_TEST_MARK`` in a test's runs; at the end no process
    on the host may carry it."""
    value = f"pytest-{request.node.name}-{os.getpid()}-{next(_counter)}"
    yield value
    left = pids_with_env("WFCG_TEST_MARK", value)
    assert not left, f"processes of the test's runs are left: {left}"


class OtherUser:
    """The unprivileged user the Rust side created (``tests/it/util.rs`` OtherUser)."""

    def __init__(self, name: str, uid: int, gid: int) -> None:
        self.name, self.uid, self.gid = name, uid, gid

    def call(self, fn: Callable[[], T]) -> T | BaseException:
        """Runs ``fn`` in a forked child with this user's uid and gid (no
        supplementary groups); its return value, or the exception it raised."""
        import pickle

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop privileges, call, report, exit
            os.close(r)
            try:
                os.setgroups([])
                os.setgid(self.gid)
                os.setuid(self.uid)
                try:
                    out: Any = fn()
                except BaseException as e:  # reported to the parent
                    out = e
                data = pickle.dumps(out)
            except BaseException as e:
                data = pickle.dumps(RuntimeError(f"in the child: {e!r}"))
            with os.fdopen(w, "wb") as f:
                f.write(data)
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        return pickle.loads(data)  # noqa: S301 (our own child's answer)


@pytest.fixture(scope="session")
def test_user() -> OtherUser:
    name = os.environ.get("WFCG_TEST_USER")
    if not name:
        pytest.fail("WFCG_TEST_USER is not set (tests/it/python.rs creates the user and sets it)")
    import pwd

    pw = pwd.getpwnam(name)
    return OtherUser(name, pw.pw_uid, pw.pw_gid)
