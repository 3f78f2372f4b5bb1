"""Wake-up calls to the runner: a datagram on a UNIX socket in the run directory.

Enqueuers call ``poke(run_dir)`` after committing new rows (Postfix's
pickup -> qmgr fifo); the runner binds ``PokeSocket`` and includes it in its
select loop, so new mail leaves within a second instead of at the next
scheduled scan.  A poke carries no data and may be lost: the runner also
wakes for the next due row, so a lost poke only delays, never drops mail.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

SOCKET_NAME = "poke.sock"


def poke(run_dir: str | os.PathLike) -> bool:
    """Nudge the runner of ``run_dir``; False when none is listening."""
    path = Path(run_dir) / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(b"!", str(path))
        except BlockingIOError:
            return True  # the runner's socket is full of pokes: it is awake
        except OSError:
            return False
    return True


class PokeSocket:
    """The runner's end: bound in the run directory, non-blocking."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / SOCKET_NAME
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> int:
        """Read every pending poke; returns how many there were."""
        count = 0
        while True:
            try:
                self.sock.recv(64)
            except BlockingIOError:
                return count
            count += 1

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
