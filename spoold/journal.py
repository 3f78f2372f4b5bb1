"""The result journal: outcomes a runner has heard of but not yet written to the database.

The runner writes results to the database in batches (runner.flush_interval),
so a runner killed with SIGKILL used to forget the last batch, and its
children took the result lines still in their pipes with them: those rows
came back when it restarted and were sent a second time, though the remote
server had said 250 to each (bench/chaos.py: 726 duplicates for 20 kills in
1,000 messages).  Two append-only files in the run directory close that
window; each entry is one write(2) without fsync, which the kernel keeps
when a process dies (not when the machine does):

RUN_DIR/results.journal
    every Attempt the runner records in memory, one JSON line each (the
    Attempt with its QueueRow)
RUN_DIR/children.journal
    every result line a child sends, written by the child itself just
    before it writes the line on its stdout (the runner hands this file to
    each child as fd 3, SenderConfig.journal_fd)

Both are emptied each time a batch is committed: the runner's own first,
then it reads what its children have written on their pipes meanwhile
(into its own journal), and only then the children's, so that the lines
children journal during a commit are not emptied with it.  On start the runner
replays them (``Store.replay`` applies only attempts whose row is still
leased to this runner, so what was committed just before the kill is not
applied twice; a runner's own attempt for a row wins over a child's line),
then empties them.

A child whose runner dies while it waits for the reply to a final dot
reads that reply first, for up to sender.lifeline.ORPHAN_GRACE seconds,
and journals it (see there).  The next runner must not replay before those
lines are in: each runner takes an exclusive flock(2) on its
children.journal, and its children share that open file (fd 3), so the
lock lives on, after the runner's death, until its last child has exited;
``take()`` waits for it (ORPHANS_WAIT at most; the runner logs
journal_waited when it took a tenth of a second or more).  What remains of
the window is a child killed with SIGKILL between its read of the 250 and
its write to the journal, a line a child journals between the runner's
last read of the pipes and its emptying of the children's journal (a few
microseconds after each commit), an orphan that outlived ORPHANS_WAIT, and
a machine crash.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from sender.lifeline import ORPHAN_GRACE
from sender.protocol import ProtocolError, Result, decode_reply
from spoold.log import get_logger
from spoold.store import Attempt, QueueRow

RUNNER = "results.journal"
CHILDREN = "children.journal"
ORPHANS_WAIT = ORPHAN_GRACE + 5.0


def encode(attempt: Attempt) -> bytes:
    # vars(), not dataclasses.asdict(): no deep copy, a third of the cost per result.
    fields = {**vars(attempt), "row": vars(attempt.row)}
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Attempt:
    fields = json.loads(line)
    return Attempt(**{**fields, "row": QueueRow(**fields["row"])})


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _skipped(path: Path, exc: Exception) -> None:
    """A line cut short by the kill (the last one) or otherwise unreadable: its row is
    simply tried again."""
    get_logger().warning("journal_line_skipped", path=str(path),
                         error=f"{type(exc).__name__}: {exc}")


class ResultJournal:
    """RUN_DIR/results.journal and RUN_DIR/children.journal, open for appending."""

    def __init__(self, run_dir: str | os.PathLike):
        self.runner_path = Path(run_dir) / RUNNER
        self.children_path = Path(run_dir) / CHILDREN
        self.fd = _open(self.runner_path)
        self.children_fd = _open(self.children_path)  # inherited by children as fd 3

    def take(self, timeout: float = ORPHANS_WAIT) -> bool:
        """Wait until the children of an earlier runner here are gone (see above),
        then hold the lock for ours; False if they outlived ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.children_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def append(self, attempt: Attempt) -> None:
        os.write(self.fd, encode(attempt))

    def clear(self) -> None:
        """Every result heard so far is committed: start empty."""
        self.clear_own()
        self.clear_children()

    def clear_own(self) -> None:
        os.ftruncate(self.fd, 0)

    def clear_children(self) -> None:
        """Only once every line the children journalled has been read from their
        pipes (and is in the runner's own journal, or committed)."""
        os.ftruncate(self.children_fd, 0)

    def read(self) -> tuple[list[Attempt], list[Result]]:
        """What a previous life of this runner heard but may not have committed:
        its own attempts, and its children's result lines."""
        attempts, results = [], []
        for line in _lines(self.runner_path):
            try:
                attempts.append(decode(line))
            except (ValueError, TypeError, KeyError) as exc:
                _skipped(self.runner_path, exc)
        for line in _lines(self.children_path):
            try:
                reply = decode_reply(line)
            except ProtocolError as exc:
                _skipped(self.children_path, exc)
                continue
            if isinstance(reply, Result):
                results.append(reply)
        return attempts, results

    def set_aside(self) -> Path:
        """Keep what the journal holds in RUN_DIR/journal.refused.<time>, and start empty."""
        kept = self.runner_path.with_name(f"journal.refused.{int(time.time())}")
        kept.write_bytes(b"".join(path.read_bytes()
                                  for path in (self.runner_path, self.children_path)))
        self.clear()
        return kept

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.children_fd)
