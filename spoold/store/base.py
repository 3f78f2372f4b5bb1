"""The store interface: every query spoold makes, written once for both backends.

``Store`` holds the SQL; a backend (sqlite.py, mysql.py) supplies the
connection, the transaction boundaries, the column types, how a claim locks
rows and how its driver's errors map onto StoreError / StoreUnavailable.
Statements use ``?`` placeholders; a backend may rewrite them.

The rules the queue relies on live here:
- a claim marks due rows ``active`` under an owner and a lease expiry in the
  same transaction that selects them (no window in which two runners can take
  one row);
- a final outcome (sent, bounced, expired, deleted) inserts its delivery row
  and deletes the queue row in one transaction, in batches (``record``);
- rows whose lease ran out come back as ``queued`` (``recover_expired``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar
from collections.abc import Iterable, Iterator, Sequence

from spoold.errors import NotFound, StoreError
from spoold.store.schema import LATEST, MIGRATIONS

PRIORITIES = {"high": 0, "normal": 1, "bulk": 2}
STATES = ("queued", "active", "held")
FINAL = ("sent", "bounced", "expired", "deleted")
_CHUNK = 500

_ROW_COLUMNS = ("id, message_id, sender, recipient, domain, priority, attempts, "
                "created_at, expires_at, last_code, last_dsn, last_reply")


@dataclass
class QueueRow:
    id: int
    message_id: int
    sender: str
    recipient: str
    domain: str
    priority: int
    attempts: int
    created_at: float
    expires_at: float
    last_code: int | None = None
    last_dsn: str | None = None
    last_reply: str | None = None


@dataclass
class Attempt:
    """The outcome of one attempt at one queue row, as ``record`` writes it."""

    row: QueueRow
    status: str  # sent | deferred | bounced | expired | deleted
    code: int | None
    dsn: str
    reply: str
    relay: str
    not_before: float = 0.0  # deferred only: when the row is due again
    suppress: bool = False  # bounced only: add the recipient to suppression


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


class Store:
    """Queue, log and suppression operations over one database connection."""

    #: Appended to the claim's SELECT (MariaDB: FOR UPDATE SKIP LOCKED).
    claim_lock = ""
    #: INSERT variant that skips rows violating a unique key.
    insert_ignore = "INSERT OR IGNORE"
    #: Column types substituted into schema.MIGRATIONS.
    types: ClassVar[dict[str, str]] = {}

    url: str

    # -- backend hooks -------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction, committed on success."""
        raise NotImplementedError

    def execute(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def executemany(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def last_id(self, cur: Any) -> int:
        return cur.lastrowid

    def close(self) -> None:
        raise NotImplementedError

    def _schema_lock(self, cur: Any) -> None:
        """Serialise concurrent upgrades (backends that need it override)."""

    # -- schema ---------------------------------------------------------------

    def _table_exists(self, cur: Any, name: str) -> bool:
        raise NotImplementedError

    def schema_version(self) -> int:
        with self.transaction() as cur:
            return self._version(cur)

    def _version(self, cur: Any) -> int:
        if not self._table_exists(cur, "schema_version"):
            return 0
        row = self.execute(cur, "SELECT MAX(version) FROM schema_version").fetchone()
        return row[0] or 0

    def upgrade(self) -> tuple[int, int]:
        """Apply pending migrations; returns (version before, version after)."""
        with self.transaction() as cur:
            self._schema_lock(cur)
            before = self._version(cur)
            if before > LATEST:
                raise StoreError(f"{self.url}: schema version {before} is newer than this "
                                 f"spoold ({LATEST}); upgrade spoold")
            if before == 0:
                self.execute(cur, "CREATE TABLE schema_version (version INTEGER NOT NULL)"
                             + self.types["table"])
            for number in range(before + 1, LATEST + 1):
                for statement in MIGRATIONS[number - 1]:
                    self.execute(cur, statement.format(**self.types))
                self.execute(cur, "INSERT INTO schema_version (version) VALUES (?)", (number,))
        return before, LATEST

    def ensure_schema(self) -> None:
        if self.schema_version() != LATEST:
            self.upgrade()

    # -- enqueue --------------------------------------------------------------

    def _suppressed(self, cur: Any, addresses: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(list(addresses)):
            rows = self.execute(cur, f"SELECT address FROM suppression WHERE address IN "
                                     f"({_marks(chunk)})", [a.lower() for a in chunk])
            found.update(r[0] for r in rows.fetchall())
        return {a for a in addresses if a.lower() in found}

    def suppressed(self, addresses: Sequence[str]) -> set[str]:
        with self.transaction() as cur:
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
        with self.transaction() as cur:
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
            self._log(cur, attempts, now)
            final = [a.row.id for a in attempts if a.status in FINAL]
            for chunk in _chunks(final):
                self.execute(cur, f"DELETE FROM notify WHERE id IN ({_marks(chunk)}) "
                                  f"AND lease_owner = ?", [*chunk, owner])
            deferred = [a for a in attempts if a.status == "deferred"]
            self.executemany(cur, "UPDATE notify SET state = 'queued', attempts = attempts + 1, "
                                  "not_before = ?, last_code = ?, last_dsn = ?, last_reply = ?, "
                                  "lease_owner = NULL, lease_until = NULL "
                                  "WHERE id = ? AND lease_owner = ?",
                             [(a.not_before, a.code, a.dsn, a.reply, a.row.id, owner)
                              for a in deferred])
            self._suppress(cur, [a for a in attempts if a.suppress], now)
            self._drop_orphan_messages(cur, {a.row.message_id for a in attempts
                                             if a.status in FINAL})

    def _log(self, cur: Any, attempts: Sequence[Attempt], now: float) -> None:
        self.executemany(cur, "INSERT INTO delivery (notify_id, message_id, sender, recipient, "
                              "domain, status, code, dsn, reply, relay, delay, attempt, at) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [(a.row.id, a.row.message_id, a.row.sender, a.row.recipient,
                           a.row.domain, a.status, a.code, a.dsn, a.reply, a.relay,
                           max(0.0, now - a.row.created_at), a.row.attempts + 1, now)
                          for a in attempts])

    def _suppress(self, cur: Any, attempts: Sequence[Attempt], now: float) -> None:
        self.executemany(cur, f"{self.insert_ignore} INTO suppression "
                              "(address, reason, dsn, reply, created_at) VALUES (?, ?, ?, ?, ?)",
                         [(a.row.recipient.lower(), "bounce", a.dsn, a.reply, now)
                          for a in attempts])

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
        with self.transaction() as cur:
            times = [self.execute(cur, "SELECT MIN(not_before) FROM notify WHERE state = "
                                       "'queued' AND priority = ?", (p,)).fetchone()[0]
                     for p in PRIORITIES.values()]
        times = [t for t in times if t is not None]
        return min(times) if times else None

    # -- runners --------------------------------------------------------------

    def heartbeat(self, owner: str, host: str, pid: int, started_at: float,
                  children: int, max_children: int) -> None:
        now = time.time()
        with self.transaction() as cur:
            if self.execute(cur, "UPDATE runner SET host = ?, pid = ?, started_at = ?, "
                                 "heartbeat_at = ?, children = ?, max_children = ? "
                                 "WHERE owner = ?",
                            (host, pid, started_at, now, children, max_children,
                             owner)).rowcount == 0:
                self.execute(cur, "INSERT INTO runner (owner, host, pid, started_at, "
                                  "heartbeat_at, children, max_children) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (owner, host, pid, started_at, now, children, max_children))

    def forget_runner(self, owner: str) -> None:
        with self.transaction() as cur:
            self.execute(cur, "DELETE FROM runner WHERE owner = ?", (owner,))

    def runners(self) -> list[dict[str, Any]]:
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT owner, host, pid, started_at, heartbeat_at, "
                                     "children, max_children FROM runner ORDER BY owner")
            names = ("owner", "host", "pid", "started_at", "heartbeat_at", "children",
                     "max_children")
            return [dict(zip(names, row)) for row in rows.fetchall()]

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
        return self._set_state(ids, domain, ("held",), "state = 'queued'")

    def requeue(self, ids: Sequence[int] | None = None, domain: str | None = None) -> int:
        """Queued or held rows become due now with a fresh retry schedule."""
        return self._set_state(ids, domain, ("queued", "held"),
                               "state = 'queued', not_before = ?, attempts = 0",
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
