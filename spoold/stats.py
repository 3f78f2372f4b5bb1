"""The runner's own figures since it started: what ``spoold status`` and /metrics read.

The runner counts, in memory and at the cost of a few additions per row:
deliveries by status; claims (database transactions, their seconds, the
rows they took); dispatch waits (each row's seconds from its claim to the
child that got it); result writes (transactions and their seconds).  Each
timing is a count, a sum and Prometheus-style cumulative bucket counts over
``BOUNDS``.  ``figures()`` turns them, with the pool's and backlog's sizes of
the moment, into the columns of the runner's heartbeat row (see
``RUNNER_FIGURES`` in spoold/store/queue.py), written every few seconds.
Counters restart at zero with the runner; ``started_at`` in the same row
tells a reader (a Prometheus rate) that they did.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from spoold.store import QueueRow

#: Upper bounds (seconds) of the latency buckets; a last one, +Inf, is the count.
BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)
STATUSES = ("sent", "deferred", "bounced", "expired")


class Timing:
    """Count, sum and bucket counts of one kind of latency."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(BOUNDS) + 1)  # per bucket, not cumulative

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.buckets[bisect.bisect_left(BOUNDS, seconds)] += 1

    def cumulative(self) -> list[int]:
        """Observations <= each of BOUNDS (Prometheus ``le`` buckets, +Inf left out)."""
        out, running = [], 0
        for n in self.buckets[:-1]:
            running += n
            out.append(running)
        return out


class RunnerStats:
    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()
        self.claimed = 0
        self.claim = Timing()
        self.dispatch = Timing()
        self.write = Timing()

    def claimed_rows(self, rows: Iterable[QueueRow], seconds: float, now: float) -> None:
        """One claim transaction took ``seconds``; its rows wait from ``now`` (monotonic)."""
        self.claim.observe(seconds)
        for row in rows:
            row.claimed_at = now
            self.claimed += 1

    def dispatched(self, rows: Iterable[QueueRow], now: float) -> None:
        for row in rows:
            self.dispatch.observe(now - row.claimed_at)

    def recorded(self, status: str) -> None:
        self.deliveries[status] += 1

    def wrote(self, seconds: float) -> None:
        self.write.observe(seconds)

    def figures(self, busy: int, backlog: int, results_waiting: int) -> dict[str, Any]:
        """The heartbeat columns beyond pid, children and max_children."""
        return {
            "busy_children": busy,
            "backlog": backlog,
            "results_waiting": results_waiting,
            **{status: self.deliveries[status] for status in STATUSES},
            "claims": self.claim.count,
            "claim_seconds": self.claim.total,
            "claimed": self.claimed,
            "dispatched": self.dispatch.count,
            "dispatch_seconds": self.dispatch.total,
            "writes": self.write.count,
            "write_seconds": self.write.total,
            "latency_buckets": json.dumps({
                "bounds": list(BOUNDS), "claim": self.claim.cumulative(),
                "dispatch": self.dispatch.cumulative(), "write": self.write.cumulative()},
                separators=(",", ":")),
        }

    def status_line(self, busy: int, alive: int, max_children: int, backlog: int) -> str:
        """One line for systemctl status (sd_notify STATUS=)."""
        done = ", ".join(f"{self.deliveries[s]} {s}" for s in STATUSES)
        return (f"children {busy} busy, {alive} alive (max {max_children}); backlog {backlog}; "
                f"since start: {done}")
