"""The unsubscribe endpoint of mailout messages: public, no login, no cookie.

Each mailout message links to ``/unsubscribe/TOKEN`` ([mailout]
unsubscribe_url, which must name this UI as recipients reach it) and says
so in its List-Unsubscribe header, with List-Unsubscribe-Post (RFC 8058).

    GET  /unsubscribe/TOKEN   a page asking to confirm (a link scanner that
                              follows the link unsubscribes nobody)
    POST /unsubscribe/TOKEN   records it: the confirm page's button, or a mail
                              client's one-click POST with the body
                              ``List-Unsubscribe=One-Click`` (RFC 8058), which
                              comes without cookies or JavaScript

Recording is spoold.unsubscribe.unsubscribe: the token checked against the
unsubscribe secret, then Store.record_unsubscribe (the contact marked, its
address suppressed, the mailout's counter), once: again changes nothing.
A malformed or forged token gets a plain 400 page; a contact deleted since
a 404; a test send's token (contact 0) is valid and unsubscribes nobody.

The POST takes no CSRF token (app.py exempts this view alone): the token in
the URL is the credential, and whoever holds it may unsubscribe its
recipient anyway, so a cross-site request can do nothing a direct one
cannot; and RFC 8058 clients send no session to carry a CSRF token.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from spoold.errors import BadToken, NotFound
from spoold.log import get_logger
from spoold.unsubscribe import check_token, secret_for, unsubscribe
from webui.storage import settings, store

bp = Blueprint("unsubscribe", __name__)

ONE_CLICK = "One-Click"  # the value of List-Unsubscribe in an RFC 8058 POST body


def _page(state: str, status: int = 200, **context: Any) -> Any:
    return render_template("unsubscribe.html", state=state, **context), status


@bp.route("/unsubscribe/<token>", methods=["GET"])
def confirm(token: str) -> Any:
    try:
        contact_id, _ = check_token(secret_for(settings(), store()), token)
    except BadToken:
        return _page("invalid", 400)
    if contact_id == 0:
        return _page("test")
    try:
        contact = store().contact(contact_id=contact_id)
    except NotFound:
        return _page("gone", 404)
    if contact["unsubscribed_at"] is not None:
        return _page("done", email=contact["email"])
    return _page("confirm", email=contact["email"], token=token)


@bp.route("/unsubscribe/<token>", methods=["POST"])
def answer(token: str) -> Any:
    one_click = request.form.get("List-Unsubscribe") == ONE_CLICK
    try:
        done = unsubscribe(settings(), store(), token)
    except BadToken:
        return _page("invalid", 400)
    except NotFound:
        return _page("gone", 404)
    get_logger().info("unsubscribe", contact=done.contact_id, mailout=done.mailout_id,
                      changed=done.changed, one_click=one_click)
    if done.contact_id == 0:
        return _page("test")
    return _page("done")
