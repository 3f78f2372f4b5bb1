"""Process bookkeeping for the benchmark: start, stop by PID, CPU and memory.

Every process the benchmark starts goes through ``Procs.start`` so that
``Procs.stop_all`` can end it by PID, and nothing outlives a run.  CPU is
read with psutil for a whole process tree: the process itself, the children
it has already reaped (counted in its ``children_*`` times) and the ones
still alive, so a daemon's short-lived workers are not missed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil


class Procs:
    def __init__(self) -> None:
        self.pids: list[int] = []
        self._popen: list[subprocess.Popen[Any]] = []

    def start(self, argv: Sequence[str], log: Path | None = None, **kwargs: Any
              ) -> subprocess.Popen[Any]:
        """``argv`` with its output in ``log`` (or ``kwargs``' stdout), stopped at the end."""
        output = open(log, "ab") if log else contextlib.nullcontext(subprocess.DEVNULL)
        with output as out:
            options = {"stdout": out, "stderr": subprocess.STDOUT, **kwargs}
            proc = subprocess.Popen(list(argv), **options)
        self.adopt(proc.pid)
        self._popen.append(proc)
        return proc

    def adopt(self, pid: int) -> None:
        """Also stop this PID at the end (a daemon that detached itself)."""
        self.pids.append(pid)

    def stop(self, pid: int, timeout: float = 30.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        _wait_gone(pid, timeout)
        if pid in self.pids:
            self.pids.remove(pid)

    def stop_all(self) -> None:
        for pid in reversed(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in list(self.pids):
            _wait_gone(pid, 10.0)
        self.pids.clear()


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def tree_cpu(pid: int) -> float:
    """User+system seconds of a process, its reaped children and its live descendants."""
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                own = child.cpu_times()
                total += own.user + own.system
        return total
    except psutil.NoSuchProcess:
        return 0.0


def peak_rss_mb(pid: int) -> float:
    """The high-water mark of a process's resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_pss_mb(pid: int) -> tuple[int, float]:
    """How many live children a process has, and their mean proportional set size (MB)."""
    sizes = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            sizes.append(child.memory_full_info().pss / 2**20)
    return len(sizes), (sum(sizes) / len(sizes) if sizes else 0.0)
