"""Shared pieces of the command modules: tables, times, a store per command."""

from __future__ import annotations

import argparse
import datetime
from typing import Any
from collections.abc import Callable, Sequence

from spoold.config import Config
from spoold.store import Store, store_for

Handler = Callable[[argparse.Namespace, Config], int]


def when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def with_store(fn: Callable[[argparse.Namespace, Config, Store], int]) -> Handler:
    """A handler that gets the configured store, closed afterwards."""
    def wrapper(args: argparse.Namespace, config: Config) -> int:
        store = store_for(config)
        try:
            return fn(args, config, store)
        finally:
            store.close()
    return wrapper
