"""The queue page: the mailq view, its filters, and the operator verbs.

``/queue`` lists queue rows in id order, filtered by state, domain,
recipient (exact address) and mailout (its id), a page at a time (keyset: ``after`` / ``before``
an id); ``/queue/ID`` shows one row, its message's headers and its
attempts.  Admins tick rows, or "every row matching the filter", and hold,
release, requeue or delete them: ``POST /queue/action``, CSRF-protected,
through the store's operator verbs (the ones ``spoold hold`` etc. use);
releasing and requeueing poke the runner so the rows leave at once.
"""

from __future__ import annotations

import email.policy
import time
from email.parser import BytesHeaderParser
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from spoold.errors import NotFound
from spoold.poke import poke
from spoold.store import STATES
from webui.auth import admin_required
from webui.pages import int_arg, keyset_page, text_arg
from webui.storage import settings, store

bp = Blueprint("queue", __name__)

FILTERS = ("state", "domain", "recipient", "mailout")
# Verb in the form -> store method, and what the flash message says it did.
ACTIONS = {"hold": ("hold", "held"), "release": ("release_held", "released"),
           "requeue": ("requeue", "requeued"), "delete": ("delete", "deleted")}
COUNT_CAP = 10_000
# Message headers shown on a row's page.
HEADERS = ("Subject", "From", "To", "Cc", "Date", "Message-ID")


def current_filter(source: Any = None) -> dict[str, Any]:
    """The filter named by the query (or form) arguments; 400 on an unknown state."""
    chosen: dict[str, Any] = {name: text_arg(name, source) for name in FILTERS}
    chosen["mailout"] = int_arg("mailout", source)
    if chosen["state"] is not None and chosen["state"] not in STATES:
        abort(400, f"state must be one of {', '.join(STATES)}")
    return {name: value for name, value in chosen.items() if value is not None}


@bp.route("/queue")
@login_required
def index() -> str:
    chosen = current_filter()
    page = keyset_page(lambda **kw: store().queue_rows(**chosen, **kw),
                       settings().webui.page_size)
    matching = store().queue_count(**chosen, cap=COUNT_CAP + 1)
    return render_template("queue.html", page=page, filter=chosen, states=STATES,
                           matching=matching, cap=COUNT_CAP, now=time.time(),
                           actions=ACTIONS if current_user.is_admin else {})


@bp.route("/queue/<int:queue_id>")
@login_required
def row(queue_id: int) -> str:
    found = store().queue_row(queue_id)
    if found is None:
        abort(404, f"No queued mail with id {queue_id}: it was sent, bounced, expired or "
                   "deleted (see Statistics, deliveries).")
    body = store().bodies([found["message_id"]]).get(found["message_id"], b"")
    headers = BytesHeaderParser(policy=email.policy.default).parsebytes(body)
    shown = [(name, str(headers[name])) for name in HEADERS if headers[name] is not None]
    attempts = store().deliveries(queue_id=queue_id, limit=settings().webui.page_size)
    return render_template("queue_row.html", r=found, headers=shown, size=len(body),
                           attempts=attempts, now=time.time(),
                           actions=ACTIONS if current_user.is_admin else {})


@bp.route("/queue/action", methods=["POST"])
@admin_required
def action() -> Any:
    verb = request.form.get("action", "")
    if verb not in ACTIONS:
        abort(400, f"unknown action {verb[:40]!r}")
    method, done = ACTIONS[verb]
    chosen = current_filter(request.form)
    ids = request.form.getlist("id", type=int)
    whole = request.form.get("scope") == "filter"
    if not ids and not whole:
        flash("Tick the rows to act on, or choose every row matching the filter.", "error")
    else:
        try:
            count = getattr(store(), method)(**({"ids": ids} if not whole else chosen))
        except NotFound as exc:
            flash(f"Nothing changed: {exc} (sent or removed meanwhile?).", "error")
        else:
            flash(f"{count:,} row{'s' if count != 1 else ''} {done}.", "ok")
            if verb in ("release", "requeue") and count:
                poke(settings().runner.run_dir)
    return redirect(url_for("queue.index", **chosen))
