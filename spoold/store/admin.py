"""Operator views and verbs: counters, mailq listing, hold/release/requeue/delete.

What ``spoold queue|status|log|hold|release|requeue|delete|flush`` and
``spoold suppression`` (and the web UI) read and change.  Deleting logs each
row as ``deleted`` in the transaction that removes it, like a final outcome.
"""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Sequence

from spoold.errors import NotFound
from spoold.store.base import _ROW_COLUMNS, STATES, Attempt, QueueRow, _chunks, _marks
from spoold.store.queue import QueueOps


class AdminOps(QueueOps):
    """Counters, listings and operator verbs over the queue, the log and suppression."""

    # -- reading --------------------------------------------------------------

    def state_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        now = time.time()
        with self.transaction() as cur:
            for state, n in self.execute(cur, "SELECT state, COUNT(*) FROM notify "
                                              "GROUP BY state").fetchall():
                counts[state] = n
            counts["deferred"] = self.execute(
                cur, "SELECT COUNT(*) FROM notify WHERE state = 'queued' AND attempts > 0 "
                     "AND not_before > ?", (now,)).fetchone()[0]
        return counts

    def delivery_counts(self, since: float) -> dict[str, int]:
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT status, COUNT(*) FROM delivery WHERE at >= ? "
                                     "GROUP BY status", (since,)).fetchall()
        return dict(rows)

    def queue_rows(self, state: str | None = None, domain: str | None = None,
                   recipient: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        where, params = self._filters(state=state, domain=domain, recipient=recipient)
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT n.id, m.size, n.created_at, n.sender, n.recipient, "
                                     "n.state, n.attempts, n.not_before, n.last_reply, "
                                     "n.priority FROM notify n JOIN message m ON "
                                     f"m.id = n.message_id{where} ORDER BY n.id LIMIT ?",
                                [*params, limit]).fetchall()
        names = ("id", "size", "created_at", "sender", "recipient", "state", "attempts",
                 "not_before", "last_reply", "priority")
        return [dict(zip(names, row)) for row in rows]

    def summary(self) -> list[tuple[str, str, int]]:
        """(domain, state, count) for the whole queue."""
        with self.transaction() as cur:
            return [tuple(r) for r in self.execute(
                cur, "SELECT domain, state, COUNT(*) FROM notify GROUP BY domain, state "
                     "ORDER BY domain, state").fetchall()]

    def deliveries(self, recipient: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, params = ("", []) if recipient is None else (" WHERE recipient = ?", [recipient])
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT notify_id, recipient, status, code, dsn, reply, "
                                     f"relay, delay, attempt, at FROM delivery{where} "
                                     "ORDER BY id DESC LIMIT ?", [*params, limit]).fetchall()
        names = ("notify_id", "recipient", "status", "code", "dsn", "reply", "relay", "delay",
                 "attempt", "at")
        return [dict(zip(names, row)) for row in rows]

    # -- operator actions -----------------------------------------------------

    @staticmethod
    def _filters(ids: Sequence[int] | None = None, **equal: str | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if ids is not None:
            clauses.append(f"n.id IN ({_marks(ids)})")
            params.extend(ids)
        for column, value in equal.items():
            if value is not None:
                clauses.append(f"n.{column} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def _select_ids(self, cur: Any, ids: Sequence[int] | None, domain: str | None,
                    states: Sequence[str]) -> list[int]:
        where, params = self._filters(ids, domain=domain)
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

    def _set_state(self, ids: Sequence[int] | None, domain: str | None, from_states: Sequence[str],
                   assignments: str, params: Sequence[Any] = ()) -> int:
        with self.transaction() as cur:
            self._check_ids(cur, ids)
            chosen = self._select_ids(cur, ids, domain, from_states)
            for chunk in _chunks(chosen):
                self.execute(cur, f"UPDATE notify SET {assignments} WHERE id IN "
                                  f"({_marks(chunk)})", [*params, *chunk])
        return len(chosen)

    def hold(self, ids: Sequence[int] | None = None, domain: str | None = None) -> int:
        return self._set_state(ids, domain, ("queued",), "state = 'held'")

    def release_held(self, ids: Sequence[int] | None = None, domain: str | None = None) -> int:
        return self._set_state(ids, domain, ("held",), "state = 'queued', agent_failures = 0")

    def requeue(self, ids: Sequence[int] | None = None, domain: str | None = None) -> int:
        """Queued or held rows become due now with a fresh retry schedule."""
        return self._set_state(ids, domain, ("queued", "held"),
                               "state = 'queued', not_before = ?, attempts = 0, "
                               "agent_failures = 0",
                               (time.time(),))

    def flush(self) -> int:
        """Every queued row not yet due becomes due now."""
        now = time.time()
        with self.transaction() as cur:
            return self.execute(cur, "UPDATE notify SET not_before = ? WHERE state = 'queued' "
                                     "AND not_before > ?", (now, now)).rowcount

    def delete(self, ids: Sequence[int] | None = None, domain: str | None = None) -> int:
        """Remove queued or held rows, logging each as ``deleted``."""
        now = time.time()
        with self.transaction() as cur:
            self._check_ids(cur, ids)
            chosen = self._select_ids(cur, ids, domain, ("queued", "held"))
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
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT address, reason, dsn, reply, created_at FROM "
                                     "suppression ORDER BY address").fetchall()
        return [dict(zip(("address", "reason", "dsn", "reply", "created_at"), r)) for r in rows]

    def unsuppress(self, address: str) -> bool:
        with self.transaction() as cur:
            return self.execute(cur, "DELETE FROM suppression WHERE address = ?",
                                (address.lower(),)).rowcount > 0
