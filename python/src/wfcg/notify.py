"""sd_notify from code running inside a run: readiness, heartbeats, status text.

Every run gets ``NOTIFY_SOCKET`` (a datagram socket of its own); the agent takes
``READY=1`` (the run leaves ``initializing``), ``WATCHDOG=1`` (a heartbeat),
``STATUS=...``, ``STOPPING=1`` and ``EXTEND_TIMEOUT_USEC=...``. Outside a run
(no ``NOTIFY_SOCKET``) each function does nothing, warns, and returns False.

    from wfcg import notify
    notify.status("cloning repo")
    notify.ready()
    while work():
        notify.heartbeat()
"""

from __future__ import annotations

import os
import socket
import warnings

__all__ = ["send", "ready", "heartbeat", "status", "stopping", "extend_timeout"]


def send(*assignments: str) -> bool:
    """Sends ``KEY=VALUE`` lines in one datagram to ``NOTIFY_SOCKET``; whether
    it was sent. Raises ``OSError`` when the socket is set but cannot be reached."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        warnings.warn(
            "wfcg.notify: NOTIFY_SOCKET is not set (not inside a run); nothing sent",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    payload = "\n".join(assignments).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(payload, address)
    return True


def ready() -> bool:
    """The run is initialized: ``READY=1`` (``initializing`` → ``running``)."""
    return send("READY=1")


def heartbeat() -> bool:
    """A heartbeat for the run's watchdog: ``WATCHDOG=1``."""
    return send("WATCHDOG=1")


def status(text: str) -> bool:
    """What the run is doing, shown by ``wfcg status``, ``ps`` and ``top``: ``STATUS=text``."""
    return send("STATUS=" + " ".join(text.splitlines()))


def stopping() -> bool:
    """The run is shutting down by itself: ``STOPPING=1``."""
    return send("STOPPING=1")


def extend_timeout(seconds: float) -> bool:
    """Moves the current deadline ``seconds`` from now: ``EXTEND_TIMEOUT_USEC``."""
    return send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")
