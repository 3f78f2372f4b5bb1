"""Sender children: their birth, their pipes and their death (Postfix master_spawn).

``Pool.spawn(count)`` makes a pipe for each new sender child's stdin and one
for its stdout (both non-blocking on our side) and has sender.zygote fork
the children on them, with the runner's children.journal as their fd 3
(spoold/journal.py); then it queues the sender configuration as each
child's first line.  The first child is the caller's; the others join the
idle ones (a batch, when many destinations wait at once, costs one round
trip to the zygote).  The zygote is a fresh interpreter (an exec, started
by ``Pool.start()``) that has imported the sender's modules and never sees
the runner's settings or database: a child costs a fork of that small
process, not a Python start-up (190 ms of CPU each, measured by bench/),
and holds no copy of the database password, which a fork of the runner
itself would hand it.  The runner is a child subreaper (PR_SET_CHILD_SUBREAPER), so every child is
the runner's own: ``Pool.reap()`` collects exited children with
waitpid(-1, WNOHANG) and decodes their status; pids that are not ours are
ignored.  A zygote that died is started again at the next spawn, at most
once per ZYGOTE_RESTART seconds.  The runner puts the pipes in its select
loop; ``Child.feed()`` writes what is pending, ``Child.read_lines()``
returns the complete lines the child wrote.  How many children may live,
and which one gets which job, is the runner's decision (runner.py), not
this module's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace

from sender.lifeline import prctl
from sender.protocol import (JOURNAL_FD, ZYGOTE_BATCH, ZYGOTE_SPAWN, SenderConfig,
                             encode_config)
from spoold.log import get_logger
from spoold.store import QueueRow

ZYGOTE_RESTART = 1.0  # seconds between two starts of the zygote, at least
_ZYGOTE_WAIT = 30.0  # for an answer, the first one included (the zygote's start-up)
_PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Child:
    pid: int
    stdin: int
    stdout: int
    started_at: float
    uses: int = 0
    domain: str | None = None  # destination of the job in hand, None when idle
    last_domain: str | None = None  # destination of its last job
    kept: str | None = None  # "address:port" of the connection it keeps open, if any
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


class Zygote:
    """The runner's end of sender.zygote: one request for children at a time."""

    def __init__(self) -> None:
        prctl(_PR_SET_CHILD_SUBREAPER, 1)  # the zygote's grandchildren come to us
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.pid = os.posix_spawn(
                sys.executable, [sys.executable, "-m", "sender.zygote", str(os.getpid())],
                os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 0)])
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.socket = ours
        self.socket.settimeout(_ZYGOTE_WAIT)
        self.started_at = time.monotonic()

    def spawn(self, fds: list[int], count: int) -> list[int]:
        """The pids of up to ``count`` new children on ``fds`` (stdin, stdout per
        child[, journal]), in order: fewer if the zygote could fork no more.

        :raises OSError: no child: the zygote's own reason, or it is gone
            or out of step (then it is killed, and the pool starts another).
        """
        try:
            socket.send_fds(self.socket, [ZYGOTE_SPAWN], fds)
            answer = self.socket.recv(16 * ZYGOTE_BATCH)
        except OSError:
            self.kill()
            raise
        if answer.startswith(b"error: "):
            raise OSError(f"sender zygote: {answer[7:].decode(errors='replace')}")
        pids = answer.split()
        if not pids or len(pids) > count or not all(pid.isdigit() for pid in pids):
            self.kill()
            raise OSError(f"sender zygote: {'gone' if not answer else 'garbled answer'}")
        return [int(pid) for pid in pids]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.socket.close()

    def close(self) -> None:
        """EOF on its socket: it exits; reap it if nothing else has."""
        self.socket.close()
        deadline = time.monotonic() + 2.0
        with contextlib.suppress(ChildProcessError):
            while not os.waitpid(self.pid, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    break
                time.sleep(0.01)


class Pool:
    """The live sender children, by pid."""

    def __init__(self, config: SenderConfig, journal: int = -1):
        self.config = config
        self.journal = journal  # fd of children.journal, handed to every child as fd 3
        self.children: dict[int, Child] = {}
        self._idle: dict[int, Child] = {}  # in the order they became idle
        self._warm: dict[str, dict[int, Child]] = {}  # idle ones by their last destination
        self._near: dict[str, dict[int, Child]] = {}  # idle ones by their kept endpoint
        self._busy: dict[int, Child] = {}
        self.zygote: Zygote | None = None
        self._zygotes: set[int] = set()  # pids of zygotes started and not yet reaped
        self._zygote_due = 0.0  # not restarted before this (monotonic)

    def __len__(self) -> int:
        return len(self.children)

    def start(self) -> None:
        """Start the zygote now rather than at the first spawn: it takes a Python start-up."""
        if self.zygote is None and time.monotonic() >= self._zygote_due:
            self._zygote_due = time.monotonic() + ZYGOTE_RESTART
            self.zygote = Zygote()
            self._zygotes.add(self.zygote.pid)
            get_logger().info("zygote_start", pid=self.zygote.pid)

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
            self._zygotes.discard(self.zygote.pid)
            self.zygote = None

    def spawn(self, count: int = 1) -> list[Child]:
        """``count`` new children (ZYGOTE_BATCH at most; fewer if forks fail): the
        first for the caller's job, the others idle.  A batch costs the zygote one
        intermediate process, and the runner one round trip."""
        self.start()
        if self.zygote is None:
            raise OSError(f"sender zygote died; the next one starts within {ZYGOTE_RESTART} s")
        pipes = [(*os.pipe(), *os.pipe()) for _ in range(max(1, min(count, ZYGOTE_BATCH)))]
        theirs = [fd for child_in, _, _, child_out in pipes for fd in (child_in, child_out)]
        try:
            pids = self.zygote.spawn(theirs + ([self.journal] if self.journal >= 0 else []),
                                     len(pipes))
        except OSError as exc:
            if self.zygote.socket.fileno() < 0:  # gone or killed: the next spawn starts one
                get_logger().error("zygote_lost", pid=self.zygote.pid, error=str(exc))
                self.zygote = None
            pids = []
            raise
        finally:
            for fd in theirs:
                os.close(fd)
            for _, to_child, from_child, _ in pipes[len(pids):]:
                os.close(to_child)
                os.close(from_child)
        born = [self._born(pid, to_child, from_child)
                for pid, (_, to_child, from_child, _) in zip(pids, pipes)]
        for child in born[1:]:
            self.unassign(child)
        return born

    def _born(self, pid: int, to_child: int, from_child: int) -> Child:
        os.set_blocking(to_child, False)
        os.set_blocking(from_child, False)
        now = time.monotonic()
        child = Child(pid, to_child, from_child, started_at=now, last_heard=now)
        child.outbuf += encode_config(replace(
            self.config, journal_fd=JOURNAL_FD if self.journal >= 0 else -1))
        self.children[pid] = child
        return child

    def idle(self, domain: str, endpoints: list[str]) -> Child | None:
        """An idle child fit for a job to ``domain``, whose MX are at ``endpoints``.

        The one that served ``domain`` last if there is one: its connection
        to that host may still be open and its DNS answers are cached.  Else
        one keeping a connection open to one of ``endpoints`` (the domain's
        MX of first preference, "address:port").  Otherwise the one idle the
        longest, whose kept connection is the least likely to be wanted again.
        """
        while True:
            child = _newest(self._warm.get(domain))
            for endpoint in endpoints:
                child = child or _newest(self._near.get(endpoint))
            if child is None and self._idle:
                child = next(iter(self._idle.values()))
            if child is None:
                return None
            self._forget_idle(child)
            if not child.busy and not child.retiring and not child.closed:
                return child

    def _forget_idle(self, child: Child) -> None:
        self._idle.pop(child.pid, None)
        _discard(self._warm, child.last_domain, child)
        _discard(self._near, child.kept, child)

    def busy(self) -> list[Child]:
        return list(self._busy.values())

    def busy_count(self) -> int:
        return len(self._busy)

    def assign(self, child: Child, domain: str) -> None:
        self._forget_idle(child)
        child.domain = child.last_domain = domain
        self._busy[child.pid] = child

    def unassign(self, child: Child) -> None:
        """The child's job is over (done, or the child is lost)."""
        child.domain = None
        self._busy.pop(child.pid, None)
        if not child.retiring and not child.closed:
            self._idle[child.pid] = child
            self._warm.setdefault(child.last_domain or "", {})[child.pid] = child
            if child.kept:
                self._near.setdefault(child.kept, {})[child.pid] = child

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
            if pid in self._zygotes:
                self._zygotes.discard(pid)
                get_logger().error("zygote_exit", pid=pid, status=describe_status(status))
                if self.zygote is not None and pid == self.zygote.pid:
                    self.zygote.kill()
                    self.zygote = None
                continue
            child = self.children.pop(pid, None)
            if child is not None:
                self._forget_idle(child)
                gone.append((child, status))
        return gone


def _newest(children: dict[int, Child] | None) -> Child | None:
    """The child that joined ``children`` last (the most recently idle)."""
    return children[next(reversed(children))] if children else None


def _discard(index: dict[str, dict[int, Child]], key: str | None, child: Child) -> None:
    group = index.get(key or "")
    if group is not None:
        group.pop(child.pid, None)
        if not group:
            del index[key or ""]
