"""What every page shares: keyset pagination, query arguments, formats, user errors.

A part of the UI pages any long list with ``keyset_page``: the store reads
``limit + 1`` rows after (or before) the id bounding the page, so page
20,000 costs what page 1 does and the extra row tells whether another page
follows.  Templates render the result
with the ``pager`` macro (templates/macros.html).

Forms act through the functions the CLI calls; what they refuse (a
SpooldError: a bad address, an unknown list, a template that does not
compile) is the user's to fix, so ``user_errors`` shows it on the page as
the CLI would print it.  The database's own failures (StoreError) are not
caught there: the application's error pages say them (app.py).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Flask, abort, flash, request
from wtforms import StringField, TextAreaField

from spoold.cli.common import when
from spoold.errors import SpooldError, StoreError

@dataclass
class Page:
    rows: list[dict[str, Any]]
    next_args: dict[str, int] | None  # query arguments of the following page
    prev_args: dict[str, int] | None  # ... and of the one before


def keyset_page(fetch: Callable[..., list[dict[str, Any]]], size: int,
                newest_first: bool = False) -> Page:
    """One page of ``fetch(limit=, after=, before=)`` bounded by the request's
    ``after`` / ``before`` id; ``newest_first`` lists go on with ``before``."""
    after, before = int_arg("after"), int_arg("before")
    onward, back = ("before", "after") if newest_first else ("after", "before")
    bounds = {"after": after, "before": before}
    going_back = bounds[back] is not None and bounds[onward] is None
    rows = fetch(limit=size + 1, after=after, before=before)
    more = len(rows) > size
    if more:
        rows = rows[1:] if going_back else rows[:size]
    has_next = going_back or more
    has_prev = more if going_back else bounds[onward] is not None
    return Page(rows,
                {onward: rows[-1]["id"]} if rows and has_next else None,
                {back: rows[0]["id"]} if rows and has_prev else None)


def int_arg(name: str, source: Any = None) -> int | None:
    """A whole-number query argument, None when absent or empty; 400 when malformed."""
    raw = (source or request.args).get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        abort(400, f"{name} must be a whole number, not {raw[:40]!r}")
    return int(raw)


def text_arg(name: str, source: Any = None) -> str | None:
    """A query argument with its spaces trimmed, None when absent or empty."""
    value = (source or request.args).get(name, "").strip()
    return value or None


def _stripped(value: str | None) -> str:
    return (value or "").strip()


class Text(StringField):
    """A one-line form field: its text without surrounding blanks, "" when absent."""

    def __init__(self, label: str | None = None, validators: Any = None, **kwargs: Any):
        super().__init__(label, validators, filters=[_stripped], **kwargs)


class Lines(TextAreaField):
    """A text area of items: its text without surrounding blanks, "" when absent."""

    def __init__(self, label: str | None = None, validators: Any = None, **kwargs: Any):
        super().__init__(label, validators, filters=[_stripped], **kwargs)


def text_lines(text: str | None) -> list[str]:
    """The non-blank lines (or comma-separated items) of a form's text area."""
    return [item.strip() for item in (text or "").replace(",", "\n").splitlines()
            if item.strip()]


@dataclass
class Outcome:
    ok: bool = True


@contextmanager
def user_errors() -> Iterator[Outcome]:
    """Run a form's action: a SpooldError (but a database failure) is flashed as an
    error and ends the block; ``outcome.ok`` says whether it ran through."""
    outcome = Outcome()
    try:
        yield outcome
    except StoreError:
        raise
    except SpooldError as exc:
        flash(str(exc), "error")
        outcome.ok = False


def local_midnight(now: float) -> float:
    today = datetime.datetime.fromtimestamp(now).date()
    return datetime.datetime.combine(today, datetime.time()).timestamp()


def _ago(epoch: float | None) -> str:
    if not epoch:
        return "-"
    seconds = max(0, int(time.time() - epoch))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _iso(epoch: float | None) -> str:
    if not epoch:
        return ""
    return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def install_filters(app: Flask) -> None:
    app.add_template_filter(when, "when")
    app.add_template_filter(_ago, "ago")
    app.add_template_filter(_number, "number")
    app.add_template_filter(_iso, "iso")
