"""``spoold log --follow``: the delivery log table as it grows, like ``tail -f``.

For operators without access to the journal: prints the latest attempts,
then every new one once, polling by increasing delivery id.  On MariaDB two
writers (two runners, or a runner and ``spoold delete``) can commit their
rows out of id order, so a poll re-reads the ids of the last ``SETTLE``
seconds and prints the ones it had not seen: a late commit is printed late,
not lost.  (SQLite has one writer at a time; its ids commit in order.)
Ctrl-C, or a closed pipe (``| head``), ends it quietly with status 0.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from spoold.errors import StoreUnavailable
from spoold.store import Store

SETTLE = 10.0
_BATCH = 1000


class DeliveryTail:
    """New delivery rows, each once, from a window that trails the newest id."""

    def __init__(self, store: Store, recipient: str | None = None, settle: float = SETTLE):
        self.store = store
        self.recipient = recipient
        self.settle = settle
        self.low = 0  # every row at or below this id has been seen or was missed for good
        self.seen: set[int] = set()
        self.marks: collections.deque[tuple[float, int]] = collections.deque()

    def latest(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` rows, oldest first; following starts after them."""
        rows = list(reversed(self.store.deliveries(recipient=self.recipient, limit=limit)))
        if rows:
            self.low = rows[0]["id"] - 1
            self._saw(rows)
        else:
            newest = self.store.deliveries(limit=1)
            self.low = newest[0]["id"] if newest else 0
        return rows

    def poll(self) -> list[dict[str, Any]]:
        """Rows committed since the last poll, each returned once."""
        fresh: list[dict[str, Any]] = []
        after = self.low
        while True:
            rows = self.store.deliveries_after(after, self.recipient, _BATCH)
            fresh.extend(r for r in rows if r["id"] not in self.seen)
            if len(rows) < _BATCH:
                break
            after = rows[-1]["id"]
        self._saw(fresh)
        self._advance(time.monotonic())
        return fresh

    def _saw(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.seen.update(row["id"] for row in rows)
            self.marks.append((time.monotonic(), max(self.seen)))

    def _advance(self, now: float) -> None:
        """Move the window's floor to the newest id seen ``settle`` seconds ago."""
        while self.marks and now - self.marks[0][0] >= self.settle:
            self.low = max(self.low, self.marks.popleft()[1])
        self.seen = {i for i in self.seen if i > self.low}


def follow(store: Store, recipient: str | None, limit: int, interval: float,
           show: Callable[[dict[str, Any]], str]) -> int:
    """Print the latest rows, then new ones as they come, until Ctrl-C."""
    tail = DeliveryTail(store, recipient)
    try:
        for row in tail.latest(limit):
            print(show(row), flush=True)
        while True:
            time.sleep(interval)
            try:
                rows = tail.poll()
            except StoreUnavailable as exc:
                print(f"spoold: {exc} (retrying)", file=sys.stderr, flush=True)
                continue
            for row in rows:
                print(show(row), flush=True)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away; stop Python from failing again on flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
