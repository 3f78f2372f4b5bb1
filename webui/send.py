"""The send page: a template to chosen contacts, now or at a time, or first as a test.

Recipients are every contact of a list, the contacts a filter matches (the
``--where`` language of spoold/store/filters.py: ``city = Paris and plan !=
free``), the contacts named (ticked on the contacts page, which opens this
page with ``?contact=ADDRESS...``), or every contact.  "Send" creates the
mailout; "Send a test" creates a test-mode mailout that goes only to the
test addresses, rendered with one contact's fields, and leaves the form as
it was so the real one can follow.  Both go through
spoold.mailout_request.create_mailout, as ``spoold mailout create`` and the
API do: same defaults (now; expiry after runner.max_lifetime; bulk
priority; [mailout] sender), same checks, and the runner is poked.

Times are the server's local time (datetime-local fields; also "now" or
"+2h" where the browser lets text in).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import RadioField, SelectField, SubmitField
from wtforms.validators import DataRequired, Length, Optional

from spoold.cli.common import when
from spoold.mailout_request import MAILOUT_PRIORITIES, MailoutRequest, create_mailout
from spoold.store.mailouts import SELECTIONS
from webui.auth import admin_required
from webui.pages import Lines, Text, text_lines, user_errors
from webui.storage import settings, store

bp = Blueprint("send", __name__)

SELECTION_LABELS = {"list": "every contact of a list", "where": "the contacts a filter matches",
                    "contacts": "these contacts", "all": "every contact"}
_WHEN = {"type": "datetime-local", "step": 60}


class SendForm(FlaskForm):
    template = SelectField("Template", validators=[DataRequired()])
    selection = RadioField("Send to", choices=list(SELECTIONS), default="list")
    list_name = SelectField("List", validate_choice=False)
    where = Text("Filter", validators=[Length(max=2000)],
                        render_kw={"placeholder": "city = Paris and plan != free"})
    contacts = Lines("Contacts (one address a line)", render_kw={"rows": 4})
    send_at = Text("Send at (empty: now)", validators=[Optional()], render_kw=_WHEN)
    expires_at = Text("Expires at (empty: send at + the queue's lifetime)",
                             validators=[Optional()], render_kw=_WHEN)
    rate = Text("Rate (empty: as fast as delivery goes)", validators=[Length(max=20)],
                       render_kw={"placeholder": "500/h"})
    priority = SelectField("Priority", choices=MAILOUT_PRIORITIES, default="bulk")
    sender = Text("From", validators=[Length(max=320)])
    test_to = Text("Test addresses (comma-separated)", validators=[Length(max=2000)])
    test_contact = Text("Test as contact (empty: the first selected)",
                               validators=[Length(max=320)])
    send = SubmitField("Send")
    test = SubmitField("Send a test")


def _form() -> SendForm:
    """The form, its choices from the store; a GET's ``template``, ``list`` and
    ``contact`` arguments preselect (the contacts page's "send to ticked")."""
    ticked = request.args.getlist("contact")
    preset = {"template": request.args.get("template"), "list_name": request.args.get("list")}
    if ticked:
        preset.update(selection="contacts", contacts="\n".join(ticked))
    elif preset["list_name"]:
        preset["selection"] = "list"
    form = SendForm(data={k: v for k, v in preset.items() if v})
    form.template.choices = [t["name"] for t in store().templates()]
    form.list_name.choices = store().list_names()
    form.sender.render_kw = {"placeholder": settings().mailout_sender}
    return form


def _request(form: SendForm, test: bool) -> MailoutRequest:
    return MailoutRequest(
        template=form.template.data, selection=form.selection.data,
        list_name=form.list_name.data or None, where=form.where.data or None,
        contacts=text_lines(form.contacts.data), send_at=form.send_at.data or None,
        expires_at=form.expires_at.data or None, rate=form.rate.data or None,
        priority=form.priority.data, sender=form.sender.data or None,
        test_to=text_lines(form.test_to.data) if test else [],
        test_contact=(form.test_contact.data or None) if test else None)


@bp.route("/send", methods=["GET", "POST"])
@admin_required
def index() -> Any:
    form = _form()
    status = 200
    if form.validate_on_submit():
        test = bool(form.test.data)
        if test and not text_lines(form.test_to.data):
            flash("Give the test addresses to send the test to.", "error")
            status = 400
        else:
            with user_errors() as outcome:
                mailout_id, spec = create_mailout(settings(), store(), _request(form, test))
            if outcome.ok and test:
                flash(f"Test mailout {mailout_id}: to {', '.join(spec.test_to)}, "
                      f"{when(spec.send_at)}. Send the real one when it looks right.", "ok")
            elif outcome.ok:
                flash(f"Mailout {mailout_id}: scheduled for {when(spec.send_at)}.", "ok")
                return redirect(url_for("mailouts.show", mailout_id=mailout_id))
            else:
                status = 400
    elif form.is_submitted():
        status = 400
    return render_template("send.html", form=form, labels=SELECTION_LABELS), status
