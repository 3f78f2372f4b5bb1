"""The web UI's security, route by route: a walker over the app's whole url_map.

Every text field the store has -- subjects, recipients, remote replies,
contact names and attributes, template names and subjects, list, campaign
and user names, filters, runner hosts -- holds hostile markup, and:

- every page (every route of ``app.url_map``, with each parameter filled
  with every planted value of its type, and hostile query strings) shows it
  escaped: no raw ``<script>`` or ``<img`` in any HTML or SVG answer, and
  no answer is a server error;
- every state-changing route (POST, PUT, PATCH, DELETE) refuses a client
  that is not logged in, a form without the session's CSRF token, and a
  viewer (VIEWER_MAY: logging out), and the store is unchanged after each
  refusal;
- public routes (tests/test_webui.py PUBLIC: login, health, and the
  unsubscribe links once they exist) act on nothing for a forged link, nor
  on a GET (RFC 8058: mail scanners fetch links; only a POST acts);
- the session cookie is HttpOnly and SameSite, failed logins are rate
  limited, and the server listens on 127.0.0.1 unless told otherwise.

Routes added later (the web UI's contacts, templates, mailouts, campaigns
and send pages) are walked the same way without a change here.
"""

from __future__ import annotations

import itertools
import re
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import psutil
import pytest
from conftest import wait_for, write_config
from test_webui import PUBLIC, TOKEN
from webui_support import UI, csrf_token, password_hash

from spoold import config as config_mod
from spoold.store import Attempt
from spoold.store.contacts import ContactIn
from spoold.store.mailouts import MailoutSpec
from spoold.unsubscribe import make_token, secret_for

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
RAW = ("<script>alert", "<img src=x")
MARKUP = ("text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml")
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
VIEWER_MAY = {"auth.logout"}  # what a viewer may do: end its own session
QUERIES = ("q", "domain", "state", "recipient", "search", "name", "list", "template", "status",
           "email", "next", "after", "before", "where")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A UI over a store whose every text field holds hostile markup."""
    directory = tmp_path_factory.mktemp("hostile")
    path = write_config(directory / "ui.toml", f"sqlite://{directory / 'spool.db'}",
                        directory / "run", webui={"login_limit": "10000 per minute"},
                        mailout={"sender": "news@spoold.test"})
    ui = UI(path)
    values = _plant(ui)
    yield ui, values
    ui.close()


def _plant(ui: UI) -> dict[str, list]:
    store, now = ui.store, time.time()
    locals_ = [f'"{SCRIPT}"', f'"\\{IMG}"']
    emails = [f"{local}@hostile.test" for local in locals_]
    subject = f"Subject: {SCRIPT} {IMG}\r\n\r\nbody {SCRIPT}\r\n".encode()
    ids, _ = store.enqueue(f'"{SCRIPT}"@sender.test', subject,
                           [(e, "hostile.test") for e in emails * 3], 1, now + 3600)
    rows = store.claim(f"{SCRIPT}:{IMG}", 4, now + 60)
    replies = [f"550 5.1.1 {SCRIPT}", f"451 4.7.1 {IMG}", f"550 5.7.1 blocked {IMG}",
               f"250 2.0.0 {SCRIPT}"]
    store.record([Attempt(row, status, 550, dsn, reply, f"mx{IMG}.hostile.test",
                          not_before=now + 60)
                  for row, status, dsn, reply in zip(
                      rows, ("bounced", "deferred", "bounced", "sent"),
                      ("5.1.1", "4.7.1", "5.7.1", "2.0.0"), replies)], f"{SCRIPT}:{IMG}")
    store.hold(ids[-1:])
    store.heartbeat(f"{SCRIPT}:{IMG}", f"host{SCRIPT}", 4242, now - 60, 1, 5)
    store.upsert_contacts([ContactIn(email, SCRIPT + IMG, {"city": SCRIPT, "plan": IMG})
                           for email in emails], SCRIPT)
    store.create_list(IMG)
    for name in (SCRIPT, IMG):
        store.save_template(name, f"{SCRIPT} {{{{ name }}}}", f"Hi {IMG} {{{{ name }}}}",
                            f"<p>{IMG}</p>", create=True)
    store.add_user(f"{SCRIPT}{IMG}", "viewer", password_hash("hostile-password"))
    store.create_campaign(IMG, SCRIPT, f'"{SCRIPT}" <news@spoold.test>', now, now + 86400)
    store.add_scenario(IMG, SCRIPT, now + 3600)
    mailout = store.create_mailout(MailoutSpec(
        SCRIPT, f'"{IMG}" <news@spoold.test>', "where", now + 3600, now + 7200,
        where=f"city = '{SCRIPT}' or plan = '{IMG}'"))
    listed = store.create_mailout(MailoutSpec(SCRIPT, "news@spoold.test", "list", now, now + 7200,
                                              list_name=SCRIPT))
    store.mailout_step(now + 1, 1000, 86400)  # the list mailout's rows, in the queue
    secret = secret_for(ui.config, store)
    contact_ids = sorted(c["id"] for c in store.contacts(limit=100))
    tokens = [make_token(secret, contact_ids[0], listed), f"{SCRIPT}.{IMG}",
              make_token(secret, contact_ids[0], listed)[:-2] + "AA"]
    queue_ids = [r["id"] for r in store.queue_rows(limit=100)]
    deliveries = [d["id"] for d in store.deliveries(limit=100)]
    ints = sorted(set(queue_ids + deliveries + contact_ids + [mailout, listed, 1, 2]))
    names = [SCRIPT, IMG, f"{SCRIPT}{IMG}", *emails, "hostile.test", *tokens]
    return {"int": ints, "str": names, "token": tokens, "email": emails,
            "queue": queue_ids, "mailout": [mailout, listed]}


def _candidates(name: str, converter: str, values: dict[str, list]) -> list:
    """Values to try for one URL parameter: by its name when it says what it is."""
    lowered = name.lower()
    for key in ("token", "email", "queue", "mailout"):
        if key in lowered and (converter == "int") == isinstance(values[key][0], int):
            return values[key]
    return values["int"] if converter == "int" else values["str"]


def _urls(rule, values: dict[str, list]) -> list[str]:
    """``rule`` with its parameters filled every way the planted values allow."""
    params = re.findall(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>", rule.rule)
    choices = [_candidates(name, converter or "string", values) for converter, name in params]
    urls = []
    for combination in itertools.islice(itertools.product(*choices), 40):
        url = rule.rule
        for value in combination:
            url = re.sub(r"<[^>]+>", quote(str(value), safe="@"), url, count=1)
        urls.append(url)
    return urls


def _check_escaped(response, url: str) -> None:
    assert response.status_code < 500, f"{url}: {response.status_code}"
    if response.mimetype in MARKUP:
        body = response.get_data(as_text=True)
        for raw in RAW:
            assert raw not in body, f"{url} ({response.mimetype}) shows {raw!r} unescaped"


def test_every_page_shows_hostile_values_escaped(planted):
    ui, values = planted
    rules = [r for r in ui.app.url_map.iter_rules() if "GET" in r.methods
             and r.endpoint != "static"]
    walked = 0
    for who in ("ann", "vic"):
        client = ui.client(who)
        for rule in rules:
            for url in _urls(rule, values):
                _check_escaped(client.get(url), url)
                for key in QUERIES:
                    target = f"{url}?{key}={quote(SCRIPT + IMG)}"
                    _check_escaped(client.get(target), target)
                walked += 1
    shown = ui.client("ann").get("/queue").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)" in shown  # the values are on the pages, escaped
    assert walked >= 2 * len(rules)


def _state(ui: UI) -> tuple:
    """What a refused request must leave as it was."""
    store = ui.store
    return (store.state_counts(),
            sorted((r["id"], r["state"]) for r in store.queue_rows(limit=1000)),
            len(store.deliveries(limit=10000)),
            sorted((c["email"], c["name"], c["unsubscribed_at"], str(c["attributes"]))
                   for c in store.contacts(limit=1000)),
            sorted((x["name"], x.get("members")) for x in store.lists()),
            sorted((t["name"], t["subject"], t["updated_at"]) for t in store.templates()),
            sorted((m["id"], m["status"]) for m in store.mailouts()),
            sorted(c["name"] for c in store.campaigns()),
            sorted((u["name"], u["role"]) for u in store.users()),
            [s["address"] for s in store.suppressions()])


def _state_changing(ui: UI):
    for rule in ui.app.url_map.iter_rules():
        for method in sorted(rule.methods & STATE_CHANGING):
            yield rule, method


def _form(values: dict[str, list]) -> dict:
    """A plausible form: ids, an action, names and addresses (all of them planted)."""
    return {"id": [str(i) for i in values["queue"][:2]], "action": "delete", "confirm": "yes",
            "name": SCRIPT, "email": values["email"][0], "password": "x" * 12, "role": "admin",
            "subject": SCRIPT, "text": SCRIPT, "template": SCRIPT, "list": SCRIPT}


def test_every_state_changing_route_refuses_strangers_forgeries_and_viewers(planted):
    ui, values = planted
    before = _state(ui)
    checked = set()
    for rule, method in _state_changing(ui):
        if rule.endpoint in PUBLIC or rule.endpoint in TOKEN:
            continue
        for url in _urls(rule, values)[:3]:
            stranger = ui.app.test_client()
            refused = stranger.open(url, method=method, data=_form(values))
            assert refused.status_code in (302, 400, 401), (url, method, refused.status_code)
            token = csrf_token(stranger)  # a real token of a session that is not logged in
            refused = stranger.open(url, method=method, data={**_form(values),
                                                              "csrf_token": token})
            assert refused.status_code in (302, 401), (url, method, refused.status_code)
            if refused.status_code == 302:
                assert refused.headers["Location"].startswith("/login"), url
            admin = ui.client("ann")
            for forged in (None, "forged", csrf_token(ui.client("vic"), "/")):
                data = _form(values) | ({"csrf_token": forged} if forged else {})
                refused = admin.open(url, method=method, data=data)
                assert refused.status_code == 400, (url, method, forged, refused.status_code)
                assert "Reload the page" in refused.get_data(as_text=True)
            if rule.endpoint not in VIEWER_MAY:
                viewer = ui.client("vic")
                refused = viewer.open(url, method=method, data={
                    **_form(values), "csrf_token": csrf_token(viewer, "/")})
                assert refused.status_code == 403, (url, method, refused.status_code)
            assert _state(ui) == before, f"{method} {url} changed the store though refused"
            checked.add(rule.endpoint)
    assert {"queue.action", "auth.logout"} <= checked


def test_api_routes_that_change_state_take_only_an_admin_token(planted):
    ui, values = planted
    before = _state(ui)
    client = ui.app.test_client()
    for rule, method in _state_changing(ui):
        if rule.endpoint not in TOKEN:
            continue
        for url in _urls(rule, values)[:3]:
            for headers in ({}, {"Authorization": "Bearer forged"},
                            {"Cookie": "spoold_session=forged"}):
                refused = client.open(url, method=method, json={"to": values["email"]},
                                      headers=headers)
                assert refused.status_code == 401, (url, headers, refused.status_code)
    assert _state(ui) == before


def test_public_routes_act_on_nothing_for_a_forged_link_nor_for_a_get(planted):
    """A forged link changes nothing, whatever the method; a genuine one changes
    nothing on GET either: mail scanners fetch links (RFC 8058), only a POST acts."""
    ui, values = planted
    before = _state(ui)
    client = ui.app.test_client()
    for rule in ui.app.url_map.iter_rules():
        if rule.endpoint not in PUBLIC or rule.endpoint in ("static", "auth.login"):
            continue
        for method in sorted(rule.methods & (STATE_CHANGING | {"GET", "HEAD"})):
            forged = values | {"token": values["token"][1:]}
            for url in _urls(rule, values if method in ("GET", "HEAD") else forged):
                response = client.open(url, method=method,
                                       data={"List-Unsubscribe": "One-Click"})
                _check_escaped(response, url)
                assert _state(ui) == before, f"{method} {url} changed the store"


def test_session_cookie_is_httponly_and_samesite_by_default(planted):
    ui, _ = planted
    client = ui.app.test_client()
    response = client.post("/login", data={"name": "ann", "password": "ann-password",
                                           "csrf_token": csrf_token(client)})
    cookie = response.headers["Set-Cookie"]
    assert response.status_code == 302 and "spoold_session=" in cookie
    assert "HttpOnly" in cookie and re.search(r"SameSite=(Lax|Strict)", cookie)


def test_failed_logins_are_rate_limited_by_default(tmp_path):
    path = write_config(tmp_path / "ui.toml", f"sqlite://{tmp_path / 'spool.db'}",
                        tmp_path / "run")
    assert config_mod.load(path).webui.login_limit == "5 per minute;30 per hour"
    ui = UI(path)
    try:
        client = ui.app.test_client()
        codes = [client.post("/login", data={"name": "ann", "password": "guess",
                                             "csrf_token": csrf_token(client)}).status_code
                 for _ in range(7)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429], codes
    finally:
        ui.close()


def test_the_server_listens_on_loopback_unless_told_otherwise(tmp_path):
    path = write_config(tmp_path / "ui.toml", f"sqlite://{tmp_path / 'spool.db'}",
                        tmp_path / "run")
    assert config_mod.load(path).webui.bind == "127.0.0.1"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "webui", "--config", str(path),
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        server = psutil.Process(proc.pid)

        def listening():
            return [c.laddr for c in server.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN]

        wait_for(listening, 20, "the web UI listening")
        assert [(a.ip, a.port) for a in listening()] == [("127.0.0.1", port)]
    finally:
        proc.terminate()
        proc.wait(10)
