"""Shared by the web UI tests: users with real Argon2 hashes, logged-in test clients."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from flask.testing import FlaskClient

from spoold import config as config_mod
from spoold import passwords
from spoold.store import store_for
from webui.app import create_app

USERS = {"ann": ("admin", "ann-password"), "vic": ("viewer", "vic-password")}
# What hostile strings would show as if a page did not escape them.
RAW = ("<script>alert", "<img src=x")
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


@functools.cache
def password_hash(password: str) -> str:
    return passwords.hash_password(password)


def add_users(store) -> None:
    for name, (role, password) in USERS.items():
        if store.user(name=name) is None:
            store.add_user(name, role, password_hash(password))


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path)
    match = _CSRF.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path} ({page.status_code})"
    return match.group(1)


def login(client: FlaskClient, name: str, password: str | None = None) -> FlaskClient:
    response = client.post("/login", data={"name": name, "password": password or USERS[name][1],
                                           "csrf_token": csrf_token(client)})
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def escaped_pages(client: FlaskClient, paths: list[str]) -> str:
    """GET every page (each must answer 200) and check that no hostile markup came
    through unescaped; returns the pages' text, for what they should show escaped."""
    seen = ""
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, path
        body = response.get_data(as_text=True)
        for raw in RAW:
            assert raw not in body, (path, raw)
        seen += body
    return seen


class UI:
    """The web UI application over a spoold config file, with the users above."""

    def __init__(self, config_path: Path):
        self.config = config_mod.load(config_path)
        self.store = store_for(self.config)
        add_users(self.store)
        self.app = create_app(self.config)

    def client(self, name: str | None = None) -> FlaskClient:
        client = self.app.test_client()
        return login(client, name) if name else client

    def close(self) -> None:
        self.app.extensions["spoold"].close()
        self.store.close()
