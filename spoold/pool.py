"""Sender children: their birth, their pipes and their death (Postfix master_spawn).

``Pool.spawn()`` starts ``python -m sender`` with posix_spawn, a pipe on its
stdin and one on its stdout (both non-blocking on our side), and queues the
sender configuration as its first line.  The runner puts the pipes in its
select loop; ``Child.feed()`` writes what is pending, ``Child.read_lines()``
returns the complete lines the child wrote.  ``Pool.reap()`` collects exited
children with waitpid(-1, WNOHANG) and decodes their status; pids that are
not ours are ignored.  How many children may live, and which one gets which
job, is the runner's decision (runner.py), not this module's.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field

from sender.protocol import SenderConfig, encode_config
from spoold.store import QueueRow


@dataclass
class Child:
    pid: int
    stdin: int
    stdout: int
    started_at: float
    uses: int = 0
    domain: str | None = None  # destination of the job in hand, None when idle
    pending: dict[int, QueueRow] = field(default_factory=dict)  # sent, not yet answered
    last_heard: float = 0.0
    retiring: bool = False  # serve no further job (max_use reached, config reloaded)
    closed: bool = False  # its pipes are closed: it is dead or on its way out
    outbuf: bytearray = field(default_factory=bytearray)
    inbuf: bytearray = field(default_factory=bytearray)

    @property
    def busy(self) -> bool:
        return self.domain is not None

    def feed(self) -> None:
        """Write as much pending input as the pipe takes."""
        while self.outbuf:
            try:
                written = os.write(self.stdin, self.outbuf)
            except BlockingIOError:
                return
            except BrokenPipeError:
                self.outbuf.clear()
                return
            del self.outbuf[:written]

    def read_lines(self) -> tuple[list[bytes], bool]:
        """Complete lines available now, and whether the child closed its stdout."""
        eof = False
        while True:
            try:
                chunk = os.read(self.stdout, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            self.inbuf += chunk
        *lines, rest = self.inbuf.split(b"\n")
        self.inbuf = bytearray(rest)
        return lines, eof

    def close_stdin(self) -> None:
        """EOF on stdin: the child exits after its current job."""
        if self.stdin >= 0:
            os.close(self.stdin)
            self.stdin = -1

    def close(self) -> None:
        self.close_stdin()
        if self.stdout >= 0:
            os.close(self.stdout)
            self.stdout = -1
        self.closed = True

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass  # already gone; the reaper will see it


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    if os.WIFEXITED(status):
        return f"exit {os.WEXITSTATUS(status)}"
    return f"status {status}"


class Pool:
    """The live sender children, by pid."""

    def __init__(self, config: SenderConfig, python: str = sys.executable):
        self.config = config
        self.python = python
        self.children: dict[int, Child] = {}
        self._idle: list[Child] = []
        self._busy: dict[int, Child] = {}

    def __len__(self) -> int:
        return len(self.children)

    def spawn(self) -> Child:
        child_in, to_child = os.pipe()
        from_child, child_out = os.pipe()
        try:
            pid = os.posix_spawn(self.python, [self.python, "-m", "sender"], os.environ,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, child_in, 0),
                                               (os.POSIX_SPAWN_DUP2, child_out, 1)])
        except OSError:
            for fd in (child_in, to_child, from_child, child_out):
                os.close(fd)
            raise
        os.close(child_in)
        os.close(child_out)
        os.set_blocking(to_child, False)
        os.set_blocking(from_child, False)
        now = time.monotonic()
        child = Child(pid, to_child, from_child, started_at=now, last_heard=now)
        child.outbuf += encode_config(self.config)
        self.children[pid] = child
        return child

    def idle(self) -> Child | None:
        """An idle child fit for another job (the most recently used: its caches are warm)."""
        while self._idle:
            child = self._idle.pop()
            if not child.busy and not child.retiring and not child.closed:
                return child
        return None

    def busy(self) -> list[Child]:
        return list(self._busy.values())

    def busy_count(self) -> int:
        return len(self._busy)

    def assign(self, child: Child, domain: str) -> None:
        child.domain = domain
        self._busy[child.pid] = child

    def unassign(self, child: Child) -> None:
        """The child's job is over (done, or the child is lost)."""
        child.domain = None
        self._busy.pop(child.pid, None)
        if not child.retiring and not child.closed:
            self._idle.append(child)

    def reap(self) -> list[tuple[Child, int]]:
        """Children that have exited since the last call, with their wait status."""
        gone = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self.children.pop(pid, None)
            if child is not None:
                gone.append((child, status))
        return gone
