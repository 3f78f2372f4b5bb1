"""The store: queue, delivery log and suppression list in SQLite or MariaDB.

``open_store(url)`` picks the backend from the URL scheme (sqlite:// or
mysql://).  Everything else in spoold talks to the returned ``Store``; only
this package knows SQL.
"""

from __future__ import annotations

from pathlib import Path

from spoold.config import Config
from spoold.errors import StoreError
from spoold.store.api import Store
from spoold.store.base import FINAL, PRIORITIES, STATES, Attempt, QueueRow
from spoold.store.bounces import BouncePolicy

__all__ = [
    "FINAL",
    "PRIORITIES",
    "STATES",
    "Attempt",
    "QueueRow",
    "Store",
    "open_store",
    "store_for",
]


def open_store(url: str, base_dir: Path | None = None, busy_timeout: float = 10.0) -> Store:
    """Connect to the database a URL names; relative SQLite paths start at ``base_dir``."""
    if url.startswith("sqlite://"):
        from spoold.store.sqlite import SQLiteStore

        path = Path(url[len("sqlite://"):])
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return SQLiteStore(path, busy_timeout)
    if url.startswith("mysql://"):
        from spoold.store.mysql import MySQLStore

        return MySQLStore(url)
    raise StoreError(f"{url}: unsupported database URL (use sqlite:// or mysql://)")


def store_for(config: Config, upgrade: bool = True) -> Store:
    """The configured store, its schema created or upgraded when ``upgrade``."""
    store = open_store(config.database.url, config.base_dir, config.database.busy_timeout)
    store.bounce_policy = BouncePolicy(config.bounces.soft_limit, config.bounces.soft_span)
    if upgrade:
        store.ensure_schema()
    return store
