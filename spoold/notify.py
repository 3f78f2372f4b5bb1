"""The runner's messages to its service manager: sd_notify(3) readiness and watchdog.

Under systemd with ``Type=notify`` (systemd/spoold.service) the runner says
``READY=1`` once it holds its lock and may start children, ``WATCHDOG=1``
from its main loop every half ``WatchdogSec=``, ``STOPPING=1`` on SIGTERM,
``RELOADING=1`` ... ``READY=1`` around a SIGHUP reload, and ``STATUS=`` lines
with its figures.  The loop itself sends the pings, so a loop stuck in a
database call or a bug stops them and systemd restarts the runner (its rows
come back when their leases run out).

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket in
$NOTIFY_SOCKET (a path, or ``@name`` in the abstract namespace).  systemd
documents it as the stable interface and publishes a standalone
implementation to copy rather than link libsystemd for it; this is that, in
Python.  (The PyPI bindings either compile against libsystemd or lack
STOPPING=1 and time their pings by the wall clock: see docs/OPERATIONS.md.)
Without $NOTIFY_SOCKET every call does nothing, so the runner behaves the
same outside systemd.  The variables are removed from the environment once
read, so that no child takes the messages for its own.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from spoold.log import get_logger

_SEND_TIMEOUT = 1.0
_STATUS_EVERY = 1.0


class ServiceNotifier:
    """The runner's end of sd_notify; a no-op when not started by a service manager."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", "")
        usec = env.pop("WATCHDOG_USEC", "")
        watchdog_pid = env.pop("WATCHDOG_PID", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.settimeout(_SEND_TIMEOUT)
        ours = not watchdog_pid or watchdog_pid == str(os.getpid())
        # sd_watchdog_enabled(3): ping at half the interval the manager allows.
        self.ping_every = int(usec) / 2e6 if usec.isdigit() and int(usec) and ours else 0.0
        self.next_ping = 0.0
        self.next_status = 0.0
        self.last_status = ""
        self.failed = False

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; False if it could not go."""
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(assignments).encode() + b"\n", self.address)
        except OSError as exc:
            if not self.failed:  # once: a dead manager would otherwise fill the log
                get_logger().warning("notify_failed", socket=self.address.replace("\0", "@"),
                                     error=str(exc))
            self.failed = True
            return False
        self.failed = False
        return True

    def ready(self, status: str) -> None:
        self.last_status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def tick(self, now: float, status: Callable[[], str]) -> float:
        """From the main loop: ping the watchdog when due, update STATUS= if changed.

        Returns the monotonic time by which the loop must call again (the
        next ping; STATUS= waits for the loop's own next wake-up).
        """
        if self.sock is None:
            return float("inf")
        if self.ping_every and now >= self.next_ping:
            self.send("WATCHDOG=1")
            self.next_ping = now + self.ping_every
        if now >= self.next_status:
            text = status()
            if text != self.last_status:
                self.send(f"STATUS={text}")
                self.last_status = text
            self.next_status = now + _STATUS_EVERY
        return self.next_ping if self.ping_every else float("inf")
