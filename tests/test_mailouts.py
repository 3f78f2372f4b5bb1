"""Mailouts end to end: the real daemon expands, renders and delivers to real sinks.

Contacts go in through the store (or the CLI where the CLI is what is
tested), mailouts are made with ``spoold mailout create``, and what counts
is what the aiosmtpd sinks received and the counters the store reports.
"""

from __future__ import annotations

import email
import email.policy
import signal
import time

import pytest
from conftest import wait_for

from spoold.store.contacts import ContactIn
from spoold.unsubscribe import check_token, unsubscribe

SECRET = "test-secret"
DOMAINS = ["north.example", "south.example", "east.example", "west.example", "mid.example"]
TEXT = ("Hello {{ name }},\n"
        "news for {{ attributes.city }} ({{ email }}).\n"
        "Unsubscribe: {{ unsubscribe_url }}\n")
HTML = "<p>Hello <b>{{ name }}</b> of {{ attributes.city }}</p>"


@pytest.fixture
def shop(spool_factory, world):
    """A spool with the five domains, a fast mailout tick and a known secret."""
    for domain in DOMAINS:
        world.add_domain(domain)
    return spool_factory(mailout={"interval": 0.1, "secret": SECRET,
                                  "sender": "Shop News <news@shop.example>",
                                  "unsubscribe_mailto": "unsubscribe@shop.example",
                                  "unsubscribe_url": "https://shop.example/u/{token}"})


def add_contacts(spool, count: int, list_name: str = "news", **extra: dict) -> None:
    store = spool.store()
    try:
        store.upsert_contacts([ContactIn(f"reader{i}@{DOMAINS[i % len(DOMAINS)]}",
                                         f"Reader {i}", {"city": f"City{i}", **extra})
                               for i in range(count)], list_name)
    finally:
        store.close()


def add_template(spool, name: str = "news", subject: str = "News for {{ name }}",
                 html: bool = True) -> None:
    text = spool.config_path.parent / f"{name}.txt"
    text.write_text(TEXT)
    args = ["templates", "add", name, "--subject", subject, "--text", str(text)]
    if html:
        page = spool.config_path.parent / f"{name}.html"
        page.write_text(HTML)
        args += ["--html", str(page)]
    spool.cli(*args)


def create(spool, *args: str) -> int:
    out = spool.cli("mailout", "create", *args).stdout.decode()
    return int(out.split()[1].rstrip(":"))


def mailout(spool, mailout_id: int) -> dict:
    store = spool.store()
    try:
        return store.mailout(mailout_id)
    finally:
        store.close()


def wait_status(spool, mailout_id: int, *statuses: str, timeout: float = 60) -> dict:
    found = {}

    def reached() -> bool:
        found.update(mailout(spool, mailout_id))
        return found["status"] in statuses

    wait_for(reached, timeout=timeout, what=f"mailout {mailout_id} {'/'.join(statuses)}",
             every=0.1)
    return found


def suppress(store, addresses: list[str]) -> None:
    """Addresses that bounced before (what the bounce listener records)."""
    with store.transaction() as cur:
        for address in addresses:
            store.execute(cur, "INSERT INTO suppression (address, reason, created_at) "
                               "VALUES (?, 'bounce', 0)", (address,))


def iso(epoch: float) -> str:
    """A local ISO 8601 time, as a user would type it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch)) + f"{epoch % 1:.3f}"[1:]


def parsed(received) -> email.message.EmailMessage:
    return email.message_from_bytes(received.data, policy=email.policy.default)


def test_mailout_arrives_personalised_at_every_domain(shop, world):
    add_contacts(shop, 500)
    store = shop.store()
    for i in range(5):
        store.unsubscribe_contact(f"reader{i}@{DOMAINS[i % 5]}")
    suppress(store, [f"reader{i}@{DOMAINS[i % 5]}" for i in (5, 6, 7)])
    store.close()
    add_template(shop)
    mailout_id = create(shop, "--template", "news", "--list", "news")
    shop.start()
    done = wait_status(shop, mailout_id, "done")

    counters = done["counters"]
    assert counters["total"] == 500
    assert counters["sent"] == 492
    assert counters["skipped_unsubscribed"] == 5
    assert counters["skipped_suppressed"] == 3
    assert counters["queued"] == counters["sending"] == counters["bounced"] == 0

    messages = world.all_messages()
    assert len(messages) == 492
    by_recipient = {m.rcpt_tos[0]: m for m in messages}
    assert len(by_recipient) == 492  # nobody twice
    for i in range(8):
        assert f"reader{i}@{DOMAINS[i % 5]}" not in by_recipient
    for i in (8, 123, 499):
        address = f"reader{i}@{DOMAINS[i % 5]}"
        msg = parsed(by_recipient[address])
        assert by_recipient[address].mail_from == "news@shop.example"
        assert msg["From"] == "Shop News <news@shop.example>"
        assert msg["To"] == f"Reader {i} <{address}>"
        assert msg["Subject"] == f"News for Reader {i}"
        assert msg["Date"] and msg["Message-ID"]
        assert msg.get_content_type() == "multipart/alternative"
        text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
        html = msg.get_body(("html",)).get_content()
        assert f"Hello Reader {i},\nnews for City{i} ({address})." in text
        assert f"<p>Hello <b>Reader {i}</b> of City{i}</p>" in html
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        mailto, https = [link.strip(" <>") for link in msg["List-Unsubscribe"].split(",")]
        assert mailto.startswith("mailto:unsubscribe@shop.example?subject=unsubscribe%20")
        assert https.startswith("https://shop.example/u/")
        token = https.rsplit("/", 1)[1]
        assert f"Unsubscribe: {https}" in text
        store = shop.store()
        contact_id = store.contact(address)["id"]
        store.close()
        assert check_token(SECRET, token) == (contact_id, mailout_id)


def test_unsubscribe_link_is_honoured_and_forgeries_refused(shop, world):
    from spoold.errors import BadToken

    add_contacts(shop, 3)
    add_template(shop, html=False)
    mailout_id = create(shop, "--template", "news", "--list", "news")
    shop.start()
    wait_status(shop, mailout_id, "done")
    first = parsed(next(m for m in world.all_messages()
                        if m.rcpt_tos == [f"reader0@{DOMAINS[0]}"]))
    assert first.get_content_type() == "text/plain"
    token = first["List-Unsubscribe"].split(",")[1].strip(" <>").rsplit("/", 1)[1]

    store = shop.store()
    try:
        contact_id, _ = check_token(SECRET, token)
        forged = [f"{contact_id + 1}.{mailout_id}.{token.rsplit('.', 1)[1]}",
                  token[:-1] + ("A" if token[-1] != "A" else "B"), "1.1.short", ""]
        for bad in forged:
            with pytest.raises(BadToken):
                unsubscribe(shop.config, store, bad)
        with pytest.raises(BadToken):
            check_token("another-secret", token)
        assert unsubscribe(shop.config, store, token).changed
        assert not unsubscribe(shop.config, store, token).changed  # once only
        contact = store.contact(f"reader0@{DOMAINS[0]}")
        assert contact["unsubscribed_at"] is not None
        assert [(s["address"], s["reason"]) for s in store.suppressions()] == \
            [(f"reader0@{DOMAINS[0]}", "unsubscribe")]
        assert store.mailout_counters(mailout_id)["unsubscribed"] == 1
    finally:
        store.close()

    # The next mailout to the same list leaves the unsubscribed contact out.
    world.pool.sinks[0].reset()
    second = create(shop, "--template", "news", "--list", "news")
    counters = wait_status(shop, second, "done")["counters"]
    assert (counters["sent"], counters["skipped_unsubscribed"]) == (2, 1)


def test_hostile_contact_values_cannot_inject_headers(shop, world):
    store = shop.store()
    store.upsert_contacts([ContactIn(f"eve@{DOMAINS[0]}",
                                     "Eve\r\nBcc: victim@south.example\r\nX-Injected: name",
                                     {"city": "Paris\nX-Injected: city\r\n\r\nbody?"})], "news")
    store.close()
    add_template(shop, subject="{{ name }} in {{ attributes.city }}\r\nX-Injected: subject")
    mailout_id = create(shop, "--template", "news", "--list", "news")
    shop.start()
    counters = wait_status(shop, mailout_id, "done")["counters"]
    assert counters["sent"] == 1
    [received] = world.all_messages()
    assert received.rcpt_tos == [f"eve@{DOMAINS[0]}"]
    header_block = received.data.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0].lower() for line in header_block.split(b"\r\n")
             if line and line[:1] not in (b" ", b"\t")]
    assert b"bcc" not in names and b"x-injected" not in names
    assert names.count(b"to") == 1 and names.count(b"subject") == 1
    msg = parsed(received)
    assert msg["Subject"] == ("Eve Bcc: victim@south.example X-Injected: name in "
                              "Paris X-Injected: city body? X-Injected: subject")
    assert msg["To"].addresses[0].addr_spec == f"eve@{DOMAINS[0]}"


def test_embargo_holds_until_send_at(shop, world):
    add_contacts(shop, 10)
    add_template(shop, html=False)
    shop.start()
    send_at = time.time() + 4
    mailout_id = create(shop, "--template", "news", "--list", "news", "--send-at", iso(send_at))
    time.sleep(max(0.0, send_at - 1 - time.time()))  # the runner has ticked many times by now
    early = mailout(shop, mailout_id)
    assert early["status"] == "scheduled" and early["counters"]["total"] == 0
    assert world.all_messages() == []
    wait_status(shop, mailout_id, "done")
    arrivals = [m.at for m in world.all_messages()]
    assert len(arrivals) == 10 and min(arrivals) >= send_at


def test_pause_holds_resume_releases_cancel_removes(shop, world):
    add_contacts(shop, 40)
    add_template(shop, html=False)
    shop.start()
    # 3600/h: one row a second, so most of them wait in the queue.
    paced = create(shop, "--template", "news", "--list", "news", "--rate", "3600/h")
    wait_for(lambda: len(world.all_messages()) >= 2, what="the first paced messages")
    shop.cli("mailout", "pause", str(paced))
    held = mailout(shop, paced)["counters"]
    assert held["held"] >= 30 and held["queued"] == 0
    before = len(world.all_messages())
    time.sleep(1.5)
    assert len(world.all_messages()) <= before + held["sending"]  # only those in hand finish
    assert mailout(shop, paced)["status"] == "paused"

    out = shop.cli("mailout", "resume", str(paced)).stdout.decode()
    assert f"{held['held']} queued rows released" in out
    wait_for(lambda: len(world.all_messages()) >= before + held["sending"] + 2,
             what="delivery after resume")
    out = shop.cli("mailout", "cancel", str(paced)).stdout.decode()
    removed = int(out.split(", ")[1].split()[0])
    assert removed > 10
    done = wait_status(shop, paced, "cancelled")
    counters = done["counters"]
    assert counters["cancelled"] == removed
    assert counters["sent"] + counters["cancelled"] == 40
    assert counters["queued"] == counters["held"] == 0
    time.sleep(1)
    assert len(world.all_messages()) == counters["sent"]
    store = shop.store()
    try:
        log = [d for d in store.deliveries(limit=100) if d["status"] == "cancelled"]
    finally:
        store.close()
    assert len(log) == removed and all(d["reply"] == "mailout cancelled" for d in log)


def test_test_mode_sends_only_to_test_addresses(shop, world):
    add_contacts(shop, 20)
    add_template(shop, html=False)
    mailout_id = create(shop, "--template", "news", "--list", "news", "--test-to",
                        f"qa@{DOMAINS[1]}", f"boss@{DOMAINS[2]}", "--test-contact",
                        f"reader7@{DOMAINS[2]}")
    shop.start()
    counters = wait_status(shop, mailout_id, "done")["counters"]
    assert counters["sent"] == counters["total"] == 2
    received = {m.rcpt_tos[0]: parsed(m) for m in world.all_messages()}
    assert set(received) == {f"qa@{DOMAINS[1]}", f"boss@{DOMAINS[2]}"}
    for address, msg in received.items():
        assert msg["To"] == f"Reader 7 <{address}>"
        assert msg["Subject"] == "News for Reader 7"
        assert "news for City7" in msg.get_content()
        token = msg["List-Unsubscribe"].split("/")[-1].rstrip(">")
        assert check_token(SECRET, token) == (0, mailout_id)  # unsubscribes nobody


def test_bulk_mailout_waits_behind_transactional_mail(shop, world):
    add_contacts(shop, 300)
    add_template(shop, html=False)
    create(shop, "--template", "news", "--list", "news")
    store = shop.store()
    try:
        step = store.mailout_step(time.time(), 1000, 3600)
        assert step.queued == 300
        store.enqueue("app@shop.example", b"Subject: receipt\r\n\r\npaid\r\n",
                      [(f"buyer@{DOMAINS[0]}", DOMAINS[0])], 1, time.time() + 3600)
        [first] = store.claim("test", 1, time.time() + 60)
    finally:
        store.close()
    assert first.recipient == f"buyer@{DOMAINS[0]}" and first.mailout_id is None


def test_expansion_killed_midway_resumes_without_duplicates(spool_factory, world):
    for domain in DOMAINS:
        world.add_domain(domain)
    spool = spool_factory(mailout={"expand_chunk": 40, "interval": 0.1, "secret": SECRET})
    add_contacts(spool, 20000)
    add_template(spool, html=False)
    # 1/h: the first row is due at once, the others over the next 20000 hours.
    mailout_id = create(spool, "--template", "news", "--all", "--rate", "1/h")
    store = spool.store()
    proc = spool.start()
    wait_for(lambda: store.mailout_counters(mailout_id)["total"] > 0,
             what="expansion under way", every=0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut = store.mailout(mailout_id)
    assert cut["status"] == "expanding" and 0 < cut["expanded"] < 20000
    assert cut["expanded"] == cut["expand_cursor"]  # rows and cursor committed together

    # The cursor commits with its chunk, so what was sent is never reached
    # again; rows still queued are also guarded by the unique (mailout,
    # contact) key: even a cursor set back (past contact 1, the one row due
    # and maybe sent) queues nobody twice.
    with store.transaction() as cur:
        store.execute(cur, "UPDATE mailout SET expand_cursor = 1 WHERE id = ?", (mailout_id,))
    spool.start()
    done = wait_status(spool, mailout_id, "sending", timeout=60)
    assert done["expanded"] == done["counters"]["total"] == 20000
    with store.transaction() as cur:
        rows, contacts = store.execute(cur, "SELECT COUNT(*), COUNT(DISTINCT contact_id) "
                                            "FROM notify WHERE mailout_id = ?",
                                       (mailout_id,)).fetchone()
    sent = store.mailout_counters(mailout_id)["sent"]
    store.close()
    assert contacts == rows and rows + sent == 20000


def test_campaign_scenario_fires_at_its_time(shop, world):
    add_contacts(shop, 5)
    add_template(shop, html=False)
    shop.cli("campaign", "create", "spring", "--list", "news", "--start", "now", "--end", "+30s")
    refused = shop.cli("campaign", "add-scenario", "spring", "--template", "news", "--at", "+1h",
                       check=False)
    assert refused.returncode != 0 and b"outside campaign 'spring'" in refused.stderr
    at = time.time() + 2
    shop.cli("campaign", "add-scenario", "spring", "--template", "news", "--at", iso(at))
    shop.start()
    time.sleep(1)
    assert "scheduled" in shop.cli("campaign", "show", "spring").stdout.decode()
    assert world.all_messages() == []
    wait_for(lambda: len(world.all_messages()) == 5, what="the scenario's mailout")
    assert min(m.at for m in world.all_messages()) >= at
    shown = shop.cli("campaign", "show", "spring").stdout.decode().splitlines()[-1].split()
    assert shown[-2:] == ["fired", "1"]  # status, and the mailout it became
    assert mailout(shop, 1)["campaign_id"] == 1


def test_preview_is_what_the_contact_receives(shop, world):
    add_contacts(shop, 2)
    add_template(shop)
    mailout_id = create(shop, "--template", "news", "--list", "news")
    shop.start()
    wait_status(shop, mailout_id, "done")
    address = f"reader1@{DOMAINS[1]}"
    received = parsed(next(m for m in world.all_messages() if m.rcpt_tos == [address]))
    preview = email.message_from_bytes(
        shop.cli("templates", "preview", "news", "--contact", address).stdout,
        policy=email.policy.default)
    assert preview.keys() == received.keys()
    for name in ("From", "To", "Subject", "List-Unsubscribe-Post"):
        assert preview[name] == received[name]
    assert preview.get_content_type() == received.get_content_type()
    token = received["List-Unsubscribe"].split("/")[-1].rstrip(">")
    preview_token = preview["List-Unsubscribe"].split("/")[-1].rstrip(">")
    assert check_token(SECRET, preview_token)[0] == check_token(SECRET, token)[0]
    for kind in ("plain", "html"):
        assert (preview.get_body((kind,)).get_content().replace(preview_token, "T")
                == received.get_body((kind,)).get_content().replace(token, "T"))
