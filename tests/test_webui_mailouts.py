"""The web UI's contacts, lists, templates, send, mailouts, campaigns and unsubscribe
pages through Flask's test client, over a real store.

No runner here: mailouts are expanded and their rows' outcomes recorded through
the store, as the runner does (the browser test runs the real one).  Where the
UI calls the CLI's functions, the tests check it gets the CLI's results.
"""

from __future__ import annotations

import csv
import datetime
import email
import email.policy
import io
import re
import time
from urllib.parse import urlsplit

import pytest
from webui_support import RAW, csrf_token, escaped_pages

from spoold import config as config_mod
from spoold import templates
from spoold.contacts_import import import_contacts
from spoold.passwords import token_digest
from spoold.store import Attempt
from spoold.store.contacts import ContactIn
from spoold.store.mailouts import MailoutSpec
from spoold.unsubscribe import make_token, secret_for

HOSTILE = '<script>alert("x")</script>'
HOSTILE_ATTR = '"><img src=x onerror=alert(1)>'
HOSTILE_EMAIL = '"<script>alert(1)</script>"@hostile.example'
TEXT = "Hello {{ name }} of {{ attributes.city }}\nLeave: {{ unsubscribe_url }}\n"
# Blueprints of this phase, and their POST endpoints that only read.
PARTS = ("contacts", "lists", "templates", "send", "mailouts", "campaigns")
READ_ONLY_POSTS = {"templates.preview"}


def shop(ui, count: int = 4) -> list[int]:
    """Contacts ann0.. of list news (cities Paris/Oslo), template news; their ids."""
    ui.store.upsert_contacts([ContactIn(f"ann{i}@shop{i % 2}.example", f"Ann {i}",
                                        {"city": ("Paris", "Oslo")[i % 2]})
                              for i in range(count)], "news")
    templates.save_template(ui.store, "news", "News for {{ name }}", TEXT, None, create=True)
    return [c["id"] for c in ui.store.contacts(limit=count)]


def mailout(ui, selection: str = "list", **kw) -> int:
    now = time.time()
    mailout_id = ui.store.create_mailout(MailoutSpec(
        template=kw.pop("template", "news"), sender="news@shop.example", selection=selection,
        send_at=now, expires_at=now + 3600, list_name="news" if selection == "list" else None,
        **kw))
    while ui.store.mailout_step(time.time(), 1000, 3600).more:
        pass
    return mailout_id


def deliver(ui, outcomes: list[str]) -> None:
    rows = ui.store.claim("r1", len(outcomes), time.time() + 60)
    ui.store.record([Attempt(row, status, 250, "2.0.0", "250 ok", "mx.shop.example",
                             not_before=time.time() + 60)
                     for row, status in zip(rows, outcomes)], "r1")


def post(client, path: str, data: dict | None = None, **kw):
    return client.post(path, data={**(data or {}), "csrf_token": csrf_token(client, "/")}, **kw)


def flashes(client, response) -> str:
    """The page a POST redirected to, or rendered, as text."""
    if response.status_code == 302:
        response = client.get(response.headers["Location"])
    return response.get_data(as_text=True)


def test_viewers_read_every_page_but_cannot_act(ui):
    ids = shop(ui)
    mailout_id = mailout(ui)
    ui.store.create_campaign("spring", "news", "news@shop.example", time.time(),
                             time.time() + 86400)
    viewer, admin = ui.client("vic"), ui.client("ann")
    acting = (f"/contacts/{ids[0]}", "/lists", "/templates/show?name=news",
              f"/mailouts/{mailout_id}", "/campaigns", "/campaigns/show?name=spring")
    for path in ("/contacts", "/contacts?list=news", "/templates", "/mailouts", *acting):
        page = viewer.get(path)
        assert page.status_code == 200, path
        forms = re.findall(r'<form method="post"[^>]*action="([^"]+)"', page.get_data(as_text=True))
        assert forms == ["/logout"], (path, forms)  # nothing to act with but logging out
        if path in acting:
            assert len(re.findall(r'<form method="post"', admin.get(path).get_data(
                as_text=True))) > 1, path
    for path in ("/contacts/new", f"/contacts/{ids[0]}/edit", "/contacts/import",
                 "/templates/new", "/templates/edit?name=news", "/send"):
        assert viewer.get(path).status_code == 403, path
        assert admin.get(path).status_code == 200, path
    token = csrf_token(viewer, "/")
    posts = [r for r in ui.app.url_map.iter_rules() if "POST" in r.methods
             and r.endpoint.split(".")[0] in PARTS and r.endpoint not in READ_ONLY_POSTS]
    assert len(posts) >= 15
    for rule in posts:
        url = rule.rule.replace("<int:contact_id>", str(ids[0])) \
            .replace("<int:mailout_id>", str(mailout_id))
        response = viewer.post(url, data={"csrf_token": token, "action": "cancel",
                                          "name": "news"})
        assert response.status_code == 403, url
    assert ui.store.mailout(mailout_id)["status"] == "sending"
    assert len(ui.store.contacts()) == 4 and ui.store.list_names() == ["news"]
    assert 'href="/send"' not in viewer.get("/").get_data(as_text=True)
    assert 'href="/send"' in admin.get("/").get_data(as_text=True)


def test_forms_without_a_valid_csrf_token_change_nothing(ui):
    ids = shop(ui)
    mailout_id = mailout(ui)
    admin = ui.client("ann")
    forged = csrf_token(ui.client("vic"), "/")  # another session's token
    for path, data in (("/lists/create", {"new-name": "vip"}),
                       (f"/contacts/{ids[0]}/delete", {}),
                       (f"/mailouts/{mailout_id}/action", {"action": "cancel"}),
                       ("/send", {"template": "news", "selection": "all", "send": "Send"}),
                       ("/templates/new", {"name": "t2", "subject": "S", "text": "T",
                                           "save": "Save"})):
        for token in (None, forged):
            response = admin.post(path, data={**data, **({"csrf_token": token} if token
                                                         else {})})
            assert response.status_code == 400, path
            assert "Reload the page" in response.get_data(as_text=True)
    assert ui.store.list_names() == ["news"] and len(ui.store.contacts()) == 4
    assert len(ui.store.mailouts()) == 1 and ui.store.mailout(mailout_id)["status"] == "sending"
    assert [t["name"] for t in ui.store.templates()] == ["news"]


def test_contacts_add_search_page_edit_unsubscribe_delete(make_ui):
    ui = make_ui(page_size=5)
    shop(ui, 12)
    admin = ui.client("ann")
    added = post(admin, "/contacts/new", {"email": "Zoe@Shop.example", "name": "Zoe Q",
                                          "attributes": "city=Rome\r\nplan = pro",
                                          "list_name": "vip"})
    assert added.status_code == 302
    zoe = ui.store.contact("zoe@shop.example")
    assert added.headers["Location"] == f"/contacts/{zoe['id']}"
    assert (zoe["name"], zoe["attributes"], zoe["lists"]) == \
        ("Zoe Q", {"city": "Rome", "plan": "pro"}, ["vip"])
    bad = post(admin, "/contacts/new", {"email": "not an address", "name": "x"})
    assert bad.status_code == 400 and "not an address" in bad.get_data(as_text=True)
    bad = post(admin, "/contacts/new", {"email": "x@shop.example", "attributes": "a b=1"})
    assert bad.status_code == 400 and "use NAME=VALUE" in bad.get_data(as_text=True)

    first = admin.get("/contacts").get_data(as_text=True)
    assert "13 contacts." in first and first.count('name="contact"') == 5
    second = admin.get(re.search(r'href="([^"]+)" rel="next"', first).group(1).replace(
        "&amp;", "&")).get_data(as_text=True)
    assert "ann5@shop1.example" in second and "ann4@" not in second
    found = admin.get("/contacts?q=zoe+q").get_data(as_text=True)
    assert f">{zoe['email']}</a>" in found and "ann1@" not in found
    assert admin.get("/contacts?list=vip").get_data(as_text=True).count('name="contact"') == 1
    assert admin.get("/contacts?list=nope").status_code == 404

    edited = post(admin, f"/contacts/{zoe['id']}/edit",
                  {"email": "zoe@shop.example", "name": "Zoe", "attributes": "city=Milan"})
    assert edited.status_code == 302
    zoe = ui.store.contact("zoe@shop.example")
    assert (zoe["name"], zoe["attributes"]) == ("Zoe", {"city": "Milan"})  # plan removed
    page = flashes(admin, post(admin, f"/contacts/{zoe['id']}/unsubscribe"))
    assert f"{zoe['email']}: unsubscribed." in page
    assert ui.store.suppressed(["zoe@shop.example"]) == {"zoe@shop.example"}
    assert "was already unsubscribed" in flashes(admin, post(admin,
                                                              f"/contacts/{zoe['id']}/unsubscribe"))
    mailout(ui)
    ann0 = ui.store.contact("ann0@shop0.example")
    page = flashes(admin, post(admin, f"/contacts/{ann0['id']}/delete"))
    assert "ann0@shop0.example: deleted, 1 queued row removed." in page
    assert admin.get(f"/contacts/{ann0['id']}").status_code == 404

    ticked = admin.get("/send?contact=ann1@shop1.example&contact=ann2@shop0.example")
    page = ticked.get_data(as_text=True)
    assert "ann1@shop1.example\nann2@shop0.example</textarea>" in page
    assert re.search(r'<input checked[^>]*value="contacts"', page)


def test_lists_create_fill_empty_and_delete(ui):
    shop(ui)
    admin = ui.client("ann")
    assert "List vip created." in flashes(admin, post(admin, "/lists/create", {"new-name": "vip"}))
    assert "list &#39;vip&#39; exists already" in flashes(
        admin, post(admin, "/lists/create", {"new-name": "vip"}))

    def members(action: str, emails: str):
        return flashes(admin, post(admin, "/lists/members", {
            "members-name": "vip", "members-emails": emails, f"members-{action}": "x"}))

    assert "no contact nobody@x.example" in members("add", "ann0@shop0.example\nnobody@x.example")
    assert "List vip: 2 contacts added." in members("add", "ann0@shop0.example, ann1@shop1.example")
    assert "List vip: 1 contact removed." in members("remove", "ann0@shop0.example")
    assert [c["email"] for c in ui.store.contacts(list_name="vip")] == ["ann1@shop1.example"]
    page = admin.get("/lists").get_data(as_text=True)
    assert 'href="/contacts?list=vip">vip</a></td>\n<td>1</td>' in page
    ui.store.create_campaign("spring", "vip", "news@shop.example", time.time(), time.time() + 60)
    assert "belongs to a campaign" in flashes(admin, post(admin, "/lists/delete",
                                                          {"name": "vip"}))
    assert "List news deleted (its contacts stay)." in flashes(
        admin, post(admin, "/lists/delete", {"name": "news"}))
    assert ui.store.list_names() == ["vip"] and len(ui.store.contacts()) == 4


def test_csv_upload_lists_bad_lines_and_strict_refuses_them(ui, tmp_path):
    admin = ui.client("ann")
    text = ("email,name,city\n"
            "ann@shop.example,Ann,Paris\n"
            "not an address,Bob,Oslo\n"
            "cat@shop.example,Cat\n"
            "dan@shop.example,Dan,Rome\n")

    def upload(content: str, filename: str = "people.csv", **form):
        return post(admin, "/contacts/import", {
            "file": (io.BytesIO(content.encode()), filename), **form},
            content_type="multipart/form-data")

    strict = upload(text, strict="y", list_name="news")
    page = strict.get_data(as_text=True)
    assert strict.status_code == 400 and ui.store.contact_count() == 0
    assert "people.csv: 2 bad lines, nothing imported:" in page
    path = tmp_path / "people.csv"
    path.write_text(text)
    expected = import_contacts(ui.store, path, strict=False, show_progress=False).bad  # the CLI's
    with ui.store.transaction() as cur:
        ui.store.execute(cur, "DELETE FROM contact")
    assert [re.sub(r"<[^>]+>", "", li) for li in
            re.findall(r"<li>(.*?)</li>", page)] == [re.sub("'", "&#39;", line)
                                                      for line in expected]
    loose = upload(text, list_name="news")
    page = loose.get_data(as_text=True)
    assert loose.status_code == 200
    assert "people.csv: 2 contacts added, 0 updated, 2 bad lines skipped (list news)." in page
    assert "<li>line 3: " in page and "<li>line 4: 2 fields where the header has 3</li>" in page
    assert [c["email"] for c in ui.store.contacts(list_name="news")] == \
        ["ann@shop.example", "dan@shop.example"]
    again = upload("email,name\nann@shop.example,Annie\n")
    assert "0 contacts added, 1 updated." in again.get_data(as_text=True)
    assert ui.store.contact("ann@shop.example")["name"] == "Annie"
    header = upload("name,city\nAnn,Paris\n")
    assert header.status_code == 400 and "no &#39;email&#39; column" in header.get_data(
        as_text=True)
    assert post(admin, "/contacts/import", {}).status_code == 400  # no file


def test_template_editor_checks_saves_and_previews_as_the_child_renders(ui):
    shop(ui)
    admin = ui.client("ann")
    refused = post(admin, "/templates/new", {"name": "promo", "subject": "Hi {{ nme }}",
                                             "text": "Hello {{ attributes.shoe }}",
                                             "save": "Save"})
    page = refused.get_data(as_text=True)
    assert refused.status_code == 400
    assert "subject, line 1: unknown placeholder &#39;nme&#39;" in page
    assert "text, line 1: unknown attribute &#39;shoe&#39;" in page
    saved = post(admin, "/templates/new", {"name": "promo", "subject": "Hi {{ name }}",
                                           "text": "Hello\r\n{{ attributes.city }}\r\n",
                                           "html": "<p>{{ name }}</p>", "save": "Save"})
    assert saved.status_code == 302 and saved.headers["Location"] == "/templates/edit?name=promo"
    promo = ui.store.template("promo")
    assert (promo["text"], promo["html"]) == ("Hello\n{{ attributes.city }}\n",
                                              "<p>{{ name }}</p>")
    editor = admin.get("/templates/edit?name=promo").get_data(as_text=True)
    assert "<dd>Hi Ann 0</dd>" in editor and "Hello\nParis" in editor  # the first contact's
    assert 'sandbox' in editor and "srcdoc=\"&lt;p&gt;Ann 0&lt;/p&gt;" in editor

    def preview(**draft):
        return post(admin, "/templates/preview.json", {
            "subject": "S {{ name }}", "text": TEXT, **draft}).json

    shown = preview(contact="ann1@shop1.example")
    cli = email.message_from_bytes(
        templates.render_preview(ui.config, ui.store, {"subject": "S {{ name }}", "text": TEXT,
                                                       "html": None}, "ann1@shop1.example"),
        policy=email.policy.default)
    assert shown["text"] == cli.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert dict(shown["headers"])["Subject"] == "S Ann 1" and shown["html"] is None
    assert "List-Unsubscribe-Post" in dict(shown["headers"])
    assert preview(contact="nobody@x.example")["error"] == "no contact nobody@x.example"
    ui.store.upsert_contacts([ContactIn("cityless@x.example", "C", {})])
    assert "cannot render it for cityless@x.example" in preview(
        contact="cityless@x.example")["error"]
    assert "unknown placeholder" in preview(text="{{ nope }}")["error"]
    viewer = ui.client("vic")  # the editor's preview is the admins', like the editor
    assert post(viewer, "/templates/preview.json", {"subject": "V", "text": "T"}).status_code \
        == 403
    no_js = post(admin, "/templates/edit?name=promo", {"subject": "Changed {{ name }}",
                                                       "text": "T", "preview": "Preview"})
    assert no_js.status_code == 200 and "<dd>Changed Ann 0</dd>" in no_js.get_data(as_text=True)
    assert ui.store.template("promo")["subject"] == "Hi {{ name }}"  # previewed, not saved
    edited = post(admin, "/templates/edit?name=promo", {"subject": "New {{ name }}",
                                                        "text": "T", "html": "", "save": "Save"})
    assert edited.status_code == 302 and ui.store.template("promo")["html"] is None
    mailout(ui, template="promo")
    assert "is used by a mailout" in flashes(admin, post(admin, "/templates/delete",
                                                         {"name": "promo"}))
    templates.save_template(ui.store, "old", "S", "T", None, create=True)
    assert "Template old deleted." in flashes(admin, post(admin, "/templates/delete",
                                                          {"name": "old"}))
    assert admin.get("/templates/show?name=old").status_code == 404


def test_send_page_creates_mailouts_as_the_cli_does(ui):
    shop(ui)
    admin = ui.client("ann")
    base = {"template": "news", "priority": "bulk"}

    def send(**form):
        return post(admin, "/send", {**base, "send": "Send", **form})

    made = send(selection="list", list_name="news")
    assert made.status_code == 302
    mailout_id = int(made.headers["Location"].rsplit("/", 1)[1])
    mo = ui.store.mailout(mailout_id)
    assert (mo["selection"], mo["list"], mo["priority"], mo["status"]) == \
        ("list", "news", 2, "scheduled")
    assert mo["expires_at"] - mo["send_at"] == ui.config.runner.max_lifetime
    assert mo["sender"] == ui.config.mailout_sender
    later = send(selection="where", where="city = Paris", send_at="2030-01-02T09:00",
                 rate="500/h", priority="normal", sender="Shop <news@shop.example>")
    mo = ui.store.mailout(int(later.headers["Location"].rsplit("/", 1)[1]))
    assert (mo["where_filter"], mo["rate"], mo["priority"], mo["sender"]) == \
        ("city = Paris", 500, 1, "Shop <news@shop.example>")
    assert mo["send_at"] == datetime.datetime(2030, 1, 2, 9).timestamp()  # local time
    named = send(selection="contacts", contacts="ann1@shop1.example\r\nann2@shop0.example")
    assert named.status_code == 302
    test = post(admin, "/send", {**base, "selection": "all", "test": "Send a test",
                                 "test_to": "qa@shop.example",
                                 "test_contact": "ann3@shop1.example"})
    page = test.get_data(as_text=True)
    assert test.status_code == 200 and "Test mailout" in page and "qa@shop.example" in page
    assert '<option selected value="news">' in page  # the form is kept for the real send
    test_mo = ui.store.mailouts()[0]
    assert test_mo["test_to"] == ["qa@shop.example"] and test_mo["selection"] == "all"
    assert post(admin, "/send", {**base, "selection": "all", "test": "x"}).status_code == 400
    bad = send(selection="where", where="city = Paris and")
    assert bad.status_code == 400
    assert "filter: expected a field name (letters, digits, _) at character 17, found the end" \
        in bad.get_data(as_text=True)
    assert "send at &#39;tomorrow&#39;: use ISO 8601" in send(
        selection="all", send_at="tomorrow").get_data(as_text=True)
    assert "rate &#39;0/h&#39;" in send(selection="all", rate="0/h").get_data(as_text=True)
    assert "no list &#39;nope&#39;" in send(selection="list", list_name="nope").get_data(
        as_text=True)
    assert len(ui.store.mailouts()) == 4


def test_mailout_pages_progress_verbs_queue_and_statistics(ui):
    shop(ui)
    mailout_id = mailout(ui)
    other = mailout(ui, selection="all")
    deliver(ui, ["sent", "sent", "bounced"])
    admin = ui.client("ann")
    listing = admin.get("/mailouts").get_data(as_text=True)
    assert '<progress max="4" value="3">' in listing
    page = admin.get(f"/mailouts/{mailout_id}").get_data(as_text=True)
    assert 'data-counter="sent">2<' in page and 'data-counter="queued">1<' in page
    assert f'href="/queue?mailout={mailout_id}"' in page
    dashboard = admin.get("/dashboard.json").json
    assert dashboard["mailouts"][1] == {"id": mailout_id, "name": "news", "status": "sending",
                                        "test": False, "done": 3, "total": 4, "sent": 2,
                                        "bounced": 1}
    assert '<progress max="4" value="3">' in dashboard["fragments"]["mailouts"]
    queue = admin.get(f"/queue?mailout={other}").get_data(as_text=True)
    assert "4 rows match." in queue and f'value="{other}"' in queue
    assert admin.get("/queue?mailout=x").status_code == 400

    def act(verb: str) -> str:
        return flashes(admin, post(admin, f"/mailouts/{other}/action", {"action": verb}))

    assert f"Mailout {other}: paused, 4 queued rows held." in act("pause")
    assert ui.store.queue_count(mailout=other, state="held") == 4
    assert f"Mailout {other}: resumed, 4 rows released." in act("resume")
    assert f"Mailout {other}: cancelled, 4 queued rows removed." in act("cancel")
    assert "cancelled: cannot pause it" in act("pause")
    assert post(admin, f"/mailouts/{other}/action", {"action": "explode"}).status_code == 400
    assert admin.get("/mailouts/999").status_code == 404
    stats = admin.get("/stats").get_data(as_text=True)
    totals = stats.split("Mailouts</h2>")[1].split("</table>")[0]
    assert f'href="/mailouts/{other}">{other}</a>' in totals and ">4</td>" in totals
    rows = list(csv.DictReader(io.StringIO(admin.get("/stats/deliveries.csv").get_data(
        as_text=True))))
    assert {r["mailout"] for r in rows} == {str(mailout_id), str(other)}


def test_campaign_pages(ui):
    shop(ui)
    admin = ui.client("ann")
    created = post(admin, "/campaigns/create", {
        "campaign-name": "spring", "campaign-list_name": "news",
        "campaign-starts_at": "2030-03-01T00:00", "campaign-ends_at": "2030-05-31T00:00"})
    assert created.headers["Location"] == "/campaigns/show?name=spring"
    assert "Campaign spring created" in flashes(admin, created)
    added = flashes(admin, post(admin, "/campaigns/scenario", {
        "name": "spring", "scenario-template": "news", "scenario-at": "2030-03-02T09:00"}))
    assert "Scenario 1: news at 2030-03-02T09:00." in added and "scheduled" in added
    outside = flashes(admin, post(admin, "/campaigns/scenario", {
        "name": "spring", "scenario-template": "news", "scenario-at": "2031-01-01T09:00"}))
    assert "outside campaign &#39;spring&#39;" in outside
    assert ui.store.campaign("spring")["scenarios"] == 1
    assert "already" in flashes(admin, post(admin, "/campaigns/create", {
        "campaign-name": "spring", "campaign-list_name": "news",
        "campaign-starts_at": "2030-03-01T00:00", "campaign-ends_at": "2030-05-31T00:00"}))
    assert admin.get("/campaigns/show?name=nope").status_code == 404


def test_api_creates_a_mailout_and_reads_its_counters(ui):
    shop(ui)
    ui.store.add_token("vic", token_digest("spoold_viewer"))
    ui.store.add_token("ann", token_digest("spoold_admin"))
    client = ui.app.test_client()

    def call(method: str, path: str, token: str, **kw):
        return client.open(path, method=method, headers={"Authorization": f"Bearer {token}"},
                           **kw)

    body = {"template": "news", "list": "news", "rate": "100/h", "send_at": "+1h"}
    assert call("POST", "/api/v1/mailouts", "spoold_viewer", json=body).status_code == 403
    made = call("POST", "/api/v1/mailouts", "spoold_admin", json=body)
    assert made.status_code == 201 and made.json["selection"] == "list"
    assert made.json["send_at"] == pytest.approx(time.time() + 3600, abs=5)
    shown = call("GET", f"/api/v1/mailouts/{made.json['id']}", "spoold_viewer").json
    assert (shown["status"], shown["rate"], shown["counters"]["total"]) == ("scheduled", 100, 0)
    test = call("POST", "/api/v1/mailouts", "spoold_admin",
                json={"template": "news", "contacts": ["ann1@shop1.example"],
                      "test_to": "qa@shop.example"})
    assert test.status_code == 201 and test.json["test_to"] == ["qa@shop.example"]
    for bad, message in (({**body, "all": True}, "choose the recipients"),
                         ({"template": "nope", "all": True}, "no template 'nope'"),
                         ({"template": "news", "all": True, "priority": "high"}, "priority"),
                         ({"template": "news", "where": "city ="}, "filter: expected a value")):
        answer = call("POST", "/api/v1/mailouts", "spoold_admin", json=bad)
        assert answer.status_code == 400 and message in answer.json["error"], bad
    assert call("GET", "/api/v1/mailouts/999", "spoold_viewer").status_code == 404


@pytest.fixture
def unsub(make_ui):
    ui = make_ui()
    ids = shop(ui)
    mailout_id = mailout(ui)
    secret = secret_for(ui.config, ui.store)
    return ui, ids, mailout_id, lambda contact_id: make_token(secret, contact_id, mailout_id)


def test_unsubscribe_confirms_on_get_and_records_on_post(unsub):
    ui, ids, mailout_id, token = unsub
    browser = ui.app.test_client()
    page = browser.get(f"/unsubscribe/{token(ids[0])}")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and "ann0@shop0.example" in body
    assert f'action="/unsubscribe/{token(ids[0])}"' in body
    assert ui.store.contact(contact_id=ids[0])["unsubscribed_at"] is None  # GET changes nothing
    done = browser.post(f"/unsubscribe/{token(ids[0])}")  # the confirm page's button
    assert done.status_code == 200 and "Unsubscribed" in done.get_data(as_text=True)
    assert ui.store.contact(contact_id=ids[0])["unsubscribed_at"] is not None
    assert ui.store.suppressed(["ann0@shop0.example"]) == {"ann0@shop0.example"}
    assert "is unsubscribed" in browser.get(f"/unsubscribe/{token(ids[0])}").get_data(
        as_text=True)
    assert browser.post(f"/unsubscribe/{token(ids[0])}").status_code == 200  # again: nothing
    assert ui.store.mailout_counters(mailout_id)["unsubscribed"] == 1


def test_one_click_unsubscribe_needs_no_cookie_and_forged_tokens_are_refused(unsub):
    ui, ids, mailout_id, token = unsub
    mail_client = ui.app.test_client(use_cookies=False)
    one_click = mail_client.post(f"/unsubscribe/{token(ids[1])}",
                                 data="List-Unsubscribe=One-Click",
                                 content_type="application/x-www-form-urlencoded")
    assert one_click.status_code == 200 and "Set-Cookie" not in one_click.headers
    assert ui.store.contact(contact_id=ids[1])["unsubscribed_at"] is not None
    real = token(ids[2])
    forged = [f"{ids[3]}{real[real.index('.'):]}",  # another contact, this one's MAC
              real[:-2] + ("AA" if not real.endswith("AA") else "BB"),
              "1.1.short", "../../etc/passwd", "x" * 300]
    for bad in forged:
        for method in ("GET", "POST"):
            answer = mail_client.open(f"/unsubscribe/{bad}", method=method,
                                      data="List-Unsubscribe=One-Click",
                                      content_type="application/x-www-form-urlencoded")
            assert answer.status_code in (400, 404), (bad, method)
            if answer.status_code == 400:
                assert "Invalid link" in answer.get_data(as_text=True)
    test_send = make_token(secret_for(ui.config, ui.store), 0, mailout_id)
    assert "A test message" in mail_client.get(f"/unsubscribe/{test_send}").get_data(
        as_text=True)
    assert mail_client.post(f"/unsubscribe/{test_send}").status_code == 200
    unsubscribed = [c["email"] for c in ui.store.contacts() if c["unsubscribed_at"]]
    assert unsubscribed == ["ann1@shop1.example"]  # nobody else: not forged, not contact 0
    assert ui.store.mailout_counters(mailout_id)["unsubscribed"] == 1
    ui.store.delete_contact("ann2@shop0.example")
    assert mail_client.post(f"/unsubscribe/{real}").status_code == 404


def test_the_default_unsubscribe_url_is_this_ui(ui):
    defaults = {(s.section, s.key): s.default for s in config_mod.SETTINGS}
    url = urlsplit(defaults["mailout", "unsubscribe_url"].replace("{token}", "1.2.abc"))
    assert (url.hostname, url.port) == (defaults["webui", "bind"], defaults["webui", "port"])
    endpoint, args = ui.app.url_map.bind("ui").match(url.path)
    assert (endpoint, args) == ("unsubscribe.confirm", {"token": "1.2.abc"})


def test_hostile_names_are_escaped_on_every_page(ui):
    ui.store.upsert_contacts([ContactIn(HOSTILE_EMAIL, HOSTILE, {"city": HOSTILE_ATTR}),
                              ContactIn("plain@shop.example", HOSTILE_ATTR, {"city": "x"})],
                             HOSTILE)
    ui.store.create_list(HOSTILE_ATTR)
    templates.save_template(ui.store, HOSTILE, HOSTILE + " {{ name }}", TEXT,
                            "<p>{{ name }}</p>" + HOSTILE, create=True)
    ui.store.create_campaign(HOSTILE, HOSTILE, "news@shop.example", time.time(),
                             time.time() + 86400)
    mailout_id = mailout(ui, selection="where", template=HOSTILE,
                         where=f"name = '{HOSTILE}'")
    contact = ui.store.contact(HOSTILE_EMAIL)
    admin = ui.client("ann")
    post(admin, "/lists/create", {"new-name": HOSTILE + "2"})  # a flash message naming it
    token = make_token(secret_for(ui.config, ui.store), contact["id"], mailout_id)
    pages = ["/", "/contacts", f"/contacts?q={HOSTILE}", f"/contacts?list={HOSTILE}",
             f"/contacts/{contact['id']}", f"/contacts/{contact['id']}/edit", "/lists",
             "/templates", f"/templates/show?name={HOSTILE}", f"/templates/edit?name={HOSTILE}",
             f"/send?contact={HOSTILE_EMAIL}&template={HOSTILE}", "/mailouts",
             f"/mailouts/{mailout_id}", "/campaigns", f"/campaigns/show?name={HOSTILE}",
             "/stats", f"/queue?mailout={mailout_id}", f"/unsubscribe/{token}"]
    seen = escaped_pages(admin, pages)
    assert not any(raw in admin.get("/dashboard.json").json["fragments"]["mailouts"]
                   for raw in RAW)
    for shown in ("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;",
                  "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;",
                  "&#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;@hostile.example"):
        assert shown in seen, shown


def test_every_new_page_renders_on_both_databases(make_ui, db_url):
    ui = make_ui(db_url)
    ids = shop(ui)
    mailout_id = mailout(ui)
    deliver(ui, ["sent", "deferred"])
    ui.store.create_campaign("spring", "news", "news@shop.example", time.time(),
                             time.time() + 86400)
    client = ui.client("ann")
    for path in ("/contacts", "/contacts?q=ann&list=news", f"/contacts?after={ids[1]}",
                 f"/contacts/{ids[0]}", f"/contacts/{ids[0]}/edit", "/contacts/new",
                 "/contacts/import", "/lists", "/templates", "/templates/show?name=news",
                 "/templates/edit?name=news", "/templates/new", "/send", "/send?list=news",
                 "/mailouts", f"/mailouts?before={mailout_id + 1}", f"/mailouts/{mailout_id}",
                 "/campaigns", "/campaigns/show?name=spring", f"/queue?mailout={mailout_id}",
                 "/stats", "/dashboard.json"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[:500])
    assert client.get("/dashboard.json").json["mailouts"][0]["done"] == 1
