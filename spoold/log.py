"""Logging set-up: structlog, key=value for people, JSON for journald.

One event per delivery attempt (the runner's ``delivery`` event: queue id,
to, relay, delay, dsn, status, reply, as in Postfix's maillog line) plus the
runner's lifecycle events.  ``format = auto`` picks JSON when systemd started
the process (JOURNAL_STREAM or INVOCATION_ID is set).  Logs go to stderr;
message bodies and database passwords never reach them.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def _json_wanted(fmt: str) -> bool:
    if fmt == "auto":
        return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    return fmt == "json"


def configure(fmt: str = "auto", level: str = "info") -> None:
    renderer = (structlog.processors.JSONRenderer() if _json_wanted(fmt)
                else structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"],
                                                          bool_as_flag=False))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger().bind(**context)
