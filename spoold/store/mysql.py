"""MariaDB/MySQL backend (PyMySQL): one queue shared by runners on several hosts.

Claims lock the rows they select with FOR UPDATE SKIP LOCKED, so runners
claiming at the same moment take disjoint rows without waiting for each
other; transactions run at READ COMMITTED to keep InnoDB's locks to the rows
actually read.  A lost connection (server restart, network) raises
StoreUnavailable and the next transaction reconnects, so the runner can wait
and resume instead of crashing.  Schema upgrades take a named lock
(GET_LOCK) because MariaDB's DDL is not transactional.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar
from collections.abc import Iterator, Sequence
from urllib.parse import unquote, urlsplit

import pymysql

from spoold.errors import StoreError, StoreUnavailable
from spoold.store.api import Store

# Client and server errors that mean "the server is not there right now".
_GONE = {2002, 2003, 2006, 2013, 2055, 1040, 1053, 1205, 1213}


class MySQLStore(Store):
    dialect = "mysql"
    claim_lock = " FOR UPDATE SKIP LOCKED"
    row_lock = " FOR UPDATE"
    insert_ignore = "INSERT IGNORE"
    json_value = "JSON_VALUE({column}, ?)"
    add_on_conflict = " ON DUPLICATE KEY UPDATE n = n + VALUES(n)"
    types: ClassVar[dict[str, str]] = {
        "serial": "BIGINT AUTO_INCREMENT PRIMARY KEY",
        "blob": "LONGBLOB",
        "real": "DOUBLE",
        "text": "TEXT",
        "table": " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    }

    def __init__(self, url: str, connect_timeout: float = 10.0):
        parts = urlsplit(url)
        self.url = url
        self.display = f"mysql://{parts.hostname}:{parts.port or 3306}{parts.path}"
        self.params = {
            "host": parts.hostname or "localhost",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "database": parts.path.lstrip("/"),
            "connect_timeout": connect_timeout,
            "autocommit": False,
            "charset": "utf8mb4",
        }
        if not self.params["database"]:
            raise StoreError(f"{self.display}: the URL names no database")
        self.conn: pymysql.connections.Connection | None = None
        self._connect()

    def _connect(self) -> pymysql.connections.Connection:
        if self.conn is None:
            try:
                self.conn = pymysql.connect(**self.params)
                with self.conn.cursor() as cur:
                    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            except pymysql.MySQLError as exc:
                self.conn = None
                raise self._error(exc) from None
        return self.conn

    def _error(self, exc: pymysql.MySQLError) -> StoreError:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        text = exc.args[1] if len(exc.args) > 1 else str(exc)
        if code in _GONE or isinstance(exc, pymysql.err.InterfaceError):
            self._drop()
            return StoreUnavailable(f"{self.display}: {text}")
        return StoreError(f"{self.display}: ({code}) {text}")

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except pymysql.MySQLError:
                pass  # closing a dead connection; it is being discarded anyway
            self.conn = None

    @contextmanager
    def transaction(self, write: bool = True, durable: bool = True) -> Iterator[Any]:
        conn = self._connect()
        try:
            conn.begin()
            cur = conn.cursor()
        except pymysql.MySQLError as exc:
            raise self._error(exc) from None
        try:
            yield cur
            conn.commit()
        except pymysql.MySQLError as exc:
            self._rollback(conn)
            raise self._error(exc) from None
        except BaseException:
            self._rollback(conn)
            raise
        finally:
            cur.close()

    def _rollback(self, conn: pymysql.connections.Connection) -> None:
        try:
            conn.rollback()
        except pymysql.MySQLError:
            self._drop()

    def execute(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(sql.replace("?", "%s"), tuple(params))
        return cur

    def executemany(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])

    def _schema_lock(self, cur: Any) -> None:
        self.execute(cur, "SELECT GET_LOCK('spoold_schema', 60)")

    def _table_exists(self, cur: Any, name: str) -> bool:
        self.execute(cur, "SELECT 1 FROM information_schema.tables WHERE table_schema = "
                          "DATABASE() AND table_name = ?", (name,))
        return cur.fetchone() is not None

    def close(self) -> None:
        self._drop()
