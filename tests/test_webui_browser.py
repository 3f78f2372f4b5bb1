"""End to end in headless Chromium: the real spoold-webui server, a real runner,
real SMTP sinks on loopback, a person clicking through the pages.

Uses Debian's chromium (/usr/bin/chromium) driven by Playwright for Python;
never a browser download.  Skips, saying why, where either is missing;
fails instead when SPOOLD_REQUIRE_BROWSER=1 (as .ci/run sets).  Screenshots
of each page are kept in the test's tmp dir; with SPOOLD_SCREENSHOTS=DIR
they are also written to DIR (docs/ holds the ones the README shows).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


@pytest.fixture
def webui_url(spool):
    """The spoold-webui program (python -m webui) on a free loopback port."""
    log_path = spool.config_path.with_suffix(".webui.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "webui", "--port", "0"], env=spool.env,
                                stdout=log, stderr=log)
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
