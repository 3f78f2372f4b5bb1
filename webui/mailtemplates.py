"""The templates pages: list, show, create, edit with a live preview, delete.

Saving goes through spoold.templates.save_template, as ``spoold templates
add|edit`` does: a template that does not compile or names a placeholder or
attribute nobody has is refused, every problem listed.  The preview is
spoold.templates.render_preview, the code ``spoold templates preview`` and
(through sender.render) the sender child use: the message a chosen contact
would receive, headers included.  On the editor, static/template-editor.js
asks ``/templates/preview.json`` for it as the text changes (debounced);
without JavaScript the editor's Preview button renders it on the server.
The HTML part is shown in a sandboxed frame (no scripts, no requests
elsewhere: the page's Content-Security-Policy applies to it).

Templates are named in query arguments (``/templates/edit?name=...``): a
name is any text, and a query argument carries any text safely.
"""

from __future__ import annotations

import email
import email.policy
from typing import Any

from flask import (Blueprint, abort, flash, jsonify, redirect, render_template, request,
                   url_for)
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from spoold import templates
from spoold.errors import NotFound, SpooldError, StoreError
from webui.auth import admin_required
from webui.pages import Text, text_arg, user_errors
from webui.storage import settings, store

bp = Blueprint("templates", __name__)

# Headers of the rendered message the preview shows.
SHOWN = ("From", "To", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post")


class TemplateForm(FlaskForm):
    name = Text("Name", validators=[DataRequired(), Length(max=191)])
    subject = StringField("Subject", validators=[DataRequired()])
    text = TextAreaField("Text body", validators=[DataRequired()], render_kw={"rows": 12})
    html = TextAreaField("HTML body (optional)", render_kw={"rows": 8})
    contact = Text("Preview for contact", validators=[Length(max=320)])
    save = SubmitField("Save")
    preview = SubmitField("Preview")


def _draft(form: TemplateForm) -> dict[str, Any]:
    """The form's template as save_template and render_preview take it (browsers send
    CRLF line ends; templates are stored with LF, as files give them)."""
    def text(value: str | None) -> str:
        return (value or "").replace("\r\n", "\n")
    return {"subject": text(form.subject.data), "text": text(form.text.data),
            "html": text(form.html.data) or None}


def _sample_contact() -> str | None:
    first = store().contacts(limit=1)
    return first[0]["email"] if first else None


def _preview(template: dict[str, Any], contact: str | None) -> dict[str, Any]:
    """What the preview panel shows: the rendered message's headers and parts, or why not."""
    if not contact:
        return {"error": "Add a contact to preview the template for it."}
    try:
        message = email.message_from_bytes(
            templates.render_preview(settings(), store(), template, contact),
            policy=email.policy.default)
    except StoreError:
        raise
    except SpooldError as exc:
        return {"error": str(exc), "contact": contact}
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    return {"contact": contact,
            "headers": [[name, str(message[name]).strip()] for name in SHOWN if message[name]],
            "text": _lines(text.get_content()) if text else "",
            "html": _lines(html.get_content()) if html else None}


def _lines(content: str) -> str:
    return content.replace("\r\n", "\n")


def _template_or_404(name: str | None) -> dict[str, Any]:
    if name is None:
        abort(400, "name the template (?name=...)")
    try:
        return store().template(name)
    except NotFound as exc:
        abort(404, str(exc))


@bp.route("/templates")
@login_required
def index() -> str:
    return render_template("templates.html", templates=store().templates(),
                           admin=current_user.is_admin)


@bp.route("/templates/show")
@login_required
def show() -> str:
    template = _template_or_404(text_arg("name"))
    contact = text_arg("contact") or _sample_contact()
    return render_template("template.html", t=template, preview=_preview(template, contact),
                           admin=current_user.is_admin)


def _editor(form: TemplateForm, template: dict[str, Any] | None) -> Any:
    """The editor page; a submitted form is saved (Save) or only previewed."""
    creating = template is None
    status = 200
    if form.validate_on_submit() and form.save.data:
        name = form.name.data if creating else template["name"]
        draft = _draft(form)
        with user_errors() as outcome:
            templates.save_template(store(), name, draft["subject"], draft["text"],
                                    draft["html"], create=creating)
        if outcome.ok:
            flash(f"Template {name} {'added' if creating else 'saved'}.", "ok")
            return redirect(url_for("templates.edit", name=name))
        status = 400
    elif form.is_submitted() and form.errors:
        status = 400
    contact = form.contact.data or _sample_contact()
    form.contact.data = contact
    return render_template("template_form.html", form=form, template=template,
                           preview=_preview(_draft(form), contact)), status


@bp.route("/templates/new", methods=["GET", "POST"])
@admin_required
def new() -> Any:
    return _editor(TemplateForm(), None)


@bp.route("/templates/edit", methods=["GET", "POST"])
@admin_required
def edit() -> Any:
    template = _template_or_404(text_arg("name", request.args))
    form = TemplateForm(data={"name": template["name"], "subject": template["subject"],
                              "text": template["text"], "html": template["html"] or ""})
    form.name.render_kw = {"readonly": True}
    return _editor(form, template)


@bp.route("/templates/preview.json", methods=["POST"])
@admin_required
def preview() -> Any:
    """The preview of the draft in the form (saved or not), as JSON for the editor
    (admins': it renders any draft with any contact's data)."""
    form = TemplateForm()
    contact = form.contact.data or _sample_contact()
    return jsonify(_preview(_draft(form), contact))


@bp.route("/templates/delete", methods=["POST"])
@admin_required
def delete() -> Any:
    name = text_arg("name", request.form)
    with user_errors() as outcome:
        store().delete_template(name or "")
    if outcome.ok:
        flash(f"Template {name} deleted.", "ok")
        return redirect(url_for("templates.index"))
    return redirect(url_for("templates.edit", name=name))
