"""What bounces do to the lists: suppression, soft-bounce counts, destination flags.

Every attempt the queue records (QueueOps.record) and every report the bounce
receiver takes (``record_report``) carries a verdict of
spoold.bounces.classify; ``_apply_verdicts`` applies it in the same
transaction as the delivery row:

- hard or complaint    -> the address joins ``suppression`` (reason bounce or
                          complaint; cause and notify_id say what and whence)
- soft, final          -> ``soft_bounce`` counts it; past ``soft_limit`` bounces
                          spread over ``soft_span`` the address is suppressed
                          (reason soft-bounces)
- sent                 -> the address's soft-bounce count is reset
- policy (any attempt) -> ``destination_flag`` for the recipient's domain: the
                          operator sees it (``spoold bounces flags``) and
                          traffic shaping can read it (``destination_flags``)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

from spoold.store.base import Attempt, QueueRow, _chunks, _marks
from spoold.store.queue import QueueOps

_FLAG_COLUMNS = ("domain", "cause", "dsn", "reply", "relay", "hits", "first_at", "last_at",
                 "notify_id")


@dataclass(frozen=True)
class BouncePolicy:
    soft_limit: int = 5
    soft_span: float = 3 * 86400.0


class BounceOps(QueueOps):
    """Suppression, soft-bounce counting and destination flags, and their views."""

    bounce_policy = BouncePolicy()

    # -- applying verdicts ------------------------------------------------------

    def _apply_verdicts(self, cur: Any, attempts: Sequence[Attempt], now: float) -> None:
        last_sent: dict[str, int] = {}
        for index, attempt in enumerate(attempts):
            if attempt.status == "sent":
                last_sent[attempt.row.recipient.lower()] = index
        for chunk in _chunks(list(last_sent)):
            self.execute(cur, f"DELETE FROM soft_bounce WHERE address IN ({_marks(chunk)})",
                         chunk)
        suppress: list[tuple[Attempt, str]] = []
        for index, attempt in enumerate(attempts):
            address = attempt.row.recipient.lower()
            if attempt.kind == "policy":
                self._flag_destination(cur, attempt, now)
            elif attempt.kind == "soft" and attempt.status in ("bounced", "expired") and \
                    index > last_sent.get(address, -1) and self._count_soft(cur, attempt, now):
                suppress.append((attempt, "soft-bounces"))
            if attempt.suppress:
                suppress.append((attempt, "complaint" if attempt.kind == "complaint"
                                 else "bounce"))
        self._suppress(cur, suppress, now)

    def _suppress(self, cur: Any, items: Sequence[tuple[Attempt, str]], now: float) -> None:
        self.executemany(cur, f"{self.insert_ignore} INTO suppression (address, reason, dsn, "
                              "reply, created_at, notify_id, cause) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [(a.row.recipient.lower(), reason, a.dsn, a.reply, now, a.row.id,
                           a.cause or None) for a, reason in items])

    def _count_soft(self, cur: Any, attempt: Attempt, now: float) -> bool:
        """Count one soft bounce; whether the address has now had too many."""
        address = attempt.row.recipient.lower()
        self._upsert(cur,
                     "UPDATE soft_bounce SET bounces = bounces + 1, last_at = ?, last_dsn = ?, "
                     "last_reply = ?, notify_id = ? WHERE address = ?",
                     "INTO soft_bounce (address, bounces, first_at, last_at, last_dsn, "
                     "last_reply, notify_id) VALUES (?, 1, ?, ?, ?, ?, ?)",
                     (now, attempt.dsn, attempt.reply, attempt.row.id, address),
                     (address, now, now, attempt.dsn, attempt.reply, attempt.row.id))
        bounces, first_at = self.execute(cur, "SELECT bounces, first_at FROM soft_bounce "
                                              "WHERE address = ?", (address,)).fetchone()
        policy = self.bounce_policy
        return bounces >= policy.soft_limit and now - first_at >= policy.soft_span

    def _flag_destination(self, cur: Any, attempt: Attempt, now: float) -> None:
        row = attempt.row
        self._upsert(cur,
                     "UPDATE destination_flag SET cause = ?, dsn = ?, reply = ?, relay = ?, "
                     "hits = hits + 1, last_at = ?, notify_id = ? WHERE domain = ?",
                     "INTO destination_flag (domain, cause, dsn, reply, relay, hits, first_at, "
                     "last_at, notify_id) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)",
                     (attempt.cause, attempt.dsn, attempt.reply, attempt.relay, now, row.id,
                      row.domain.lower()),
                     (row.domain.lower(), attempt.cause, attempt.dsn, attempt.reply,
                      attempt.relay, now, now, row.id))

    # -- asynchronous reports ----------------------------------------------------

    def delivered_row(self, notify_id: int | None = None,
                      recipient: str | None = None) -> QueueRow | None:
        """The queue row a report is about, rebuilt from its last delivery-log entry.

        By queue id (from a VERP address), else by the recipient of the most
        recent delivery that was sent to it.  None when spoold never mailed it.
        """
        columns = "notify_id, message_id, sender, recipient, domain, attempt, at, delay"
        with self.transaction() as cur:
            if notify_id is not None:
                found = self.execute(cur, f"SELECT {columns} FROM delivery WHERE notify_id = ? "
                                          "ORDER BY id DESC LIMIT 1", (notify_id,)).fetchone()
            else:
                found = self.execute(cur, f"SELECT {columns} FROM delivery WHERE recipient = ? "
                                          "AND status = 'sent' ORDER BY id DESC LIMIT 1",
                                     (recipient,)).fetchone()
        if found is None:
            return None
        queue_id, message_id, sender, address, domain, attempt, at, delay = found
        return QueueRow(queue_id, message_id, sender, address, domain, 1, attempt - 1,
                        at - delay, 0.0)

    def record_report(self, attempt: Attempt, now: float | None = None) -> None:
        """Log what a bounce or complaint says about a row that left the queue, and
        apply its verdict, in one transaction."""
        now = time.time() if now is None else now
        with self.transaction() as cur:
            self._log(cur, [attempt], now)
            self._apply_verdicts(cur, [attempt], now)

    # -- views ---------------------------------------------------------------------

    def suppression_explained(self, address: str) -> dict[str, Any] | None:
        """Why an address is suppressed: its entry, the delivery-log row of the
        reply or report that caused it, and its soft-bounce count."""
        with self.transaction() as cur:
            entry = self.execute(cur, "SELECT address, reason, cause, dsn, reply, created_at, "
                                      "notify_id FROM suppression WHERE address = ?",
                                 (address.lower(),)).fetchone()
            if entry is None:
                return None
            found = dict(zip(("address", "reason", "cause", "dsn", "reply", "created_at",
                              "notify_id"), entry))
            found["delivery"] = None
            if found["notify_id"] is not None:
                row = self.execute(cur, "SELECT status, code, dsn, reply, relay, attempt, at "
                                        "FROM delivery WHERE notify_id = ? AND status <> "
                                        "'deferred' ORDER BY id DESC LIMIT 1",
                                   (found["notify_id"],)).fetchone()
                if row is not None:
                    found["delivery"] = dict(zip(("status", "code", "dsn", "reply", "relay",
                                                  "attempt", "at"), row))
            soft = self.execute(cur, "SELECT bounces, first_at, last_at FROM soft_bounce "
                                     "WHERE address = ?", (address.lower(),)).fetchone()
            found["soft"] = dict(zip(("bounces", "first_at", "last_at"), soft)) if soft else None
        return found

    def destination_flags(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Destinations that refused us on policy, most recent first."""
        with self.transaction() as cur:
            rows = self.execute(cur, f"SELECT {', '.join(_FLAG_COLUMNS)} FROM destination_flag "
                                     "WHERE last_at >= ? ORDER BY last_at DESC",
                                (since,)).fetchall()
        return [dict(zip(_FLAG_COLUMNS, row)) for row in rows]

    def clear_destination_flag(self, domain: str) -> bool:
        with self.transaction() as cur:
            return self.execute(cur, "DELETE FROM destination_flag WHERE domain = ?",
                                (domain.lower(),)).rowcount > 0
