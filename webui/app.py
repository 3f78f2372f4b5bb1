"""The Flask application: settings, security, the parts of the UI, error pages.

``create_app(config)`` reads the ``[webui]`` settings and builds the
application that webui/server.py serves and the tests drive with Flask's
test client.  What it sets up once for every page:

- sessions in a signed cookie (itsdangerous) named spoold_session, HttpOnly,
  SameSite=Lax, Secure when ``webui.secure_cookies``, lasting
  ``webui.session_lifetime``; the signing key is ``webui.secret_key`` or,
  when that is empty, a random key kept in the database (``Store.secret``), so
  a restart keeps everyone logged in;
- CSRF tokens on every POST form (Flask-WTF's CSRFProtect), except the
  token-authenticated API and the public unsubscribe POST (webui/unsubscribe.py
  says why);
- headers: a Content-Security-Policy allowing only this site's scripts,
  styles and images (the templates have no inline script or style), no
  framing, no MIME sniffing, no caching of pages, and Server-Timing with
  the time the application spent on the request;
- error pages (HTML, or JSON for the API and the polled counters) that say
  what went wrong in one line; a database that cannot be reached is a 503.

A part of the UI is a blueprint registered in ``PARTS`` with its navigation
entries (endpoint, label, and "admin" for pages only admins can use); a new
part is one more line.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from flask import Flask, g, jsonify, render_template, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from spoold.config import Config
from spoold.errors import StoreError, StoreUnavailable
from spoold.log import get_logger
from webui import (api, auth, campaigns, contacts, dashboard, lists, mailouts, mailtemplates,
                   queue, send, stats, unsubscribe)
from webui.pages import install_filters
from webui.storage import install

# Blueprint module, and the (endpoint, label[, "admin"]) entries it adds to the navigation.
PARTS = (
    (dashboard, [("dashboard.index", "Dashboard")]),
    (queue, [("queue.index", "Queue")]),
    (stats, [("stats.index", "Statistics")]),
    (contacts, [("contacts.index", "Contacts")]),
    (lists, [("lists.index", "Lists")]),
    (mailtemplates, [("templates.index", "Templates")]),
    (send, [("send.index", "Send", "admin")]),
    (mailouts, [("mailouts.index", "Mailouts")]),
    (campaigns, [("campaigns.index", "Campaigns")]),
    (unsubscribe, []),
    (api, []),
)

_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

csrf = CSRFProtect()


def create_app(config: Config) -> Flask:
    app = Flask(__name__)
    stores = install(app, config)
    web = config.webui
    app.config.update(
        SECRET_KEY=web.secret_key or stores.get().secret("webui_session"),
        SESSION_COOKIE_NAME="spoold_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=web.secure_cookies,
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=web.session_lifetime),
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as its session
        MAX_CONTENT_LENGTH=10 * 1024 * 1024,
    )
    if web.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=web.trusted_proxies,
                                x_proto=web.trusted_proxies)
    csrf.init_app(app)
    csrf.exempt(api.bp)
    # The unsubscribe POST: its URL's token is the credential, and RFC 8058
    # one-click clients send no cookie, so no CSRF token (unsubscribe.py).
    csrf.exempt(unsubscribe.answer)
    auth.init(app)
    menu = []
    for module, entries in PARTS:
        app.register_blueprint(module.bp)
        menu.extend(entries)
    install_filters(app)
    app.context_processor(lambda: {"nav": _nav(menu), "poll_interval": web.poll_interval})
    app.before_request(_start_clock)
    app.after_request(_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(StoreError, _store_error)
    return app


def _nav(menu: list[tuple[str, ...]]) -> list[tuple[str, str]]:
    """The navigation entries this user may follow."""
    admin = current_user.is_authenticated and current_user.is_admin
    return [(entry[0], entry[1]) for entry in menu if admin or entry[2:] != ("admin",)]


def _start_clock() -> None:
    g.started = time.perf_counter()


def _headers(response: Any) -> Any:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", _CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "same-origin"
    if not request.path.startswith("/static/"):
        headers.setdefault("Cache-Control", "no-store")
    if "started" in g:
        headers["Server-Timing"] = f"app;dur={(time.perf_counter() - g.started) * 1000:.1f}"
    return response


def _wants_json() -> bool:
    return (request.path.startswith("/api/") or request.path.endswith(".json")
            or request.accept_mimetypes.best == "application/json")


def _error(status: int, title: str, detail: str) -> Any:
    if _wants_json():
        return jsonify(error=detail), status
    return render_template("error.html", status=status, title=title, detail=detail), status


def _http_error(exc: HTTPException) -> Any:
    return _error(exc.code or 500, exc.name, exc.description or exc.name)


def _csrf_error(exc: CSRFError) -> Any:
    return _error(400, "Form refused", "The form was too old or not sent from this site "
                                       f"({exc.description}). Reload the page and try again.")


def _store_error(exc: StoreError) -> Any:
    get_logger().error("webui_store_error", path=request.path, error=str(exc))
    if isinstance(exc, StoreUnavailable):
        return _error(503, "Database unavailable", f"The database cannot be reached: {exc}")
    return _error(500, "Database error", str(exc))
