"""The runner's lockfile: one queue runner per run directory.

``RunLock.acquire()`` opens RUN_DIR/spoold.pid, takes an exclusive
``fcntl.flock`` without waiting and writes its PID there.  The kernel drops
the lock when its holder dies, however it dies, so a file left behind by a
killed runner is simply taken over (the previous PID is reported, and psutil
confirms it is gone).  When the lock is held, AlreadyRunning names the PID
that holds it.  The descriptor is close-on-exec, so sender children never
inherit (and never prolong) the lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import psutil

from spoold.errors import AlreadyRunning, SpooldError

LOCK_NAME = "spoold.pid"


def read_pid(run_dir: str | os.PathLike) -> int | None:
    """The PID recorded in the lockfile, if any."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running_pid(run_dir: str | os.PathLike) -> int | None:
    """The PID of the live runner holding the lock of ``run_dir``, or None."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = read_pid(run_dir)
        return pid if pid and psutil.pid_exists(pid) else None
    finally:
        os.close(fd)
    return None


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.previous_pid: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpooldError(f"{self.path}: cannot open lockfile: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = read_pid(self.path.parent)
            raise AlreadyRunning(f"already running (pid {pid})") from None
        previous = read_pid(self.path.parent)
        if previous and previous != os.getpid() and not psutil.pid_exists(previous):
            self.previous_pid = previous
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None
