"""Operator views and verbs: counters, mailq listing, hold/release/requeue/delete.

What ``spoold queue|status|log|hold|release|requeue|delete|flush`` and
``spoold suppression`` (and the web UI) read and change.  Deleting logs each
row as ``deleted`` in the transaction that removes it, like a final outcome.
The verbs take queue ids, or a filter (state, domain, recipient: every row
matching all that are given); listings page by id (keyset: ``after`` /
``before`` an id), so a deep page costs what the first one does.
"""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Sequence

from spoold.errors import NotFound
from spoold.store.base import (_ROW_COLUMNS, PRIORITIES, STATES, Attempt, QueueRow, _chunks,
                               _keyset, _marks)
from spoold.store.queue import QueueOps


# What the verbs' filters may name.
MATCH = ("state", "domain", "recipient", "mailout")


class AdminOps(QueueOps):
    """Counters, listings and operator verbs over the queue, the log and suppression."""

    # -- reading --------------------------------------------------------------

    def state_counts(self) -> dict[str, int]:
        """Rows per state, and ``deferred``: queued rows waiting for their next try.

        No query here walks the queued rows (the bulk of a large queue): the
        total is a plain COUNT(*), which SQLite answers from its b-tree's page
        counts; the other states are ranges of index notify_state; queued is
        the rest; deferred rows are ranges of index notify_due, which covers
        the query.  Every web UI poll and /metrics scrape comes here.
        """
        now = time.time()
        priorities = sorted(PRIORITIES.values())
        with self.transaction(write=False) as cur:
            total = self.execute(cur, "SELECT COUNT(*) FROM notify").fetchone()[0]
            counts = {state: self.execute(cur, "SELECT COUNT(*) FROM notify WHERE state = ?",
                                          (state,)).fetchone()[0]
                      for state in STATES if state != "queued"}
            counts["queued"] = total - sum(counts.values())
            counts["deferred"] = self.execute(
                cur, f"SELECT COUNT(*) FROM notify WHERE state = 'queued' AND priority IN "
                     f"({_marks(priorities)}) AND not_before > ? AND attempts > 0",
                [*priorities, now]).fetchone()[0]
        return {state: counts[state] for state in (*STATES, "deferred")}

    def delivery_counts(self, since: float) -> dict[str, int]:
        """Attempts by status logged since ``since``, to the minute (from the rollup)."""
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, "SELECT status, SUM(n) FROM delivery_minute WHERE "
                                     "minute >= ? GROUP BY status",
                                (int(since // 60 * 60),)).fetchall()
        return {status: int(n) for status, n in rows}

    def queue_rows(self, state: str | None = None, domain: str | None = None,
                   recipient: str | None = None, limit: int = 1000, after: int | None = None,
                   before: int | None = None, mailout: int | None = None) -> list[dict[str, Any]]:
        """Queue rows in id order: the first ``limit``, or those right after / before an id."""
        where, params = self._filters(state=state, domain=domain, recipient=recipient,
                                      mailout_id=mailout)
        where, params, order, backwards = _keyset(where, params, after, before)
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, "SELECT n.id, COALESCE(m.size, 0), n.created_at, n.sender, "
                                     "n.recipient, n.state, n.attempts, n.not_before, "
                                     "n.last_reply, n.priority, n.domain, n.last_dsn, "
                                     "n.mailout_id FROM notify n "
                                     f"LEFT JOIN message m ON m.id = n.message_id{where} "
                                     f"ORDER BY n.id {order} LIMIT ?",
                                [*params, limit]).fetchall()
        names = ("id", "size", "created_at", "sender", "recipient", "state", "attempts",
                 "not_before", "last_reply", "priority", "domain", "last_dsn", "mailout_id")
        found = [dict(zip(names, row)) for row in rows]
        return found[::-1] if backwards else found

    def queue_row(self, queue_id: int) -> dict[str, Any] | None:
        """One queue row, every column, or None when it is not (or no longer) queued."""
        with self.transaction(write=False) as cur:
            cur = self.execute(cur, "SELECT * FROM notify WHERE id = ?", (queue_id,))
            names = [column[0] for column in cur.description]
            row = cur.fetchone()
        return dict(zip(names, row)) if row else None

    def queue_count(self, state: str | None = None, domain: str | None = None,
                    recipient: str | None = None, cap: int = 10_000,
                    mailout: int | None = None) -> int:
        """Rows matching a filter, counted up to ``cap`` (a bounded cost on any queue)."""
        where, params = self._filters(state=state, domain=domain, recipient=recipient,
                                      mailout_id=mailout)
        with self.transaction(write=False) as cur:
            return self.execute(cur, f"SELECT COUNT(*) FROM (SELECT 1 FROM notify n{where} "
                                     "LIMIT ?) capped", [*params, cap]).fetchone()[0]

    def summary(self) -> list[tuple[str, str, int]]:
        """(domain, state, count) for the whole queue."""
        with self.transaction(write=False) as cur:
            return [tuple(r) for r in self.execute(
                cur, "SELECT domain, state, COUNT(*) FROM notify GROUP BY domain, state "
                     "ORDER BY domain, state").fetchall()]

    _DELIVERY = ("id", "notify_id", "recipient", "status", "code", "dsn", "reply", "relay",
                 "delay", "attempt", "at")

    def deliveries(self, recipient: str | None = None, limit: int = 100,
                   queue_id: int | None = None, before: int | None = None,
                   after: int | None = None) -> list[dict[str, Any]]:
        """Logged attempts, newest first: the latest ``limit``, or those older than
        ``before`` / newer than ``after`` (log ids), for a recipient or a queue id."""
        where, params = self._filters(recipient=recipient, notify_id=queue_id)
        where, params, order, backwards = _keyset(where, params, after, before,
                                                  newest_first=True)
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, "SELECT n.notify_id, n.recipient, n.status, n.code, n.dsn, "
                                     "n.reply, n.relay, n.delay, n.attempt, n.at, n.id, n.sender, "
                                     "n.mailout_id "
                                     f"FROM delivery n{where} ORDER BY n.id {order} LIMIT ?",
                                [*params, limit]).fetchall()
        names = ("notify_id", "recipient", "status", "code", "dsn", "reply", "relay", "delay",
                 "attempt", "at", "id", "sender", "mailout_id")
        found = [dict(zip(names, row)) for row in rows]
        return found[::-1] if backwards else found

    def deliveries_after(self, after_id: int, recipient: str | None = None,
                         limit: int = 1000) -> list[dict[str, Any]]:
        """Attempts with an id above ``after_id``, oldest first (``spoold log --follow``)."""
        where, params = ("", []) if recipient is None else (" AND recipient = ?", [recipient])
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, f"SELECT {', '.join(self._DELIVERY)} FROM delivery "
                                     f"WHERE id > ?{where} ORDER BY id LIMIT ?",
                                [after_id, *params, limit]).fetchall()
        return [dict(zip(self._DELIVERY, row)) for row in rows]

    # -- operator actions -----------------------------------------------------

    @staticmethod
    def _filters(ids: Sequence[int] | None = None,
                 **equal: str | int | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if ids is not None:
            clauses.append(f"n.id IN ({_marks(ids)})")
            params.extend(ids)
        for column, value in equal.items():
            if value is not None:
                clauses.append(f"n.{column} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def _select_ids(self, cur: Any, ids: Sequence[int] | None, match: dict[str, Any],
                    states: Sequence[str]) -> list[int]:
        unknown = set(match) - set(MATCH)
        if unknown:
            raise TypeError(f"unknown queue filter {', '.join(sorted(unknown))}")
        wanted = match.get("state")
        states = [s for s in states if wanted in (None, s)]
        if not states:
            return []
        where, params = self._filters(ids, domain=match.get("domain"),
                                      recipient=match.get("recipient"),
                                      mailout_id=match.get("mailout"))
        joiner = " AND " if where else " WHERE "
        sql = (f"SELECT n.id FROM notify n{where}{joiner}n.state IN ({_marks(states)})"
               f"{self.claim_lock}")
        return [r[0] for r in self.execute(cur, sql, [*params, *states]).fetchall()]

    def _check_ids(self, cur: Any, ids: Sequence[int] | None) -> None:
        if not ids:
            return
        known = {r[0] for r in self.execute(cur, f"SELECT id FROM notify WHERE id IN "
                                                 f"({_marks(ids)})", list(ids)).fetchall()}
        missing = [i for i in ids if i not in known]
        if missing:
            raise NotFound(f"no queued mail with id {', '.join(map(str, missing))}")

    def _set_state(self, ids: Sequence[int] | None, match: dict[str, Any],
                   from_states: Sequence[str], assignments: str,
                   params: Sequence[Any] = ()) -> int:
        with self.transaction() as cur:
            self._check_ids(cur, ids)
            chosen = self._select_ids(cur, ids, match, from_states)
            for chunk in _chunks(chosen):
                self.execute(cur, f"UPDATE notify SET {assignments} WHERE id IN "
                                  f"({_marks(chunk)})", [*params, *chunk])
        return len(chosen)

    # Each verb takes queue ids (all must exist), or a filter (MATCH): every row of
    # the given state, domain, recipient and mailout (all of them when none is given).

    def hold(self, ids: Sequence[int] | None = None, **match: str | int | None) -> int:
        return self._set_state(ids, match, ("queued",), "state = 'held'")

    def release_held(self, ids: Sequence[int] | None = None, **match: str | int | None) -> int:
        return self._set_state(ids, match, ("held",), "state = 'queued', agent_failures = 0")

    def requeue(self, ids: Sequence[int] | None = None, **match: str | int | None) -> int:
        """Queued or held rows become due now with a fresh retry schedule."""
        return self._set_state(ids, match, ("queued", "held"),
                               "state = 'queued', not_before = ?, attempts = 0, "
                               "agent_failures = 0",
                               (time.time(),))

    def flush(self) -> int:
        """Every queued row not yet due becomes due now."""
        now = time.time()
        with self.transaction() as cur:
            return self.execute(cur, "UPDATE notify SET not_before = ? WHERE state = 'queued' "
                                     "AND not_before > ?", (now, now)).rowcount

    def delete(self, ids: Sequence[int] | None = None, **match: str | int | None) -> int:
        """Remove queued or held rows, logging each as ``deleted``."""
        now = time.time()
        with self.transaction() as cur:
            self._check_ids(cur, ids)
            chosen = self._select_ids(cur, ids, match, ("queued", "held"))
            attempts = []
            for chunk in _chunks(chosen):
                rows = self.execute(cur, f"SELECT {_ROW_COLUMNS} FROM notify WHERE id IN "
                                         f"({_marks(chunk)})", chunk).fetchall()
                attempts.extend(Attempt(QueueRow(*r), "deleted", None, "", "deleted by operator",
                                        "none") for r in rows)
            self._log(cur, attempts, now)
            for chunk in _chunks(chosen):
                self.execute(cur, f"DELETE FROM notify WHERE id IN ({_marks(chunk)})", chunk)
            self._drop_orphan_messages(cur, {a.row.message_id for a in attempts})
        return len(chosen)

    # -- suppression ----------------------------------------------------------

    def suppressions(self) -> list[dict[str, Any]]:
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, "SELECT address, reason, dsn, reply, created_at FROM "
                                     "suppression ORDER BY address").fetchall()
        return [dict(zip(("address", "reason", "dsn", "reply", "created_at"), r)) for r in rows]

    def unsuppress(self, address: str) -> bool:
        """Lift a suppression; the address's soft bounces start counting afresh."""
        with self.transaction() as cur:
            self.execute(cur, "DELETE FROM soft_bounce WHERE address = ?", (address.lower(),))
            return self.execute(cur, "DELETE FROM suppression WHERE address = ?",
                                (address.lower(),)).rowcount > 0

