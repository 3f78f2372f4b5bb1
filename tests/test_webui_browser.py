"""End to end in headless Chromium: the real spoold-webui server, a real runner,
real SMTP sinks on loopback, a person clicking through the pages.

Uses Debian's chromium (/usr/bin/chromium) driven by Playwright for Python;
never a browser download.  Skips, saying why, where either is missing;
fails instead when SPOOLD_REQUIRE_BROWSER=1 (as .ci/run sets).  Screenshots
of each page are kept in the test's tmp dir; with SPOOLD_SCREENSHOTS=DIR
they are also written to DIR (docs/ holds the ones the README shows).
"""

from __future__ import annotations

import csv
import email
import email.policy
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import wait_for
from webui_support import USERS, add_users

from spoold.fakenet import Behaviour
from spoold.passwords import new_token
from spoold.store import store_for

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
HOSTILE = '"<script>alert(1)</script>"'


def _require_browser():
    reason = None
    if not CHROMIUM.exists():
        reason = f"no {CHROMIUM}: apt-get install chromium (.ci/run does)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "Playwright is not installed: pip install playwright"
    if reason:
        if os.environ.get("SPOOLD_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def spool(spool_factory):
    """Retries far apart: deferred rows stay put long enough to be held from the UI."""
    return spool_factory(runner={"backoff_min": 60, "backoff_max": 120})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def _serving(spool, port: int = 0) -> Iterator[str]:
    """The spoold-webui program (python -m webui) on a loopback port; its URL."""
    log_path = spool.config_path.with_suffix(".webui.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "webui", "--port", str(port)],
                                env=spool.env, stdout=log, stderr=log)
    url: list[str] = []

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"spoold-webui exited: {log_path.read_text()}")
        for line in log_path.read_text().splitlines():
            if '"webui_listening"' in line:
                url.append(json.loads(line)["url"])
                return True
        return False

    try:
        wait_for(listening, timeout=20, what="spoold-webui to listen")
        yield url[0].rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def webui_url(spool):
    """The web UI on a free loopback port."""
    with _serving(spool) as url:
        yield url


def _answer(dialog, alerts: list[str]) -> None:
    """Confirm the queue page's "every row matching the filter?"; any other
    dialog is a hostile string that ran as script."""
    if dialog.type == "confirm" and dialog.message.startswith("hold every row"):
        dialog.accept()
    else:
        alerts.append(dialog.message)
        dialog.dismiss()


def _shoot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"webui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("SPOOLD_SCREENSHOTS")
    if keep:
        shutil.copy(path, Path(keep) / path.name)


def test_dashboard_follows_a_real_delivery_without_reloading(world, spool, webui_url,
                                                             tmp_path):
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    for name in ("shop.test", "news.test", "store.test", "mail.test"):
        world.add_domain(name)
    world.add_domain("rejects.test", Behaviour(rcpt_reply="550 5.1.1 No such user here"))
    world.add_domain("slow.test", Behaviour(tempfail_first=99))
    store = store_for(spool.config)
    add_users(store)
    token, digest = new_token()
    store.add_token("ann", digest)
    store.close()
    spool.start()
    recipients = [f"reader{i}@{d}" for i in range(4)
                  for d in ("shop.test", "news.test", "store.test", "mail.test")]
    alerts: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.on("dialog", lambda dialog: _answer(dialog, alerts))
            page.goto(f"{webui_url}/")
            assert "/login" in page.url
            page.fill("input[name=name]", "ann")
            page.fill("input[name=password]", USERS["ann"][1])
            page.click("button[type=submit]")
            page.wait_for_selector("[data-counter='today.sent']")
            page.evaluate("window.__sameDocument = true")
            sent = page.locator("[data-counter='today.sent']")
            assert sent.inner_text() == "0"

            api = page.request
            auth = {"Authorization": f"Bearer {token}"}
            mail = {"from": "news@spoold.test", "subject": "Spring sale", "body": "Hello"}
            assert api.post(f"{webui_url}/api/v1/enqueue", headers=auth,
                            data={**mail, "to": recipients}).status == 201
            hostile = {**mail, "subject": "<script>alert('subject')</script>"}
            assert api.post(f"{webui_url}/api/v1/enqueue", headers=auth,
                            data={**hostile, "to": [f"{HOSTILE}@rejects.test",
                                                    "gone@rejects.test"]}).status == 201
            assert api.post(f"{webui_url}/api/v1/enqueue", headers=auth,
                            data={**hostile, "to": [f"{HOSTILE}@slow.test", "a@slow.test",
                                                    "b@slow.test"]}).status == 201
            # The page's CSP forbids eval, so poll with locators, not wait_for_function.
            expect(sent).to_have_text(str(len(recipients)), timeout=45_000)
            expect(page.locator("[data-counter='today.bounced']")).to_have_text("2")
            expect(page.locator("[data-counter='queue.deferred']")).to_have_text("3")
            assert page.evaluate("window.__sameDocument") is True  # no reload happened
            assert page.locator("[data-fragment='runners'] .badge.up").count() == 1
            _shoot(page, tmp_path, "dashboard")

            # Hold one deferred row by ticking it, then the rest of its domain by filter.
            page.goto(f"{webui_url}/queue?domain=slow.test")
            assert page.locator("td .badge.deferred").count() == 3
            page.locator("input[name=id]").first.check()
            page.click("button[value=hold]")
            expect(page.locator(".flash.ok")).to_have_text("1 row held.")
            page.check("input[name=scope][value=filter]")
            page.click("button[value=hold]")
            expect(page.locator(".flash.ok")).to_have_text("2 rows held.")
            assert page.locator("td .badge.held").count() == 3
            page.click("td a >> nth=0")  # the row's own page, hostile subject and all
            expect(page.locator("h1")).to_contain_text("held")
            assert "<script>alert('subject')</script>" in page.locator(".facts").last.inner_text()
            page.goto(f"{webui_url}/queue")
            _shoot(page, tmp_path, "queue")

            page.goto(f"{webui_url}/stats")
            page.wait_for_load_state("load")
            assert page.evaluate("Array.from(document.images).map(i => i.naturalWidth)") == \
                [900, 900]
            assert "rejects.test" in page.locator("table.domains").inner_text()
            assert "<script>" in page.locator("table.deliveries").inner_text()
            _shoot(page, tmp_path, "stats")
        finally:
            browser.close()
    assert alerts == []  # no hostile string ran as script on any page
    for name in ("dashboard", "queue", "stats"):  # the test's artefacts
        assert (tmp_path / f"webui-{name}.png").stat().st_size > 10_000


PEOPLE = [("email", "name", "city"), ("ann@north.test", "Ann", "Paris"),
          ("bob@south.test", "Bob", "Oslo"),
          ('"<script>alert(1)</script>"@north.test', "<img src=x onerror=alert(2)>", "Rome"),
          ("cat@east.test", "Cat", "Lima"), ("not an address", "Dan", "Kyiv"),
          ("dee@south.test", "Dee", "Baku")]


def _login(page, url: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=name]", "ann")
    page.fill("input[name=password]", USERS["ann"][1])
    page.click("button[type=submit]")
    page.wait_for_selector("[data-counter='today.sent']")


def test_a_mailout_from_csv_upload_to_delivered_and_unsubscribed(world, spool_factory,
                                                                   tmp_path):
    """Upload contacts, write a template with its live preview, send it from the send
    page, watch the dashboard follow the real runner's deliveries, then follow a
    received message's unsubscribe link."""
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    for name in ("north.test", "south.test", "east.test"):
        world.add_domain(name)
    port = _free_port()
    spool = spool_factory(mailout={"interval": 0.2, "sender": "Shop <news@shop.test>",
                                   "unsubscribe_url": f"http://127.0.0.1:{port}/unsubscribe/"
                                                      "{token}"})
    store = store_for(spool.config)
    add_users(store)
    store.close()
    csv_path = tmp_path / "people.csv"
    with open(csv_path, "w", newline="") as out:
        csv.writer(out).writerows(PEOPLE)
    alerts: list[str] = []
    spool.start()
    with _serving(spool, port) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
            _login(page, url)

            page.goto(f"{url}/contacts/import")
            page.set_input_files("input[name=file]", str(csv_path))
            page.fill("input[name=list_name]", "news")
            page.click("button[type=submit]")
            expect(page.locator(".flash")).to_contain_text(
                "people.csv: 5 contacts added, 0 updated, 1 bad line skipped (list news).")
            expect(page.locator("#import-errors li")).to_have_text(
                ["line 6: bad address 'not an address': has no @domain"])
            page.goto(f"{url}/contacts?list=news")
            expect(page.locator("table.contacts tbody tr")).to_have_count(5)
            assert "<img src=x onerror=alert(2)>" in page.locator("table.contacts").inner_text()
            _shoot(page, tmp_path, "contacts")

            page.goto(f"{url}/templates/new")
            page.fill("input[name=name]", "spring")
            page.fill("input[name=subject]", "Spring news for {{ name }}")
            page.fill("input[name=contact]", "bob@south.test")
            page.fill("textarea[name=text]", "Hello {{ name }} of {{ attributes.city }}!\n"
                                             "Leave: {{ unsubscribe_url }}\n")
            page.fill("textarea[name=html]", "<p>Hello <b>{{ name }}</b></p>")
            # The preview follows the typing (the page's script asks the server).
            expect(page.locator("[data-preview-text]")).to_contain_text("Hello Bob of Oslo!")
            expect(page.locator("[data-preview-headers]")).to_contain_text(
                "Spring news for Bob")
            page.fill("textarea[name=text]", "Hello {{ nme }}")
            expect(page.locator("[data-preview-error]")).to_contain_text(
                "unknown placeholder 'nme'")
            page.fill("textarea[name=text]", "Hello {{ name }} of {{ attributes.city }}!\n"
                                             "Leave: {{ unsubscribe_url }}\n")
            expect(page.locator("[data-preview-error]")).to_be_hidden()
            frame = page.frame_locator("iframe[data-preview-html]")
            expect(frame.locator("b")).to_have_text("Bob")
            _shoot(page, tmp_path, "template")
            page.click("button[name=save]")
            expect(page.locator(".flash.ok")).to_have_text("Template spring added.")

            page.goto(f"{url}/send")
            page.select_option("select[name=template]", "spring")
            page.check("input[name=selection][value=list]")
            page.select_option("select[name=list_name]", "news")
            expect(page.locator("input[name=where]")).to_be_hidden()  # send.js
            _shoot(page, tmp_path, "send")
            page.click("button[name=send]")
            expect(page.locator("h1")).to_contain_text("Mailout")
            mailout_id = int(page.url.rsplit("/", 1)[1])

            page.goto(f"{url}/")
            page.evaluate("window.__sameDocument = true")
            sent = page.locator("[data-counter='today.sent']")
            bar = page.locator(f"[data-mailout='{mailout_id}'] progress")
            expect(sent).to_have_text("5", timeout=45_000)
            expect(bar).to_have_attribute("value", "5")
            expect(bar).to_have_attribute("max", "5")
            assert page.evaluate("window.__sameDocument") is True  # no reload happened
            expect(page.locator(f"[data-mailout='{mailout_id}'] .badge").first).to_have_text(
                "done", timeout=10_000)
            page.goto(f"{url}/mailouts/{mailout_id}")
            expect(page.locator("[data-counter=sent]")).to_have_text("5")
            _shoot(page, tmp_path, "mailout")

            received = next(m for m in world.all_messages() if m.rcpt_tos == ["bob@south.test"])
            message = email.message_from_bytes(received.data, policy=email.policy.default)
            assert message["Subject"] == "Spring news for Bob"
            link = message["List-Unsubscribe"].strip("<> ")
            assert link.startswith(f"{url}/unsubscribe/")
            recipient = browser.new_page()
            recipient.goto(link)
            expect(recipient.locator("h1")).to_have_text("Unsubscribe?")
            assert "bob@south.test" in recipient.locator("main").inner_text()
            recipient.click("button[type=submit]")
            expect(recipient.locator("h1")).to_have_text("Unsubscribed")
            assert recipient.context.cookies() == []
        finally:
            browser.close()
    assert alerts == []  # no hostile contact name ran as script
    store = store_for(spool.config)
    try:
        assert store.contact("bob@south.test")["unsubscribed_at"] is not None
        assert store.mailout(mailout_id)["counters"]["unsubscribed"] == 1
    finally:
        store.close()
    for name in ("contacts", "template", "send", "mailout"):
        assert (tmp_path / f"webui-{name}.png").stat().st_size > 10_000
