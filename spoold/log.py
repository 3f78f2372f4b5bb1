"""Logging set-up: structlog, key=value for people, JSON for journald.

One event per delivery attempt (the runner's ``delivery`` event: queue id,
to, relay, delay, dsn, status, reply, as in Postfix's maillog line) plus the
runner's lifecycle events.  ``format = auto`` picks JSON when systemd started
the process (JOURNAL_STREAM or INVOCATION_ID is set).  When stderr is the
journal itself (JOURNAL_STREAM names its device and inode, systemd.exec(5))
events carry no timestamp: journald stamps every entry already.

Events go to stderr, or for ``spoold run`` to ``[log] file`` when set: a
file opened for appending and reopened on SIGUSR1 (``reopen()``), so that
logrotate can move it away and signal the runner (docs/OPERATIONS.md).
Message bodies and database passwords never reach the log.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

import structlog

from spoold.errors import ConfigError


class _Stream:
    """Writes to whatever ``self.stream`` is at the time of each call."""

    stream: IO[str]

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()


class LogFile(_Stream):
    """An append-only log file whose handle can be swapped for a fresh one.

    Loggers keep this object, not the handle, so a reopen reaches all of them.
    """

    def __init__(self, path: Path):
        self.path = path
        self.stream = self._open()

    def _open(self) -> IO[str]:
        return open(self.path, "a", buffering=1, encoding="utf-8")

    def reopen(self) -> None:
        fresh = self._open()
        self.stream, stale = fresh, self.stream
        stale.close()

    def close(self) -> None:
        self.stream.close()


class _Stderr(_Stream):
    """Whatever sys.stderr is when an event is written: a program (or a test) that
    embeds spoold and swaps sys.stderr later still gets the events, and a
    closed old stream is never written to."""

    @property
    def stream(self) -> IO[str]:
        return sys.stderr


_target: _Stderr | LogFile = _Stderr()


def _json_wanted(fmt: str) -> bool:
    if fmt == "auto":
        return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    return fmt == "json"


def writes_to_journal(stream: Any) -> bool:
    """Whether ``stream`` is the journal stream systemd connected (JOURNAL_STREAM=dev:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


def log_file(config: Any) -> Path | None:
    """``[log] file`` as a path (relative to the settings file's directory), or None."""
    if not config.log.file:
        return None
    return config.base_dir / config.log.file


def configure(fmt: str = "auto", level: str = "info", file: Path | None = None) -> None:
    """Set up structlog; events go to ``file`` (appending) or, without one, stderr."""
    global _target
    target: _Stderr | LogFile = _Stderr()
    if file is not None:
        try:
            target = LogFile(file)
        except OSError as exc:
            raise ConfigError(f"log.file: {file}: {exc.strerror}") from None
    if isinstance(_target, LogFile):
        _target.close()
    _target = target
    renderer = (structlog.processors.JSONRenderer() if _json_wanted(fmt)
                else structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"],
                                                          bool_as_flag=False))
    stamp = [] if writes_to_journal(target) else [structlog.processors.TimeStamper(fmt="iso",
                                                                                  utc=False)]
    structlog.configure(
        processors=[structlog.processors.add_log_level, *stamp, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(target),
        cache_logger_on_first_use=False,
    )


def reopen() -> None:
    """SIGUSR1: reopen the log file (a no-op when logging to stderr); logs the outcome."""
    if not isinstance(_target, LogFile):
        return
    try:
        _target.reopen()
    except OSError as exc:
        get_logger().error("log_reopen_failed", path=str(_target.path), error=exc.strerror,
                           action="still writing to the old file")
        return
    get_logger().info("log_reopened", path=str(_target.path))


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger().bind(**context)
