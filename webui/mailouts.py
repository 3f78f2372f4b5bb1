"""The mailouts pages: every mailout with its progress, one with all its counters,
and the operator's pause / resume / cancel.

``/mailouts`` lists mailouts newest first, a page at a time (keyset), each
with a progress bar: recipients with a final outcome (or skipped as
unsubscribed or suppressed) out of those selected so far, from the log's
rollup delivery_by_mailout (Store.mailouts), never counted from the log.
``/mailouts/ID`` shows what ``spoold mailout show`` does (Store.mailout:
where every recipient is, queue and log) and links to its queue rows
(``/queue?mailout=ID``).  The verbs are the store's, as the CLI's:
pause holds the queued rows, resume releases them (and pokes the runner),
cancel removes them, each logged cancelled.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from spoold.errors import NotFound
from spoold.poke import poke
from spoold.store import PRIORITIES
from spoold.store.mailouts import ACTIVE, LIVE
from webui.auth import admin_required
from webui.pages import keyset_page, user_errors
from webui.storage import settings, store

bp = Blueprint("mailouts", __name__)

# Verb -> (store method, the states it applies to, what the flash message says it did).
ACTIONS = {"pause": ("pause_mailout", LIVE, "paused, {n} queued row{s} held"),
           "resume": ("resume_mailout", ("paused",), "resumed, {n} row{s} released"),
           "cancel": ("cancel_mailout", ACTIVE, "cancelled, {n} queued row{s} removed")}
# The counters of Store.mailout, in the order the page shows them.
COUNTERS = ("total", "queued", "deferred", "sending", "held", "sent", "bounced", "expired",
            "cancelled", "deleted", "skipped_unsubscribed", "skipped_suppressed",
            "unsubscribed")
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}


@bp.route("/mailouts")
@login_required
def index() -> str:
    page = keyset_page(store().mailouts, settings().webui.page_size, newest_first=True)
    return render_template("mailouts.html", page=page)


@bp.route("/mailouts/<int:mailout_id>")
@login_required
def show(mailout_id: int) -> str:
    try:
        mailout = store().mailout(mailout_id)
    except NotFound as exc:
        abort(404, str(exc))
    counters = mailout["counters"]
    done = counters["total"] - counters["queued"] - counters["sending"] - counters["held"]
    actions = [verb for verb, (_, states, _) in ACTIONS.items() if mailout["status"] in states]
    return render_template("mailout.html", mo=mailout, counters=COUNTERS, done=max(done, 0),
                           priority=PRIORITY_NAMES.get(mailout["priority"]),
                           actions=actions if current_user.is_admin else [])


@bp.route("/mailouts/<int:mailout_id>/action", methods=["POST"])
@admin_required
def action(mailout_id: int) -> Any:
    verb = request.form.get("action", "")
    if verb not in ACTIONS:
        abort(400, f"unknown action {verb[:40]!r}")
    method, _, done = ACTIONS[verb]
    with user_errors():
        count = getattr(store(), method)(mailout_id)
        flash(f"Mailout {mailout_id}: " + done.format(n=count, s="s" * (count != 1)) + ".",
              "ok")
        if verb == "resume":
            poke(settings().runner.run_dir)
    return redirect(url_for("mailouts.show", mailout_id=mailout_id))
