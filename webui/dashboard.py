"""The dashboard: queue and delivery counters, runner status, live.

``/`` renders the counters once (the page works without JavaScript);
static/dashboard.js then asks ``/dashboard.json`` every
``webui.poll_interval`` seconds and updates them in place: each number by
its path in the JSON, and the runner and mailout lists from HTML the server
renders with the same templates as the page (escaped by Jinja).  ``counters()``
is also what the API's /api/v1/counters returns.

What each figure is:
    queued    rows waiting for their first attempt (or a scheduled time)
    deferred  rows waiting for a retry after a temporary failure
    sending   rows a runner has claimed (state active)
    held      rows set aside by an operator
    today / last hour   attempts logged since local midnight / in the last
              60 minutes (to the minute), by status
    runners   each runner's heartbeat row, every column of it, with
              ``up`` (heartbeat younger than webui.heartbeat_timeout) and
              ``heartbeat_age`` in seconds
    mailouts  mailouts under way or paused, and those that ended in the last
              hour, newest first: id, name (the template's), status, test
              (a test send), done and total (recipients with a final outcome
              or skipped, out of those selected so far), sent and bounced;
              from the mailout rows and the log's rollup delivery_by_mailout
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, jsonify, render_template
from flask_login import login_required

from spoold.store import Store
from webui.pages import local_midnight
from webui.storage import settings, store

bp = Blueprint("dashboard", __name__)

OUTCOMES = ("sent", "deferred", "bounced", "expired")
# Parts of the page re-rendered at each poll: templates/_NAME.html, data-fragment="NAME".
FRAGMENTS = ("runners", "mailouts")
# Mailouts that ended this long ago still show, finished, on the dashboard.
ENDED_SHOWN = 3600


def counters(store: Store, heartbeat_timeout: float) -> dict[str, Any]:
    now = time.time()
    states = store.state_counts()
    today = store.delivery_counts(local_midnight(now))
    hour = store.delivery_counts(now - 3600)
    return {
        "at": now,
        "queue": {"queued": states["queued"] - states["deferred"],
                  "deferred": states["deferred"], "sending": states["active"],
                  "held": states["held"]},
        "today": {k: today.get(k, 0) for k in OUTCOMES},
        "last_hour": {k: hour.get(k, 0) for k in OUTCOMES},
        "runners": [runner_status(row, now, heartbeat_timeout) for row in store.runner_rows()],
        "mailouts": [mailout_progress(m) for m in store.active_mailouts(now - ENDED_SHOWN)],
    }


def mailout_progress(mailout: dict[str, Any]) -> dict[str, Any]:
    """What the dashboard shows of a mailout (Store.active_mailouts' rows)."""
    return {"id": mailout["id"], "name": mailout["template"], "status": mailout["status"],
            "test": bool(mailout["test_to"]), "done": mailout["done"],
            "total": mailout["total"], "sent": mailout["outcomes"].get("sent", 0),
            "bounced": mailout["outcomes"].get("bounced", 0)}


def runner_status(row: dict[str, Any], now: float, timeout: float) -> dict[str, Any]:
    """A runner's heartbeat row with its age and whether it counts as up."""
    age = max(0.0, now - row["heartbeat_at"])
    return {**row, "heartbeat_age": round(age, 1), "up": age <= timeout}


def _current() -> dict[str, Any]:
    return counters(store(), settings().webui.heartbeat_timeout)


@bp.route("/")
@login_required
def index() -> str:
    return render_template("dashboard.html", c=_current())


@bp.route("/dashboard.json")
@login_required
def data() -> Any:
    """The counters, and the page's lists rendered as HTML for the script to swap in."""
    c = _current()
    return jsonify({**c, "fragments": {name: render_template(f"_{name}.html", c=c)
                                       for name in FRAGMENTS}})
