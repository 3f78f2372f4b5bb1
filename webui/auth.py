"""Who may do what: logins (pages), API tokens (machines), the two roles.

People log in with the name and password ``spoold users add`` gave them;
Flask-Login keeps the login in the signed session cookie.  The id it keeps
carries a fingerprint of the user's password hash, so ``spoold users
passwd`` (or deleting the user) ends their sessions at their next request.
Failed logins count against ``webui.login_limit`` per client address
(Flask-Limiter; 429 past it); a successful one does not.

Machines send ``Authorization: Bearer TOKEN`` (``spoold users token``); the
API and /metrics accept nothing else, so no cookie can be replayed against
them from another site (and they need no CSRF token).

Roles: ``viewer`` reads everything (``login_required``); ``admin`` may also
act (``admin_required``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, abort, flash, g, jsonify, redirect, render_template,
                   request, session, url_for)
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import (LoginManager, UserMixin, current_user, login_required, login_user,
                         logout_user)
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from spoold import passwords
from webui.storage import settings, store

__all__ = ["admin_required", "login_required", "token_required"]

bp = Blueprint("auth", __name__)
limiter = Limiter(get_remote_address, storage_uri="memory://", headers_enabled=True)


class User(UserMixin):
    """A logged-in person (or a token's owner), loaded from the store per request."""

    def __init__(self, row: dict[str, Any]):
        self.user_id = row["id"]
        self.name = row["name"]
        self.role = row["role"]
        self.fingerprint = _fingerprint(row["password_hash"])

    def get_id(self) -> str:
        return f"{self.user_id}:{self.fingerprint}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _load_user(session_id: str) -> User | None:
    user_id, _, fingerprint = session_id.partition(":")
    if not user_id.isdigit():
        return None
    row = store().user(user_id=int(user_id))
    if row is None or not hmac.compare_digest(_fingerprint(row["password_hash"]), fingerprint):
        return None
    return User(row)


def _unauthorized() -> Any:
    if _wants_json():
        return jsonify(error="login required"), 401
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _wants_json() -> bool:
    return request.path.endswith(".json") or request.accept_mimetypes.best == "application/json"


def init(app: Flask) -> None:
    manager = LoginManager(app)
    manager.session_protection = "strong"
    manager.user_loader(_load_user)
    manager.unauthorized_handler(_unauthorized)
    limiter.init_app(app)
    app.register_blueprint(bp)


def admin_required(view: Callable) -> Callable:
    """Actions: a logged-in admin; a viewer gets 403."""
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_authenticated:
            return _unauthorized()
        if not current_user.is_admin:
            abort(403, "viewers may look but not act: ask an admin")
        return view(*args, **kwargs)
    return wrapper


def token_required(role: str | None = None) -> Callable[[Callable], Callable]:
    """Machine endpoints: a valid bearer token (of an admin when ``role`` is admin)."""
    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = token_user()
            if user is None:
                response = jsonify(error="a valid API token is required "
                                         "(Authorization: Bearer TOKEN)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="spoold"'
                return response, 401
            if role == "admin" and not user.is_admin:
                return jsonify(error="this token's user is a viewer; an admin's is needed"), 403
            g.api_user = user
            return view(*args, **kwargs)
        return wrapper
    return decorate


def token_user() -> User | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    row = store().token_user(passwords.token_digest(token.strip()))
    return User(row) if row else None


class LoginForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


def _login_failed(response: Any) -> bool:
    """Only failed attempts count against the rate limit."""
    return response.status_code != 302


def _safe_next(target: str | None) -> str:
    """A local path to go to after login; anything else (another site) goes home."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("dashboard.index")


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: settings().webui.login_limit, methods=["POST"],
               deduct_when=_login_failed)
def login() -> Any:
    form = LoginForm()
    if form.validate_on_submit():
        row = store().user(name=form.name.data)
        ok, rehash = passwords.verify(row["password_hash"] if row else None, form.password.data)
        if ok:
            if rehash:
                store().set_password(row["name"], passwords.hash_password(form.password.data))
                row = store().user(name=row["name"])
            session.clear()
            session.permanent = True
            login_user(User(row))
            store().note_login(row["id"])
            return redirect(_safe_next(request.args.get("next")))
        flash("Unknown name or wrong password.", "error")
        return render_template("login.html", form=form), 401
    return render_template("login.html", form=form), 400 if form.errors else 200


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))
