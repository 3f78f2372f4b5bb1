"""SQLite backend: the default store, one file, no server.

WAL journal (readers never block the runner), synchronous=FULL (a committed
outcome survives a power cut, as Postfix's fsync'd queue files do), a busy
timeout for concurrent writers (the runner, enqueuers, the web UI), and every
write transaction opened with BEGIN IMMEDIATE so that a claim's SELECT and
UPDATE see no other writer in between.  Read-only snapshots (the web UI's
pages, ``spoold queue``) open with a plain BEGIN and never hold up a writer.
"""

from __future__ import annotations

import math
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from collections.abc import Iterator, Sequence

from spoold.errors import StoreError, StoreUnavailable
from spoold.store.api import Store

# Failures that clear by themselves (lock contention, a full or read-only disk).
_TRANSIENT = ("locked", "busy", "disk i/o", "readonly", "read-only", "full", "unable to open")


def _error(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    kind = StoreUnavailable if any(t in text.lower() for t in _TRANSIENT) else StoreError
    return kind(f"{path}: {text}")


def _ensure_floor(conn: sqlite3.Connection) -> None:
    """FLOOR(), which the rollups use on both backends, where SQLite was built
    without its math functions."""
    try:
        conn.execute("SELECT FLOOR(1.5)")
    except sqlite3.OperationalError:
        conn.create_function("FLOOR", 1, math.floor, deterministic=True)


class SQLiteStore(Store):
    dialect = "sqlite"
    types: ClassVar[dict[str, str]] = {
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "blob": "BLOB",
        "real": "REAL",
        "text": "TEXT",
        "table": "",
    }

    def __init__(self, path: Path, busy_timeout: float = 10.0):
        self.path = path
        self.url = f"sqlite://{path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            _ensure_floor(self.conn)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create database directory: {exc.strerror}") from None
        except sqlite3.Error as exc:
            raise _error(path, exc) from None

    @contextmanager
    def transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Cursor]:
        cur = self.conn.cursor()
        try:
            cur.execute(begin)
        except sqlite3.Error as exc:
            raise _error(self.path, exc) from None
        try:
            yield cur
            cur.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise _error(self.path, exc) from None
        except BaseException:
            self._rollback()
            raise

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Cursor]:
        with self.transaction("BEGIN") as cur:
            yield cur

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the transaction is gone already; nothing was committed

    def execute(self, cur: sqlite3.Cursor, sql: str, params: Sequence[Any] = ()) -> Any:
        return cur.execute(sql, params)

    def executemany(self, cur: sqlite3.Cursor, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur.executemany(sql, rows)

    def _table_exists(self, cur: sqlite3.Cursor, name: str) -> bool:
        return cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                           (name,)).fetchone() is not None

    def close(self) -> None:
        self.conn.close()
