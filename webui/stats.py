"""The statistics page: charts, top destination domains, the delivery log, CSV.

``/stats`` shows attempts per hour (48 hours) and per day (30 days) as SVG
charts (``/stats/hourly.svg``, ``/stats/daily.svg``, charts.py), the busiest
destination domains of the last 7 days with their rates and last error, the
latest mailouts' totals (attempts by status from the rollup delivery_by_mailout)
and the delivery log newest first, searchable by recipient (exact address) or
queue id, a page at a time.  ``/stats/deliveries.csv`` streams the same
search as CSV (with the mailout of each attempt, if any), all of it, read in
keyset batches so memory stays flat.

Every figure comes from the log's rollups or an indexed lookup (see
spoold/store/stats.py): the page costs the same on a log of a million rows.
"""

from __future__ import annotations

import csv
import datetime
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, render_template, stream_with_context
from flask_login import login_required

from webui import charts
from webui.pages import keyset_page, local_midnight, text_arg
from webui.storage import settings, store

bp = Blueprint("stats", __name__)

HOURS, DAYS, TOP_DAYS, MAILOUTS = 48, 30, 7, 10
CSV_BATCH = 1000
CSV_COLUMNS = ("time", "log_id", "queue_id", "mailout", "sender", "recipient", "status", "code",
               "dsn", "relay", "delay", "attempt", "reply")
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def search() -> dict[str, Any]:
    """The deliveries search ``q``: digits are a queue id, anything else a recipient."""
    q = text_arg("q")
    if q is None:
        return {}
    return {"queue_id": int(q)} if q.isdigit() else {"recipient": q}


def _domain_rates(entry: dict[str, Any]) -> dict[str, Any]:
    final = entry["sent"] + entry["bounced"] + entry["expired"]
    return {**entry,
            "delivered_rate": entry["sent"] / final if final else None,
            "deferred_rate": entry["deferred"] / entry["attempts"] if entry["attempts"] else None}


@bp.route("/stats")
@login_required
def index() -> str:
    found = search()
    page = keyset_page(lambda **kw: store().deliveries(**found, **kw),
                       settings().webui.page_size, newest_first=True)
    since = time.time() - TOP_DAYS * 86400
    domains = [_domain_rates(d) for d in store().top_domains(since)]
    return render_template("stats.html", page=page, q=text_arg("q") or "", domains=domains,
                           top_days=TOP_DAYS, hours=HOURS, days=DAYS,
                           mailouts=store().mailouts(limit=MAILOUTS))


def _svg(body: str) -> Response:
    response = Response(body, mimetype="image/svg+xml")
    response.headers["Content-Security-Policy"] = _SVG_CSP
    return response


@bp.route("/stats/hourly.svg")
@login_required
def hourly() -> Response:
    start = time.time() - (HOURS - 1) * 3600
    return _svg(charts.hourly(store().delivery_series(start, 3600), start, HOURS))


@bp.route("/stats/daily.svg")
@login_required
def daily() -> Response:
    today = datetime.date.today()
    days = [today - datetime.timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    start = local_midnight(time.time()) - (DAYS - 1) * 86400
    return _svg(charts.daily(store().delivery_series(start, 3600), days))


class _Line:
    """A file-like target for csv.writer that hands back each line written."""

    def write(self, text: str) -> str:
        return text


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return "" if value is None else value


def _csv_lines(found: dict[str, Any]) -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(CSV_COLUMNS)
    before = None
    while rows := store().deliveries(**found, limit=CSV_BATCH, before=before):
        for r in rows:
            stamp = datetime.datetime.fromtimestamp(r["at"]).astimezone()
            yield writer.writerow([_cell(v) for v in (
                stamp.isoformat(timespec="seconds"), r["id"], r["notify_id"], r["mailout_id"],
                r["sender"],
                r["recipient"], r["status"], r["code"], r["dsn"], r["relay"],
                f"{r['delay']:.3f}", r["attempt"], r["reply"])])
        before = rows[-1]["id"]


@bp.route("/stats/deliveries.csv")
@login_required
def deliveries_csv() -> Response:
    found = search()
    name = "spoold-deliveries" + "".join(f"-{v}" for v in found.values() if str(v).isalnum())
    response = Response(stream_with_context(_csv_lines(found)), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    return response
