"""The store's foundation: shared types, SQL helpers and the backend hooks.

``Backend`` is what a backend (sqlite.py, mysql.py) fills in: the
connection, the transaction boundaries, the column types, how a claim locks
rows and how its driver's errors map onto StoreError / StoreUnavailable.
It also applies the schema migrations (schema.py).  The queries themselves
live in one mixin per concern (queue.py, admin.py, ...), combined into
``Store`` in api.py.  Statements use ``?`` placeholders; a backend may
rewrite them.
"""

from __future__ import annotations

import secrets
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar
from collections.abc import Iterator, Sequence

from spoold.errors import StoreError
from spoold.store.schema import LATEST, MIGRATIONS

PRIORITIES = {"high": 0, "normal": 1, "bulk": 2}
STATES = ("queued", "active", "held")
FINAL = ("sent", "bounced", "expired", "deleted")
_CHUNK = 500
#: notify.message_id of a mailout's rows: no stored message, the child renders it.
MAILOUT_MESSAGE = 0

_ROW_COLUMNS = ("id, message_id, sender, recipient, domain, priority, attempts, "
                "created_at, expires_at, last_code, last_dsn, last_reply, mailout_id, "
                "agent_failures")


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
    mailout_id: int | None = None  # set on a mailout's rows (message_id is MAILOUT_MESSAGE)
    agent_failures: int = 0  # times a delivery agent died, hung or failed holding it
    # Not a column (the ones above are _ROW_COLUMNS, in order):
    claimed_at: float = 0.0  # runner's monotonic clock when claimed (stats.py)


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
    kind: str = ""  # the bounce verdict (spoold.bounces.classify): hard, soft, policy, ...
    cause: str = ""  # its reason: userunknown, mailboxfull, blocked, ...
    agent_failure: bool = False  # deferred only: the delivery agent failed, not the peer
    hold: bool = False  # deferred only: set the row aside (state held) instead of queued


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


def _keyset(where: str, params: list[Any], after: int | None, before: int | None,
            newest_first: bool = False, key: str = "n.id") -> tuple[str, list[Any], str, bool]:
    """Add "``key`` (an id column) above ``after`` / below ``before``" to a filter.

    Returns the filter, its parameters, the order to read in and whether the
    rows read must be reversed: a page towards the top of the list is read
    from its bound outwards (the opposite order), so LIMIT keeps the rows
    nearest the bound.
    """
    for bound, op in ((after, ">"), (before, "<")):
        if bound is not None:
            where += (" AND " if where else " WHERE ") + f"{key} {op} ?"
            params = [*params, bound]
    top, bottom = (after, before) if newest_first else (before, after)
    towards_top = top is not None and bottom is None
    ascending = newest_first == towards_top
    return where, params, "ASC" if ascending else "DESC", towards_top


class Backend:
    """One database connection, its transactions and its schema."""

    #: Appended to the claim's SELECT (MariaDB: FOR UPDATE SKIP LOCKED).
    claim_lock = ""
    #: Appended to a SELECT whose rows the transaction then updates (MariaDB: FOR UPDATE;
    #: SQLite's write transactions hold the whole database already).
    row_lock = ""
    #: INSERT variant that skips rows violating a unique key.
    insert_ignore = "INSERT OR IGNORE"
    #: SQL giving a JSON object's member as a scalar: column, then a bound path.
    json_value = "json_extract({column}, ?)"
    #: Appended to an INSERT of counters so that an existing row adds ``n``
    #: to its count instead ({keys}: the conflicting primary key's columns).
    add_on_conflict = " ON CONFLICT ({keys}) DO UPDATE SET n = n + excluded.n"
    #: Column types substituted into schema.MIGRATIONS.
    types: ClassVar[dict[str, str]] = {}
    #: Which statement of a migration's {"sqlite": ..., "mysql": ...} pair to run.
    dialect: ClassVar[str]

    url: str

    # -- backend hooks -------------------------------------------------------

    @contextmanager
    def transaction(self, write: bool = True, durable: bool = True) -> Iterator[Any]:
        """A cursor inside one transaction, committed on success.

        ``write=False`` promises only reads: SQLite then takes no write lock,
        so readers (status, the web UI, the runner's lookups) never wait for
        writers nor make them wait.  ``durable=False`` is for state that may
        be lost in a power cut (traffic shaping's tokens and slots): SQLite
        then commits without waiting for the disk (an fsync: 20 times the
        cost of the transaction), and the next durable commit syncs it too.
        """
        raise NotImplementedError

    def execute(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def executemany(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _upsert(self, cur: Any, update: str, insert: str, update_params: Sequence[Any],
                insert_params: Sequence[Any]) -> None:
        """UPDATE, else INSERT; a racing runner's INSERT makes ours an UPDATE again."""
        if self.execute(cur, update, update_params).rowcount:
            return
        if not self.execute(cur, f"{self.insert_ignore} {insert}", insert_params).rowcount:
            self.execute(cur, update, update_params)

    def last_id(self, cur: Any) -> int:
        return cur.lastrowid

    def _add_counts(self, cur: Any, table: str, keys: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        """Add each row's last value to the count ``n`` of ``table`` at its key."""
        columns = ", ".join(keys)
        self.executemany(cur, f"INSERT INTO {table} ({columns}, n) VALUES "
                              f"({_marks(keys)}, ?)" + self.add_on_conflict.format(keys=columns),
                         rows)

    def _add_tallies(self, cur: Any, now: float,
                     counts: Counter[tuple[str, int | None, str]]) -> None:
        """Add attempts counted by (domain, mailout id or None, status) to every rollup
        of the log, keys in sorted order so that runners sharing a MariaDB lock the
        same rows in the same order."""
        minute, day = int(now // 60 * 60), int(now // 86400 * 86400)
        statuses: Counter[str] = Counter()
        domains: Counter[tuple[str, str]] = Counter()
        mailouts: Counter[tuple[int, str]] = Counter()
        for (domain, mailout_id, status), n in counts.items():
            statuses[status] += n
            domains[domain, status] += n
            if mailout_id is not None:
                mailouts[mailout_id, status] += n
        self._add_counts(cur, "delivery_minute", ("minute", "status"),
                         [(minute, s, n) for s, n in sorted(statuses.items())])
        self._add_counts(cur, "delivery_domain_day", ("day", "domain", "status"),
                         [(day, d, s, n) for (d, s), n in sorted(domains.items())])
        self._add_counts(cur, "delivery_total", ("status",), sorted(statuses.items()))
        self._add_counts(cur, "delivery_by_mailout", ("mailout_id", "status"),
                         [(m, s, n) for (m, s), n in sorted(mailouts.items())])

    def close(self) -> None:
        raise NotImplementedError

    def _schema_lock(self, cur: Any) -> None:
        """Serialise concurrent upgrades (backends that need it override)."""

    # -- schema ---------------------------------------------------------------

    def _table_exists(self, cur: Any, name: str) -> bool:
        raise NotImplementedError

    def schema_version(self) -> int:
        with self.transaction(write=False) as cur:
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
                    if isinstance(statement, dict):
                        statement = statement[self.dialect]
                    self.execute(cur, statement.format(**self.types))
                self.execute(cur, "INSERT INTO schema_version (version) VALUES (?)", (number,))
        return before, LATEST

    def ensure_schema(self) -> None:
        if self.schema_version() != LATEST:
            self.upgrade()

    def secret(self, name: str) -> str:
        """A random secret kept in the database (table secret), made at its first use,
        so that every process using the database shares it."""
        with self.transaction() as cur:
            self.execute(cur, f"{self.insert_ignore} INTO secret (name, value) VALUES (?, ?)",
                         (name, secrets.token_urlsafe(32)))
            return self.execute(cur, "SELECT value FROM secret WHERE name = ?",
                                (name,)).fetchone()[0]
