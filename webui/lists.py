"""The lists page: contact lists with their member counts; create, delete, add and
remove members (admins), as ``spoold lists ...`` does, through the same store calls.

A list's members are the contacts page filtered by it (``/contacts?list=NAME``);
deleting a list keeps its contacts and is refused while a campaign uses it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import SelectField, SubmitField
from wtforms.validators import DataRequired, Length

from webui.auth import admin_required
from webui.pages import Lines, Text, text_lines, user_errors
from webui.storage import store

bp = Blueprint("lists", __name__)


class NewListForm(FlaskForm):
    name = Text("New list", validators=[DataRequired(), Length(max=191)])


class MembersForm(FlaskForm):
    name = SelectField("List", validators=[DataRequired()])
    emails = Lines("Contacts' addresses (one a line)", validators=[DataRequired()],
                           render_kw={"rows": 4})
    add = SubmitField("Add to the list")
    remove = SubmitField("Remove from the list")


class DeleteListForm(FlaskForm):
    name = Text(validators=[DataRequired()])


def _members_form() -> MembersForm:
    form = MembersForm(prefix="members")
    form.name.choices = store().list_names()
    return form


@bp.route("/lists")
@login_required
def index() -> str:
    return render_template("lists.html", lists=store().lists(), admin=current_user.is_admin,
                           new_form=NewListForm(prefix="new"), members=_members_form())


@bp.route("/lists/create", methods=["POST"])
@admin_required
def create() -> Any:
    form = NewListForm(prefix="new")
    if form.validate_on_submit():
        name = form.name.data
        with user_errors() as outcome:
            store().create_list(name)
        if outcome.ok:
            flash(f"List {name} created.", "ok")
    else:
        flash("Name the new list.", "error")
    return redirect(url_for("lists.index"))


@bp.route("/lists/delete", methods=["POST"])
@admin_required
def delete() -> Any:
    form = DeleteListForm()
    if form.validate_on_submit():
        with user_errors() as outcome:
            store().delete_list(form.name.data)
        if outcome.ok:
            flash(f"List {form.name.data} deleted (its contacts stay).", "ok")
    return redirect(url_for("lists.index"))


@bp.route("/lists/members", methods=["POST"])
@admin_required
def members() -> Any:
    form = _members_form()
    if not form.validate_on_submit():
        flash("Choose a list and give the contacts' addresses.", "error")
        return redirect(url_for("lists.index"))
    emails = text_lines(form.emails.data)
    adding = bool(form.add.data)
    with user_errors():
        method = store().add_to_list if adding else store().remove_from_list
        count = method(form.name.data, emails)
        flash(f"List {form.name.data}: {count} contact{'s' * (count != 1)} "
              f"{'added' if adding else 'removed'}.", "ok")
    return redirect(url_for("lists.index"))
