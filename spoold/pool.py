"""Sender children: their birth, their pipes and their death (Postfix master_spawn).

``Pool.spawn()`` forks the runner into a sender child, a pipe on its stdin
and one on its stdout (both non-blocking on our side), the runner's
children.journal as its fd 3 (spoold/journal.py), and queues the sender
configuration as its first line.  The child closes every other file
descriptor, puts the default signal handlers back, names itself "spoold
sender" and runs ``sender.__main__.main()`` without an exec: the runner has
imported the sender's modules already, so a new child costs a fork, not a
Python start-up (190 ms of CPU each, measured by bench/, which made
max_children children cost more than the mail they carried).  The runner puts the pipes in its
select loop; ``Child.feed()`` writes what is pending, ``Child.read_lines()``
returns the complete lines the child wrote.  ``Pool.reap()`` collects exited
children with waitpid(-1, WNOHANG) and decodes their status; pids that are
not ours are ignored.  How many children may live, and which one gets which
job, is the runner's decision (runner.py), not this module's.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import NoReturn

import setproctitle

import sender
import sender.__main__
import sender.client
import sender.mx  # imported here so that forked children have it: see above
import sender.signing  # (dkimpy, cryptography: 30 ms a child that signs would pay)
from sender.protocol import SenderConfig, encode_config
from spoold.store import QueueRow

_EX_SOFTWARE = 70
JOURNAL_FD = 3  # where a child finds the runner's children.journal


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


def _become_sender(stdin: int, stdout: int, journal: int) -> NoReturn:
    """In a freshly forked child: nothing of the runner's but the code, then serve jobs."""
    code = _EX_SOFTWARE
    try:
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        keep = 3
        if journal >= 0:
            os.dup2(journal, JOURNAL_FD)  # SenderConfig.journal_fd says so
            keep = JOURNAL_FD + 1
        os.closerange(keep, os.sysconf("SC_OPEN_MAX"))  # the lock, the database, the sockets
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        setproctitle.setproctitle(sender.TITLE)
        code = sender.__main__.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else _EX_SOFTWARE
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


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

    def __len__(self) -> int:
        return len(self.children)

    def spawn(self) -> Child:
        child_in, to_child = os.pipe()
        from_child, child_out = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would write the runner's buffered output again
        # Frozen objects are skipped by the collector: a child's garbage
        # collections then leave the runner's pages shared instead of
        # writing to every object they scan (copy-on-write).
        gc.freeze()
        try:
            pid = os.fork()
        except OSError:
            gc.unfreeze()
            for fd in (child_in, to_child, from_child, child_out):
                os.close(fd)
            raise
        if pid == 0:
            _become_sender(child_in, child_out, self.journal)
        gc.unfreeze()
        os.close(child_in)
        os.close(child_out)
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
