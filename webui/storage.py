"""One store connection per request thread, and the settings, for the views.

A store holds one database connection, which is not safe to share between
threads (SQLite transactions, PyMySQL), and waitress serves requests from a
fixed pool of threads: each thread opens its store on first use and keeps
it.  A MariaDB store reconnects by itself after the server went away.
"""

from __future__ import annotations

import threading

from flask import Flask, current_app

from spoold.config import Config
from spoold.store import Store, store_for

_KEY = "spoold"


class ThreadStores:
    """The configured store, opened once per thread."""

    def __init__(self, config: Config):
        self.config = config
        self._local = threading.local()
        self._opened: list[Store] = []
        self._lock = threading.Lock()

    def get(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = store_for(self.config, upgrade=False)
            with self._lock:
                self._opened.append(store)
        return store

    def close(self) -> None:
        with self._lock:
            for store in self._opened:
                store.close()
            self._opened.clear()
        self._local = threading.local()


def install(app: Flask, config: Config) -> ThreadStores:
    stores = ThreadStores(config)
    app.extensions[_KEY] = stores
    return stores


def store() -> Store:
    """This thread's store, for the application handling the request."""
    return current_app.extensions[_KEY].get()


def settings() -> Config:
    return current_app.extensions[_KEY].config
