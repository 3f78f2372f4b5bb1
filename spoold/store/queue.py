"""The queue's life: enqueue, claim under a lease, record outcomes, recover.

The rules the queue relies on live here:
- a claim marks due rows ``active`` under an owner and a lease expiry in the
  same transaction that selects them (no window in which two runners can take
  one row);
- a final outcome (sent, bounced, expired, deleted) inserts its delivery row
  and deletes the queue row in one transaction, in batches (``record``);
- rows whose lease ran out come back as ``queued`` (``recover_expired``);
- every logged attempt is also counted into the log's rollups (``_tally``)
  in the same transaction, so the counters never disagree with the log.
Runners also keep a heartbeat row here, for ``spoold status`` and the web
UI: pid, children, and the figures of spoold/stats.py (RUNNER_FIGURES).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

from spoold.store.base import (_ROW_COLUMNS, FINAL, PRIORITIES, Attempt, Backend, QueueRow,
                               _chunks, _marks)
from spoold.store.schema import DSN_ROLLUP

#: Heartbeat columns beyond pid and children (schema migration 2): gauges of the
#: moment, then counters and latency sums since started_at, then the latency
#: histograms' cumulative bucket counts as JSON (spoold/stats.py).
RUNNER_FIGURES = ("busy_children", "backlog", "results_waiting", "sent", "deferred", "bounced",
                  "expired", "claims", "claim_seconds", "claimed", "dispatched",
                  "dispatch_seconds", "writes", "write_seconds", "latency_buckets")


class QueueOps(Backend):
    """Enqueue, claim, record and recover: the queue rows' life."""

    # -- enqueue --------------------------------------------------------------

    def _suppressed(self, cur: Any, addresses: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(list(addresses)):
            rows = self.execute(cur, f"SELECT address FROM suppression WHERE address IN "
                                     f"({_marks(chunk)})", [a.lower() for a in chunk])
            found.update(r[0] for r in rows.fetchall())
        return {a for a in addresses if a.lower() in found}

    def suppressed(self, addresses: Sequence[str]) -> set[str]:
        with self.transaction(write=False) as cur:
            return self._suppressed(cur, addresses)

    def enqueue(self, sender: str, body: bytes, recipients: Sequence[tuple[str, str]],
                priority: int, expires_at: float,
                not_before: float | None = None) -> tuple[list[int], set[str]]:
        """Store one message and one queue row per unsuppressed (recipient, domain).

        Returns the new row ids and the recipients skipped as suppressed; the
        check and the inserts share one transaction.  No message is stored
        when every recipient is suppressed.
        """
        now = time.time()
        due = now if not_before is None else not_before
        with self.transaction() as cur:
            skipped = self._suppressed(cur, [r for r, _ in recipients])
            wanted = [(r, d) for r, d in recipients if r not in skipped]
            if not wanted:
                return [], skipped
            self.execute(cur, "INSERT INTO message (sender, body, size, created_at) "
                              "VALUES (?, ?, ?, ?)", (sender, body, len(body), now))
            message_id = self.last_id(cur)
            ids = []
            for recipient, domain in wanted:
                self.execute(cur, "INSERT INTO notify (message_id, sender, recipient, domain, "
                                  "priority, state, attempts, created_at, not_before, expires_at) "
                                  "VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)",
                             (message_id, sender, recipient, domain, priority, now, due,
                              expires_at))
                ids.append(self.last_id(cur))
        return ids, skipped

    # -- the runner's side ---------------------------------------------------

    def claim(self, owner: str, limit: int, lease_until: float,
              now: float | None = None) -> list[QueueRow]:
        """Take up to ``limit`` due rows, highest priority first, under a lease."""
        now = time.time() if now is None else now
        claimed: list[QueueRow] = []
        with self.transaction() as cur:
            for priority in sorted(PRIORITIES.values()):
                want = limit - len(claimed)
                if want <= 0:
                    break
                rows = self.execute(
                    cur, f"SELECT {_ROW_COLUMNS} FROM notify WHERE state = 'queued' AND "
                         f"priority = ? AND not_before <= ? ORDER BY not_before LIMIT ?"
                         f"{self.claim_lock}", (priority, now, want)).fetchall()
                claimed.extend(QueueRow(*row) for row in rows)
            for chunk in _chunks([r.id for r in claimed]):
                self.execute(cur, f"UPDATE notify SET state = 'active', lease_owner = ?, "
                                  f"lease_until = ? WHERE id IN ({_marks(chunk)})",
                             [owner, lease_until, *chunk])
        return claimed

    def bodies(self, message_ids: Iterable[int]) -> dict[int, bytes]:
        wanted = sorted(set(message_ids))
        out: dict[int, bytes] = {}
        with self.transaction(write=False) as cur:
            for chunk in _chunks(wanted):
                rows = self.execute(cur, f"SELECT id, body FROM message WHERE id IN "
                                         f"({_marks(chunk)})", chunk)
                out.update((mid, bytes(body)) for mid, body in rows.fetchall())
        return out

    def record(self, attempts: Sequence[Attempt], owner: str, now: float | None = None) -> None:
        """Log a batch of attempts and apply each outcome to its queue row, atomically."""
        if not attempts:
            return
        now = time.time() if now is None else now
        with self.transaction() as cur:
            self._apply(cur, attempts, owner, now)

    def leased_rows(self, owner: str, ids: Sequence[int]) -> list[QueueRow]:
        """The rows among ``ids`` that are active under ``owner``'s lease."""
        rows: list[QueueRow] = []
        with self.transaction() as cur:
            for chunk in _chunks(sorted(set(ids))):
                rows.extend(QueueRow(*r) for r in self.execute(
                    cur, f"SELECT {_ROW_COLUMNS} FROM notify WHERE id IN ({_marks(chunk)}) "
                         f"AND lease_owner = ? AND state = 'active'", [*chunk, owner]).fetchall())
        return rows

    def replay(self, attempts: Sequence[Attempt], owner: str) -> int:
        """Record journalled attempts (spoold/journal.py) whose row ``owner`` still leases.

        An attempt whose row is gone or no longer leased to ``owner`` was
        committed before the runner died (or its lease ran out and another
        runner has it): it is skipped, so replaying never logs twice.
        Returns how many were applied.
        """
        now = time.time()
        with self.transaction() as cur:
            leased: set[int] = set()
            for chunk in _chunks(sorted({a.row.id for a in attempts})):
                leased.update(r[0] for r in self.execute(
                    cur, f"SELECT id FROM notify WHERE id IN ({_marks(chunk)}) AND "
                         f"lease_owner = ? AND state = 'active'", [*chunk, owner]).fetchall())
            pending = {a.row.id: a for a in attempts if a.row.id in leased}  # the last one wins
            self._apply(cur, list(pending.values()), owner, now)
        return len(pending)

    def _apply(self, cur: Any, attempts: Sequence[Attempt], owner: str, now: float) -> None:
        if not attempts:
            return
        self._log(cur, attempts, now)
        final = [a.row.id for a in attempts if a.status in FINAL]
        for chunk in _chunks(final):
            self.execute(cur, f"DELETE FROM notify WHERE id IN ({_marks(chunk)}) "
                              f"AND lease_owner = ?", [*chunk, owner])
        deferred = [a for a in attempts if a.status == "deferred"]
        self.executemany(cur, "UPDATE notify SET state = ?, attempts = attempts + 1, "
                              "agent_failures = ?, not_before = ?, last_code = ?, "
                              "last_dsn = ?, last_reply = ?, "
                              "lease_owner = NULL, lease_until = NULL "
                              "WHERE id = ? AND lease_owner = ?",
                         [("held" if a.hold else "queued",
                           a.row.agent_failures + a.agent_failure, a.not_before, a.code,
                           a.dsn, a.reply, a.row.id, owner)
                          for a in deferred])
        self._apply_verdicts(cur, attempts, now)
        self._drop_orphan_messages(cur, {a.row.message_id for a in attempts
                                         if a.status in FINAL})

    def _log(self, cur: Any, attempts: Sequence[Attempt], now: float) -> None:
        self.executemany(cur, "INSERT INTO delivery (notify_id, message_id, sender, recipient, "
                              "domain, status, code, dsn, reply, relay, delay, attempt, at, "
                              "mailout_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [(a.row.id, a.row.message_id, a.row.sender, a.row.recipient,
                           a.row.domain, a.status, a.code, a.dsn, a.reply, a.relay,
                           max(0.0, now - a.row.created_at), a.row.attempts + 1, now,
                           a.row.mailout_id)
                          for a in attempts])
        self._tally(cur, attempts, now)

    def _tally(self, cur: Any, attempts: Sequence[Attempt], now: float) -> None:
        """Count the attempts into the log's rollups (schema.py)."""
        self._add_tallies(cur, now, Counter((a.row.domain, a.row.mailout_id, a.status)
                                            for a in attempts))
        classes = Counter(a.dsn[:3] for a in attempts if a.dsn)
        self._add_counts(cur, DSN_ROLLUP, ("dsn_class",), sorted(classes.items()))

    def _apply_verdicts(self, cur: Any, attempts: Sequence[Attempt], now: float) -> None:
        """What the attempts' bounce verdicts do to suppression (store/bounces.py)."""
        raise NotImplementedError

    def _drop_orphan_messages(self, cur: Any, message_ids: set[int]) -> None:
        for chunk in _chunks(sorted(message_ids)):
            referenced = {r[0] for r in self.execute(
                cur, f"SELECT DISTINCT message_id FROM notify WHERE message_id IN "
                     f"({_marks(chunk)})", chunk).fetchall()}
            orphans = [m for m in chunk if m not in referenced]
            if orphans:
                self.execute(cur, f"DELETE FROM message WHERE id IN ({_marks(orphans)})", orphans)

    def release(self, owner: str, ids: Sequence[int]) -> None:
        """Give claimed rows back untouched (not attempted, no log entry)."""
        with self.transaction() as cur:
            for chunk in _chunks(list(ids)):
                self.execute(cur, f"UPDATE notify SET state = 'queued', lease_owner = NULL, "
                                  f"lease_until = NULL WHERE id IN ({_marks(chunk)}) "
                                  f"AND lease_owner = ? AND state = 'active'", [*chunk, owner])

    def release_owner(self, owner: str) -> int:
        """Give back every row still leased to ``owner`` (a previous life of this runner)."""
        with self.transaction() as cur:
            return self.execute(cur, "UPDATE notify SET state = 'queued', lease_owner = NULL, "
                                     "lease_until = NULL WHERE lease_owner = ? AND "
                                     "state = 'active'", (owner,)).rowcount

    def renew(self, owner: str, lease_until: float) -> None:
        with self.transaction() as cur:
            self.execute(cur, "UPDATE notify SET lease_until = ? WHERE lease_owner = ? "
                              "AND state = 'active'", (lease_until, owner))

    def recover_expired(self, now: float | None = None) -> int:
        """Return rows whose lease ran out (their runner died) to the queue."""
        now = time.time() if now is None else now
        with self.transaction() as cur:
            return self.execute(cur, "UPDATE notify SET state = 'queued', lease_owner = NULL, "
                                     "lease_until = NULL WHERE state = 'active' AND "
                                     "lease_until < ?", (now,)).rowcount

    def next_due(self) -> float | None:
        """When the earliest queued row becomes due, or None if none is queued."""
        with self.transaction(write=False) as cur:
            times = [self.execute(cur, "SELECT MIN(not_before) FROM notify WHERE state = "
                                       "'queued' AND priority = ?", (p,)).fetchone()[0]
                     for p in PRIORITIES.values()]
        times = [t for t in times if t is not None]
        return min(times) if times else None

    # -- runners --------------------------------------------------------------

    def heartbeat(self, owner: str, host: str, pid: int, started_at: float,
                  children: int, max_children: int,
                  figures: Mapping[str, Any] | None = None) -> None:
        """Create or refresh this runner's row; ``figures`` fills RUNNER_FIGURES."""
        values = {"host": host, "pid": pid, "started_at": started_at,
                  "heartbeat_at": time.time(), "children": children,
                  "max_children": max_children}
        if figures is not None:
            values.update((name, figures[name]) for name in RUNNER_FIGURES)
        names = list(values)
        params = [values[name] for name in names]
        with self.transaction() as cur:
            assignments = ", ".join(f"{name} = ?" for name in names)
            if self.execute(cur, f"UPDATE runner SET {assignments} WHERE owner = ?",
                            [*params, owner]).rowcount == 0:
                self.execute(cur, f"INSERT INTO runner (owner, {', '.join(names)}) "
                                  f"VALUES (?, {_marks(names)})", [owner, *params])

    def forget_runner(self, owner: str) -> None:
        with self.transaction() as cur:
            self.execute(cur, "DELETE FROM runner WHERE owner = ?", (owner,))

    def runners(self) -> list[dict[str, Any]]:
        """Every runner's heartbeat row; ``latency_buckets`` decoded from its JSON."""
        names = ("owner", "host", "pid", "started_at", "heartbeat_at", "children",
                 "max_children", *RUNNER_FIGURES)
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, f"SELECT {', '.join(names)} FROM runner "
                                     "ORDER BY owner").fetchall()
        out = [dict(zip(names, row)) for row in rows]
        for runner in out:
            runner["latency_buckets"] = json.loads(runner["latency_buckets"] or "{}")
        return out
