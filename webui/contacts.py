"""The contacts pages: search and page through contacts, show, add, edit,
unsubscribe, delete, and upload a CSV file of them.

``/contacts`` lists contacts in id order, a page at a time (keyset), all of
them or one list's (``list``), searched by address or name (``q``); admins
tick rows and send them a template (the send page).  ``/contacts/ID`` shows
one with its lists and attributes.  Every write goes through what ``spoold
contacts ...`` calls: Store.upsert_contacts (add, with an optional list),
Store.update_contact (edit: name and attributes replaced),
Store.unsubscribe_contact, Store.delete_contact (its queued mailout rows go
too, logged deleted), and spoold.contacts_import.import_contacts for the
upload, whose bad lines are listed one by one (``strict``: the whole file
refused when any line is bad, as ``--strict``).  Uploads are limited by the
application's request size (10 MB); larger files: ``spoold contacts import``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from werkzeug.utils import secure_filename
from wtforms import BooleanField
from wtforms.validators import DataRequired, Length

from spoold.address import parse_address
from spoold.contacts_import import import_contacts, parse_attributes
from spoold.errors import ContactsFileError, NotFound
from spoold.store.contacts import ContactIn
from webui.auth import admin_required
from webui.pages import Lines, Text, keyset_page, text_arg, user_errors
from webui.storage import settings, store

bp = Blueprint("contacts", __name__)


class ContactForm(FlaskForm):
    email = Text("Address", validators=[DataRequired(), Length(max=320)])
    name = Text("Name", validators=[Length(max=255)])
    attributes = Lines("Attributes (one NAME=VALUE a line)",
                               render_kw={"rows": 5, "placeholder": "city=Paris\nplan=pro"})
    list_name = Text("Add to list (made if new)", validators=[Length(max=191)])


class ImportForm(FlaskForm):
    file = FileField("CSV file (a header row: email, name, any attribute columns)",
                     validators=[FileRequired()], render_kw={"accept": ".csv,text/csv"})
    list_name = Text("Into list (made if new)", validators=[Length(max=191)])
    strict = BooleanField("Strict: refuse the whole file if any line is bad")


def _attributes_text(attributes: dict[str, Any]) -> str:
    return "\n".join(f"{k}={v}" for k, v in sorted(attributes.items()))


def _contact_or_404(contact_id: int) -> dict[str, Any]:
    try:
        return store().contact(contact_id=contact_id)
    except NotFound:
        abort(404, f"No contact with id {contact_id}: deleted?")


@bp.route("/contacts")
@login_required
def index() -> str:
    q, list_name = text_arg("q"), text_arg("list")
    try:
        page = keyset_page(lambda **kw: store().contacts(list_name=list_name, search=q, **kw),
                           settings().webui.page_size)
    except NotFound as exc:
        abort(404, str(exc))
    chosen = {k: v for k, v in (("q", q), ("list", list_name)) if v}
    return render_template("contacts.html", page=page, filter=chosen, lists=store().list_names(),
                           total=None if chosen else store().contact_count(),
                           admin=current_user.is_admin)


@bp.route("/contacts/<int:contact_id>")
@login_required
def show(contact_id: int) -> str:
    return render_template("contact.html", c=_contact_or_404(contact_id),
                           admin=current_user.is_admin)


@bp.route("/contacts/new", methods=["GET", "POST"])
@admin_required
def new() -> Any:
    form = ContactForm()
    if form.validate_on_submit():
        with user_errors() as outcome:
            contact = ContactIn(parse_address(form.email.data), form.name.data,
                                parse_attributes(form.attributes.data.splitlines()))
            counts = store().upsert_contacts([contact], form.list_name.data or None)
        if outcome.ok:
            flash(f"{contact.email}: {'added' if counts.inserted else 'updated'}.", "ok")
            return redirect(url_for("contacts.show",
                                    contact_id=store().contact(contact.email)["id"]))
    return render_template("contact_form.html", form=form, contact=None), \
        400 if form.is_submitted() else 200


@bp.route("/contacts/<int:contact_id>/edit", methods=["GET", "POST"])
@admin_required
def edit(contact_id: int) -> Any:
    contact = _contact_or_404(contact_id)
    form = ContactForm(data={"email": contact["email"], "name": contact["name"],
                             "attributes": _attributes_text(contact["attributes"])})
    del form.list_name  # lists: the lists page
    form.email.render_kw = {"readonly": True}
    if form.validate_on_submit():
        with user_errors() as outcome:
            store().update_contact(contact["email"], form.name.data,
                                   parse_attributes(form.attributes.data.splitlines()))
        if outcome.ok:
            flash(f"{contact['email']}: saved.", "ok")
            return redirect(url_for("contacts.show", contact_id=contact_id))
    return render_template("contact_form.html", form=form, contact=contact), \
        400 if form.is_submitted() else 200


@bp.route("/contacts/<int:contact_id>/unsubscribe", methods=["POST"])
@admin_required
def unsubscribe(contact_id: int) -> Any:
    contact = _contact_or_404(contact_id)
    changed = store().unsubscribe_contact(contact["email"])
    flash(f"{contact['email']}: {'unsubscribed' if changed else 'was already unsubscribed'}.",
          "ok")
    return redirect(url_for("contacts.show", contact_id=contact_id))


@bp.route("/contacts/<int:contact_id>/delete", methods=["POST"])
@admin_required
def delete(contact_id: int) -> Any:
    contact = _contact_or_404(contact_id)
    dropped = store().delete_contact(contact["email"])
    flash(f"{contact['email']}: deleted" + (f", {dropped} queued row{'s' * (dropped != 1)} "
                                            "removed" if dropped else "") + ".", "ok")
    return redirect(url_for("contacts.index"))


@bp.route("/contacts/import", methods=["GET", "POST"])
@admin_required
def upload() -> Any:
    form = ImportForm()
    report, refused = None, None
    if form.validate_on_submit():
        upload = form.file.data
        name = secure_filename(upload.filename or "") or "upload.csv"
        list_name = form.list_name.data or None
        try:
            report = import_contacts(store(), upload.stream, list_name, form.strict.data,
                                     show_progress=False, name=name)
        except ContactsFileError as exc:
            refused = str(exc).splitlines()
        else:
            flash(f"{name}: {report.inserted} contact{'s' * (report.inserted != 1)} added, "
                  f"{report.updated} updated" + (f", {len(report.bad)} bad line"
                                                 f"{'s' * (len(report.bad) != 1)} skipped"
                                                 if report.bad else "")
                  + (f" (list {list_name})" if list_name else "") + ".",
                  "error" if report.bad else "ok")
    status = 400 if refused or (form.is_submitted() and report is None) else 200
    return render_template("contacts_import.html", form=form, report=report,
                           refused=refused), status
