"""The campaigns pages: campaigns on their timeline, one with its scenarios; create
a campaign and add scenarios (admins), as ``spoold campaign ...`` does.

A campaign sends to one list between its start and end; each scenario (a
template at a time within them) becomes a mailout when its time comes (the
runner does it, spoold/store/mailouts.py), shown with a link to it.  Times
and From are parsed by spoold.mailout_request, as the CLI's are; a
scenario outside the campaign's timeline is refused by the store.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import SelectField
from wtforms.validators import DataRequired, Length

from spoold.errors import NotFound
from spoold.mailout_request import parse_from, parse_time
from webui.auth import admin_required
from webui.pages import Text, text_arg, user_errors
from webui.storage import settings, store

bp = Blueprint("campaigns", __name__)

_WHEN = {"type": "datetime-local", "step": 60}


class CampaignForm(FlaskForm):
    name = Text("Name", validators=[DataRequired(), Length(max=191)])
    list_name = SelectField("List", validators=[DataRequired()])
    starts_at = Text("Starts", validators=[DataRequired()], render_kw=_WHEN)
    ends_at = Text("Ends", validators=[DataRequired()], render_kw=_WHEN)
    sender = Text("From", validators=[Length(max=320)])


class ScenarioForm(FlaskForm):
    template = SelectField("Template", validators=[DataRequired()])
    at = Text("At", validators=[DataRequired()], render_kw=_WHEN)


def _campaign_form() -> CampaignForm:
    form = CampaignForm(prefix="campaign")
    form.list_name.choices = store().list_names()
    form.sender.render_kw = {"placeholder": settings().mailout_sender}
    return form


def _scenario_form() -> ScenarioForm:
    form = ScenarioForm(prefix="scenario")
    form.template.choices = [t["name"] for t in store().templates()]
    return form


@bp.route("/campaigns")
@login_required
def index() -> str:
    return render_template("campaigns.html", campaigns=store().campaigns(),
                           form=_campaign_form() if current_user.is_admin else None)


@bp.route("/campaigns/show")
@login_required
def show() -> str:
    name = text_arg("name")
    if name is None:
        abort(400, "name the campaign (?name=...)")
    try:
        campaign = store().campaign(name)
    except NotFound as exc:
        abort(404, str(exc))
    return render_template("campaign.html", c=campaign,
                           form=_scenario_form() if current_user.is_admin else None)


@bp.route("/campaigns/create", methods=["POST"])
@admin_required
def create() -> Any:
    form = _campaign_form()
    if not form.validate_on_submit():
        flash("Give the campaign a name, a list, a start and an end.", "error")
        return redirect(url_for("campaigns.index"))
    name = form.name.data
    with user_errors() as outcome:
        store().create_campaign(name, form.list_name.data,
                                parse_from(form.sender.data or None, settings(), "From"),
                                parse_time(form.starts_at.data, "starts"),
                                parse_time(form.ends_at.data, "ends"))
    if not outcome.ok:
        return redirect(url_for("campaigns.index"))
    flash(f"Campaign {name} created: add its scenarios.", "ok")
    return redirect(url_for("campaigns.show", name=name))


@bp.route("/campaigns/scenario", methods=["POST"])
@admin_required
def scenario() -> Any:
    name = text_arg("name", request.form) or ""
    form = _scenario_form()
    if form.validate_on_submit():
        with user_errors():
            at = parse_time(form.at.data, "at")
            scenario_id = store().add_scenario(name, form.template.data, at)
            flash(f"Scenario {scenario_id}: {form.template.data} at {form.at.data}.", "ok")
    else:
        flash("Choose a template and a time.", "error")
    return redirect(url_for("campaigns.show", name=name))
