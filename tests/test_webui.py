"""The web UI's routes through Flask's test client, over a real store (and, where
delivery rows matter, a real runner delivering to loopback sinks)."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from conftest import write_config
from markupsafe import escape
from webui_support import RAW, UI, USERS, csrf_token, escaped_pages, login

import spoold
from spoold.fakenet import Behaviour
from spoold.store import Attempt

# Routes anyone may call; every other one needs a login (pages) or a token (machines).
PUBLIC = {"static", "auth.login", "api.healthz", "unsubscribe.confirm", "unsubscribe.answer"}
TOKEN = {"api.api_counters", "api.api_queue", "api.api_deliveries", "api.api_enqueue",
         "api.api_mailout_create", "api.api_mailout", "api.metrics"}
HOSTILE_SUBJECT = '<script>alert("subject")</script>'
HOSTILE_LOCALS = ['"<script>alert(1)</script>"', '"\\"><img src=x onerror=alert(1)>"']
HOSTILE_REPLY = '550 5.7.1 <script>alert("reply")</script> "><img src=x onerror=alert(2)>'


def _enqueue(ui, n, domain="example.test"):
    ids, _ = ui.store.enqueue("a@example.org", b"Subject: t\r\n\r\nb\r\n",
                              [(f"user{i}@{domain}", domain) for i in range(n)], 1,
                              time.time() + 3600)
    return ids


def _record(ui, outcomes):
    rows = ui.store.claim("r1", len(outcomes), time.time() + 60)
    ui.store.record([Attempt(row, status, 550, "5.0.0", reply, "mx.example.test",
                             not_before=time.time() + 60)
                     for row, (status, reply) in zip(rows, outcomes)], "r1")
    return rows


def _links(body: str, rel: str) -> str | None:
    match = re.search(rf'href="([^"]+)" rel="{rel}"', body)
    return html.unescape(match.group(1)) if match else None


def _queue_ids(body: str) -> list[int]:
    return [int(i) for i in re.findall(r'href="/queue/(\d+)"', body)]


def test_every_route_but_health_and_login_needs_a_login_or_a_token(ui):
    client = ui.client()
    rules = [r for r in ui.app.url_map.iter_rules() if r.endpoint not in PUBLIC]
    assert {r.endpoint for r in rules} >= TOKEN | {"dashboard.index", "queue.index",
                                                   "stats.index", "queue.action"}
    for rule in rules:
        url = re.sub(r"<(?:\w+:)?\w+>", "1", rule.rule)
        method = "POST" if "POST" in rule.methods else "GET"
        response = client.open(url, method=method)
        if rule.endpoint in TOKEN:
            assert response.status_code == 401, url
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        elif method == "POST":
            assert response.status_code in (302, 400), url  # no session: no CSRF token either
        elif url.endswith(".json"):
            assert response.status_code == 401, url
        else:
            assert response.status_code == 302, url
            assert response.headers["Location"].startswith("/login?next=")
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json["status"] == "ok"


def test_login_sets_a_safe_session_cookie_and_logout_ends_it(make_ui):
    ui = make_ui(secure_cookies=True)
    client = ui.app.test_client()
    response = client.post("/login", data={"name": "ann", "password": "ann-password",
                                           "csrf_token": csrf_token(client)})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "spoold_session=" in cookie and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and "Secure" in cookie
    page = client.get("/")
    assert page.status_code == 200 and "ann" in page.get_data(as_text=True)
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    assert client.post("/logout").status_code == 400  # CSRF token missing
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert client.get("/").status_code == 302


def test_wrong_password_or_unknown_user_is_refused_and_next_stays_on_site(ui):
    client = ui.app.test_client()
    for name, password in (("ann", "wrong-password"), ("nobody", "ann-password")):
        response = client.post("/login", data={"name": name, "password": password,
                                               "csrf_token": csrf_token(client)})
        assert response.status_code == 401
        assert "Unknown name or wrong password." in response.get_data(as_text=True)
    for elsewhere in ("//evil.example/x", "/\\evil.example", "https://evil.example/"):
        response = client.post("/login", query_string={"next": elsewhere},
                               data={"name": "ann", "password": "ann-password",
                                     "csrf_token": csrf_token(client)})
        assert response.headers["Location"] == "/", elsewhere
    response = client.post("/login?next=/stats%3Fq%3D7",
                           data={"name": "ann", "password": "ann-password",
                                 "csrf_token": csrf_token(client)})
    assert response.headers["Location"] == "/stats?q=7"
    assert ui.store.user(name="ann")["last_login_at"] is not None


def test_failed_logins_are_rate_limited_per_client(make_ui):
    ui = make_ui(login_limit="3 per minute")
    client = ui.app.test_client()
    for _ in range(3):
        login(client, "ann")  # successful logins do not count
    for _ in range(3):
        assert client.post("/login", data={"name": "ann", "password": "nope-nope",
                                           "csrf_token": csrf_token(client)}).status_code == 401
    blocked = client.post("/login", data={"name": "ann", "password": "ann-password",
                                          "csrf_token": csrf_token(client)})
    assert blocked.status_code == 429
    assert "Retry-After" in blocked.headers
    other = ui.app.test_client()
    assert other.post("/login", environ_base={"REMOTE_ADDR": "127.0.0.9"},
                      data={"name": "ann", "password": "ann-password",
                            "csrf_token": csrf_token(other)}).status_code == 302


def test_forms_without_a_valid_csrf_token_are_refused(ui):
    ids = _enqueue(ui, 1)
    admin = ui.client("ann")
    for token in (None, "forged", csrf_token(ui.client("vic"), "/queue")):
        data = {"action": "hold", "id": str(ids[0])}
        if token:
            data["csrf_token"] = token
        response = admin.post("/queue/action", data=data)
        assert response.status_code == 400
        assert "Reload the page" in response.get_data(as_text=True)
    assert ui.store.queue_rows()[0]["state"] == "queued"
    fresh = ui.app.test_client()
    assert fresh.post("/login", data={"name": "ann", "password": "ann-password"}) \
        .status_code == 400


def test_viewers_see_but_cannot_act(ui):
    ids = _enqueue(ui, 2)
    viewer = ui.client("vic")
    page = viewer.get("/queue").get_data(as_text=True)
    assert _queue_ids(page) == ids and 'name="action"' not in page
    response = viewer.post("/queue/action", data={"action": "delete", "id": str(ids[0]),
                                                  "csrf_token": csrf_token(viewer, "/queue")})
    assert response.status_code == 403
    assert len(ui.store.queue_rows()) == 2


def test_admin_acts_on_ticked_rows_or_a_whole_filter(ui):
    a = _enqueue(ui, 3, "a.test")
    b = _enqueue(ui, 2, "b.test")
    admin = ui.client("ann")
    token = csrf_token(admin, "/queue")

    def act(action, **form):
        response = admin.post("/queue/action", data={"action": action, "csrf_token": token,
                                                     **form})
        assert response.status_code == 302
        return admin.get(response.headers["Location"]).get_data(as_text=True)

    page = act("hold", id=[str(a[0]), str(a[1])])
    assert "2 rows held." in page
    assert {r["id"] for r in ui.store.queue_rows(state="held")} == {a[0], a[1]}
    page = act("hold", scope="filter", domain="b.test")
    assert "2 rows held." in page and 'value="b.test"' in page
    assert act("release", scope="filter", state="held", domain="a.test").count("2 rows released")
    assert "1 row deleted." in act("delete", id=str(b[0]))
    assert "Tick the rows" in act("requeue")
    assert "Nothing changed: no queued mail with id" in act("hold", id=str(b[0]))
    assert [r["id"] for r in ui.store.queue_rows()] == [*a, b[1]]
    (deleted,) = ui.store.deliveries(queue_id=b[0])
    assert deleted["status"] == "deleted"


def test_queue_pages_by_keyset_and_keeps_the_filter(make_ui):
    ui = make_ui(page_size=10)
    ids = _enqueue(ui, 25, "a.test")
    _enqueue(ui, 5, "b.test")
    client = ui.client("vic")
    first = client.get("/queue?domain=a.test").get_data(as_text=True)
    assert _queue_ids(first) == ids[:10] and _links(first, "prev") is None
    assert "25 rows match." in first
    second_url = _links(first, "next")
    assert second_url == f"/queue?domain=a.test&after={ids[9]}"
    second = client.get(second_url).get_data(as_text=True)
    third = client.get(_links(second, "next")).get_data(as_text=True)
    assert _queue_ids(second) == ids[10:20] and _queue_ids(third) == ids[20:]
    assert _links(third, "next") is None
    back = client.get(_links(third, "prev")).get_data(as_text=True)
    assert _queue_ids(back) == ids[10:20]
    assert _queue_ids(client.get(_links(back, "prev")).get_data(as_text=True)) == ids[:10]
    assert client.get("/queue?state=bogus").status_code == 400
    assert client.get("/queue?after=x").status_code == 400


def test_dashboard_counts_and_runner_status(ui):
    ids = _enqueue(ui, 6)
    _record(ui, [("sent", "250 ok"), ("sent", "250 ok"), ("bounced", "550 no"),
                 ("deferred", "450 later")])
    ui.store.hold([ids[-1]])
    ui.store.heartbeat("h:1", "h", 4242, time.time() - 30, 3, 8)
    ui.store.heartbeat("h:2", "h2", 4343, time.time() - 300, 1, 8)
    with ui.store.transaction() as cur:
        ui.store.execute(cur, "UPDATE runner SET heartbeat_at = ? WHERE owner = 'h:2'",
                         (time.time() - 120,))
    client = ui.client("vic")
    data = client.get("/dashboard.json").json
    assert data["queue"] == {"queued": 1, "deferred": 1, "sending": 0, "held": 1}
    assert data["today"] == {"sent": 2, "deferred": 1, "bounced": 1, "expired": 0}
    assert data["last_hour"] == data["today"]
    up = {r["owner"]: r["up"] for r in data["runners"]}
    assert up == {"h:1": True, "h:2": False}
    assert "4242" in data["fragments"]["runners"] and "3 alive / 8 max" in \
        data["fragments"]["runners"]
    page = client.get("/").get_data(as_text=True)
    assert 'data-counter="queue.deferred">1<' in page and 'data-poll="/dashboard.json"' in page


def test_statistics_page_charts_and_top_domains(ui):
    _enqueue(ui, 3, "a.test")
    _record(ui, [("sent", "250 ok"), ("bounced", "550 5.1.1 no such user"),
                 ("deferred", "451 try later")])
    client = ui.client("vic")
    page = client.get("/stats").get_data(as_text=True)
    assert 'href="/queue?domain=a.test"' in page
    assert "33.3 %" in page and "50.0 %" in page  # deferral rate, delivered rate
    assert "451 try later" in page  # the newest error is the deferral
    for chart in ("/stats/hourly.svg", "/stats/daily.svg"):
        svg = client.get(chart)
        assert svg.mimetype == "image/svg+xml"
        assert svg.headers["Content-Security-Policy"].startswith("default-src 'none'")
        body = svg.get_data(as_text=True)
        assert "<svg" in body and "sent" in body and "<script src" not in body
        assert not re.findall(r"https?://(?!www\.w3\.org|pygal\.org|github\.com/Kozea)", body)


def test_deliveries_search_and_csv_export(ui):
    ids = _enqueue(ui, 3, "a.test")
    ui.store.enqueue("a@example.org", b"Subject: t\r\n\r\nb\r\n", [("=1+2@csv.test", "csv.test")],
                     1, time.time() + 3600)
    _record(ui, [("sent", "250 ok"), ("deferred", "451 later"), ("sent", "250 fine"),
                 ("bounced", "550 nope")])
    client = ui.client("vic")
    def log_part(query):
        return client.get(f"/stats?q={query}").get_data(as_text=True).split("Deliveries</h2>")[1]

    found = log_part(ids[1])
    assert "451 later" in found and "250 fine" not in found
    found = log_part("user2@a.test")
    assert "250 fine" in found and "451 later" not in found
    response = client.get("/stats/deliveries.csv")
    assert response.mimetype == "text/csv" and response.is_streamed
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [r["reply"] for r in rows] == ["550 nope", "250 fine", "451 later", "250 ok"]
    assert rows[0]["recipient"] == "'=1+2@csv.test"  # no formula for a spreadsheet to run
    assert rows[1]["queue_id"] == str(ids[2]) and rows[1]["status"] == "sent"
    one = list(csv.DictReader(io.StringIO(
        client.get(f"/stats/deliveries.csv?q={ids[0]}").get_data(as_text=True))))
    assert [r["reply"] for r in one] == ["250 ok"]


def test_api_needs_a_token_and_an_admin_to_enqueue(ui, tmp_path):
    viewer_token, admin_token = "spoold_viewer-token", "spoold_admin-token"
    from spoold.passwords import token_digest

    ui.store.add_token("vic", token_digest(viewer_token))
    ui.store.add_token("ann", token_digest(admin_token))
    client = ui.app.test_client()

    def call(method, path, token=None, **kw):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client.open(path, method=method, headers=headers, **kw)

    assert call("GET", "/api/v1/counters").status_code == 401
    assert call("GET", "/api/v1/counters", "spoold_wrong").status_code == 401
    assert call("GET", "/api/v1/counters", viewer_token).json["queue"]["queued"] == 0
    mail = {"from": "app@example.org", "to": ["x@a.test", "y@b.test"], "subject": "Hi",
            "body": "Hello"}
    assert call("POST", "/api/v1/enqueue", viewer_token, json=mail).status_code == 403
    done = call("POST", "/api/v1/enqueue", admin_token, json=mail)
    assert done.status_code == 201 and done.json["queued"] == ["x@a.test", "y@b.test"]
    bad = call("POST", "/api/v1/enqueue", admin_token, json={**mail, "to": ["not an address"]})
    assert bad.status_code == 400 and "not an address" in bad.json["error"]
    assert call("POST", "/api/v1/enqueue", admin_token, data="x").status_code == 400
    listing = call("GET", "/api/v1/queue?domain=b.test", viewer_token).json
    assert [r["recipient"] for r in listing["rows"]] == ["y@b.test"]
    assert listing["next_after"] is None
    page = call("GET", "/api/v1/queue?limit=1", viewer_token).json
    assert page["next_after"] == done.json["ids"][0]
    ui.store.revoke_tokens("ann")
    assert call("GET", "/api/v1/counters", admin_token).status_code == 401


def test_metrics_report_queue_log_and_runners(make_ui):
    ui = make_ui()
    _enqueue(ui, 4)
    _record(ui, [("sent", "250 ok"), ("bounced", "550 no")])
    from spoold.stats import RunnerStats

    stats = RunnerStats()
    stats.claimed_rows([], 0.003, 0.0)  # one claim in the 0.005 s bucket
    stats.wrote(0.2)  # one write in the 0.5 s bucket
    ui.store.heartbeat("h:1", "h", 4242, time.time() - 30, 3, 8, stats.figures(2, 0, 0))
    from spoold.passwords import token_digest

    ui.store.add_token("vic", token_digest("spoold_metrics"))
    client = ui.app.test_client()
    assert client.get("/metrics").status_code == 401
    response = client.get("/metrics", headers={"Authorization": "Bearer spoold_metrics"})
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    for line in ('spoold_queue_rows{state="queued"} 2.0', 'spoold_queue_rows{state="held"} 0.0',
                 'spoold_deliveries_total{status="sent"} 1.0',
                 'spoold_deliveries_total{status="bounced"} 1.0',
                 'spoold_runner_up{host="h",owner="h:1"} 1.0',
                 'spoold_runner_children{host="h",owner="h:1"} 3.0',
                 'spoold_runner_max_children{host="h",owner="h:1"} 8.0',
                 'spoold_runner_pid{host="h",owner="h:1"} 4242.0',
                 'spoold_runner_busy_children{host="h",owner="h:1"} 2.0',
                 'spoold_deliveries_by_dsn_total{dsn_class="5.0"} 2.0',
                 'spoold_domain_attempts_today{domain="example.test",status="sent"} 1.0',
                 'spoold_domain_attempts_today{domain="example.test",status="bounced"} 1.0',
                 'spoold_runner_claim_latency_seconds_bucket{host="h",le="0.001",owner="h:1"} 0.0',
                 'spoold_runner_claim_latency_seconds_bucket{host="h",le="0.005",owner="h:1"} 1.0',
                 'spoold_runner_claim_latency_seconds_count{host="h",owner="h:1"} 1.0',
                 'spoold_runner_write_latency_seconds_bucket{host="h",le="0.1",owner="h:1"} 0.0',
                 'spoold_runner_write_latency_seconds_bucket{host="h",le="+Inf",owner="h:1"} 1.0',
                 'spoold_runner_write_latency_seconds_sum{host="h",owner="h:1"} 0.2'):
        assert line in text, line
    public = make_ui(metrics_public=True)
    assert public.app.test_client().get("/metrics").status_code == 200


def test_password_change_ends_sessions_and_the_key_survives_restarts(make_ui):
    ui = make_ui()
    client = ui.client("ann")
    again = make_ui()  # a restart: the same database, the same generated key
    assert again.app.secret_key == ui.app.secret_key
    cookie = client.get_cookie("spoold_session")
    restarted = again.app.test_client()
    restarted.set_cookie("spoold_session", cookie.value)
    assert restarted.get("/").status_code == 200
    from webui_support import password_hash

    ui.store.set_password("ann", password_hash("a-new-password"))
    assert client.get("/").status_code == 302
    assert make_ui(secret_key="configured").app.secret_key == "configured"


def test_healthz_says_when_the_database_is_unreachable(make_ui, tmp_path):
    ui = make_ui()
    path = write_config(tmp_path / "down.toml", "mysql://root@127.0.0.1:1/nothing",
                        tmp_path / "run", webui={"secret_key": "k"})
    from spoold import config as config_mod
    from webui.app import create_app

    down = create_app(config_mod.load(path)).test_client()
    response = down.get("/healthz")
    assert response.status_code == 503 and response.json["status"] == "unavailable"
    assert ui.app.test_client().get("/healthz").json["schema"] >= 2


def test_hostile_strings_from_real_deliveries_are_escaped_everywhere(world, spool):
    world.add_domain("hostile.test", Behaviour(rcpt_reply=HOSTILE_REPLY))
    world.add_domain("held.test")
    recipients = [f"{local}@hostile.test" for local in HOSTILE_LOCALS]
    common = {"sender": "ops@spoold.test", "subject": HOSTILE_SUBJECT,
              "body": "<script>alert('body')</script>", "config": spool.config}
    held = spoold.enqueue(recipients=[f"{local}@held.test" for local in HOSTILE_LOCALS],
                          **common)
    spool.cli("hold", "--domain", "held.test")
    spoold.enqueue(recipients=recipients, **common)
    spool.drain()
    ui = UI(spool.config_path)
    try:
        client = ui.client("ann")
        bounced = ui.store.deliveries(recipient=recipients[0])
        assert bounced and bounced[0]["status"] == "bounced"
        assert "<script>" in bounced[0]["reply"]  # the sink's reply made it into the log
        pages = ["/", "/queue", "/queue?state=held", f"/queue/{held.ids[0]}",
                 f"/queue/{held.ids[1]}", "/stats", f"/stats?q={recipients[1]}",
                 f"/queue?recipient={held.queued[0]}"]
        seen = escaped_pages(client, pages)
        fragments = client.get("/dashboard.json").json["fragments"]
        assert not any(raw in html_ for html_ in fragments.values() for raw in RAW)
        for shown in (str(escape(HOSTILE_SUBJECT)), "&lt;script&gt;alert(1)",
                      "&lt;img src=x onerror=alert(1)&gt;", "&lt;script&gt;alert(&#34;reply"):
            assert shown in seen, shown
    finally:
        ui.close()


def test_users_commands(spool):
    add = spool.cli("users", "add", "olga", "--role", "viewer", "--password-stdin",
                    input=b"olga-password\n")
    assert add.stdout == b"user olga added (viewer)\n"
    assert spool.cli("users", "add", "olga", "--role", "admin", "--password-stdin",
                     input=b"another-one\n", check=False).returncode == 73
    short = spool.cli("users", "add", "p", "--role", "admin", "--password-stdin",
                      input=b"short\n", check=False)
    assert short.returncode == 65 and b"at least 8 characters" in short.stderr
    token = spool.cli("users", "token", "olga").stdout.decode().strip()
    assert token.startswith("spoold_") and len(token) > 40
    listing = spool.cli("users", "list").stdout.decode().splitlines()
    assert listing[1].split()[:2] == ["olga", "viewer"] and listing[1].split()[-1] == "1"
    spool.cli("users", "passwd", "olga", "--password-stdin", input=b"olga-new-password\n")
    ui = UI(spool.config_path)
    try:
        login(ui.app.test_client(), "olga", "olga-new-password")
        client = ui.app.test_client()
        assert client.get("/api/v1/counters",
                          headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        ui.close()
    assert spool.cli("users", "token", "olga", "--revoke").stdout == b"1 token of olga revoked\n"
    spool.cli("users", "delete", "olga")
    assert spool.cli("users", "delete", "olga", check=False).returncode == 67
    assert USERS  # the UI's own test users were added by UI() and are untouched


def test_demo_starts_the_ui_and_prints_a_login_that_works(tmp_path):
    demo = subprocess.Popen([sys.executable, "-m", "spoold.cli", "demo", "--messages", "20",
                             "--domains", "5", "--contacts", "0", "--keep-ui"],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=tmp_path)
    try:
        lines = []
        while not lines or not lines[-1].startswith("The web UI stays up"):
            line = demo.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        url, name, password = re.search(r"Web UI: (\S+)  \(log in as (\w+) / (\S+)\)",
                                        "".join(lines)).groups()
        assert url.startswith("http://127.0.0.1:")
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"',
                          browser.open(url + "login").read().decode()).group(1)
        form = urllib.parse.urlencode({"name": name, "password": password, "csrf_token": token})
        browser.open(url + "login", data=form.encode())
        counters = json.loads(browser.open(url + "dashboard.json").read())
        assert counters["today"]["sent"] == 12 and counters["today"]["bounced"] == 8
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
    assert "OK: every message ended" in "".join(lines)


def test_every_page_renders_on_both_databases(make_ui, db_url):
    ui = make_ui(db_url)
    ids = _enqueue(ui, 4, "a.test")
    _record(ui, [("sent", "250 ok"), ("deferred", "451 later"), ("bounced", "550 no")])
    ui.store.heartbeat("h:1", "h", 1, time.time(), 2, 8)
    client = ui.client("ann")
    for path in ("/", "/dashboard.json", "/queue", "/queue?state=queued&domain=a.test",
                 f"/queue/{ids[1]}", f"/queue?before={ids[-1]}", "/stats", f"/stats?q={ids[0]}",
                 "/stats/hourly.svg", "/stats/daily.svg", "/stats/deliveries.csv", "/healthz"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[:500])
    data = client.get("/dashboard.json").json
    assert data["today"]["sent"] == 1 and data["queue"]["deferred"] == 1
    assert "a.test" in client.get("/stats").get_data(as_text=True)


def test_the_bench_script_runs_on_a_small_queue():
    from bench import webui as bench

    report = bench.run(rows=500, runs=1)
    assert "| queue, deep page (keyset) |" in report and "(met)" in report
