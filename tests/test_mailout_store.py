"""Contacts, mailouts and campaigns in the store, on SQLite and MariaDB.

Expansion is driven by hand here (``mailout_step`` with chosen times and
chunk sizes), which is what the runner does in its loop.
"""

from __future__ import annotations

import time

import pytest

from spoold.errors import FilterError, NotFound, SpooldError
from spoold.store import Attempt, open_store
from spoold.store.contacts import ContactIn
from spoold.store.filters import compile_filter
from spoold.store.mailouts import MailoutSpec
from spoold.store.schema import MIGRATIONS

HOUR = 3600.0


def people(count: int, **extra) -> list[ContactIn]:
    return [ContactIn(f"p{i}@d{i % 3}.example", f"P {i}",
                      {"city": "Paris" if i % 2 else "Lyon", "age": str(i), **extra})
            for i in range(count)]


def spec(selection: str = "all", now: float | None = None, **kw) -> MailoutSpec:
    now = time.time() if now is None else now
    return MailoutSpec(template="t", sender="News <news@shop.example>", selection=selection,
                       send_at=kw.pop("send_at", now), expires_at=kw.pop("expires_at", now + HOUR),
                       **kw)


def run_out(store, now: float | None = None, chunk: int = 7) -> int:
    """Step until no expansion is left; returns rows queued."""
    queued = 0
    for _ in range(1000):
        step = store.mailout_step(time.time() if now is None else now, chunk, HOUR)
        queued += step.queued
        if not step.more:
            return queued
    raise AssertionError("expansion never ended")


def notify_rows(store, mailout_id: int) -> list[tuple]:
    with store.transaction() as cur:
        return store.execute(cur, "SELECT contact_id, recipient, sender, priority, state, "
                                  "not_before, message_id FROM notify WHERE mailout_id = ? "
                                  "ORDER BY contact_id", (mailout_id,)).fetchall()


@pytest.fixture
def filled(store):
    store.upsert_contacts(people(30), "news")
    store.save_template("t", "Hi {{ name }}", "Hello", None, create=True)
    return store


def test_reimport_updates_and_merges_never_duplicates(store):
    assert store.upsert_contacts(people(10), "a").inserted == 10
    again = store.upsert_contacts([ContactIn("P3@D0.example", None, {"plan": "pro"}),
                                   ContactIn("new@d1.example", "New", {})], "b")
    assert (again.inserted, again.updated) == (1, 1)
    assert store.contact_count() == 11
    p3 = store.contact("p3@d0.example")
    assert p3["name"] == "P 3"  # no name column: the name stays
    assert p3["attributes"] == {"city": "Paris", "age": "3", "plan": "pro"}
    assert p3["lists"] == ["a", "b"]
    assert store.attribute_names() == {"city", "age", "plan"}
    assert {row["name"]: row["members"] for row in store.lists()} == {"a": 10, "b": 2}


def test_expansion_by_selection_skips_unsubscribed_and_suppressed(filled):
    store = filled
    store.unsubscribe_contact("p1@d1.example")
    with store.transaction() as cur:
        store.execute(cur, "INSERT INTO suppression (address, reason, created_at) "
                           "VALUES ('p2@d2.example', 'bounce', 0)")
    store.upsert_contacts(people(4), "small")
    by_list = store.create_mailout(spec("list", list_name="small"))
    chosen = store.create_mailout(spec("contacts", contacts=["p5@d2.example", "P7@d1.example"]))
    everyone = store.create_mailout(spec("all"))
    filtered = store.create_mailout(spec("where", where="city = Paris and age >= 20"))
    assert run_out(store) == 2 + 2 + 28 + 5

    rows = notify_rows(store, by_list)
    assert [r[1] for r in rows] == ["p0@d0.example", "p3@d0.example"]
    assert {(r[2], r[3], r[4], r[6]) for r in rows} == {("news@shop.example", 2, "queued", 0)}
    assert [r[1] for r in notify_rows(store, chosen)] == ["p5@d2.example", "p7@d1.example"]
    assert [r[1] for r in notify_rows(store, filtered)] == \
        [f"p{i}@d{i % 3}.example" for i in (21, 23, 25, 27, 29)]
    counters = store.mailout_counters(everyone)
    assert (counters["total"], counters["queued"], counters["skipped_unsubscribed"],
            counters["skipped_suppressed"]) == (30, 28, 1, 1)
    assert {m["id"]: m["status"] for m in store.mailouts()} == dict.fromkeys(
        (by_list, chosen, everyone, filtered), "sending")


def test_rate_spreads_rows_over_time(filled):
    store = filled
    start = time.time()
    mailout_id = store.create_mailout(spec("all", rate=60, now=start))
    run_out(store, now=start, chunk=4)
    due = [r[5] for r in notify_rows(store, mailout_id)]
    assert len(due) == 30
    assert due == pytest.approx([start + 60 * k for k in range(30)], abs=0.01)


def test_expansion_is_idempotent_per_contact(filled):
    store = filled
    mailout_id = store.create_mailout(spec("all"))
    run_out(store, chunk=10)
    with store.transaction() as cur:  # as if the cursor had been lost
        store.execute(cur, "UPDATE mailout SET expand_cursor = 0, status = 'expanding' "
                           "WHERE id = ?", (mailout_id,))
    assert run_out(store, chunk=10) == 0
    assert len(notify_rows(store, mailout_id)) == 30
    assert store.mailout(mailout_id)["expanded"] == 30


def test_embargo_and_expiry(filled):
    store = filled
    now = time.time()
    later = store.create_mailout(spec("all", send_at=now + 60, expires_at=now + 120))
    assert run_out(store, now=now) == 0
    assert store.mailout(later)["status"] == "scheduled"
    assert run_out(store, now=now + 60) == 30
    step = store.mailout_step(now + 121, 10, HOUR)  # past expires_at: unsent rows go
    assert step.finished == [later]
    counters = store.mailout(later)["counters"]
    assert store.mailout(later)["status"] == "expired"
    assert (counters["queued"], counters["expired"]) == (0, 30)


def test_pause_resume_cancel_touch_only_their_mailout(filled):
    store = filled
    first = store.create_mailout(spec("all"))
    other = store.create_mailout(spec("list", list_name="news"))
    run_out(store)
    store.hold(domain="d0.example")  # an operator's hold, on both mailouts' rows
    assert store.pause_mailout(first) == 20
    assert store.mailout_counters(first)["held"] == 30
    assert store.mailout_counters(other)["queued"] == 20
    with pytest.raises(SpooldError, match="paused: cannot pause"):
        store.pause_mailout(first)
    assert store.resume_mailout(first) == 30
    assert store.mailout(first)["status"] == "sending"
    assert store.mailout_counters(other)["held"] == 10  # still held by the operator
    assert store.cancel_mailout(other) == 30
    counters = store.mailout_counters(other)
    assert (counters["cancelled"], counters["queued"], counters["held"]) == (30, 0, 0)
    assert store.mailout_step(time.time(), 10, HOUR).finished == [other]
    assert store.mailout(other)["status"] == "cancelled"
    with pytest.raises(SpooldError, match="cancelled: cannot resume"):
        store.resume_mailout(other)


def test_unsubscribe_is_recorded_once(filled):
    store = filled
    mailout_id = store.create_mailout(spec("all"))
    run_out(store)
    contact_id = store.contact("p4@d1.example")["id"]
    assert store.record_unsubscribe(contact_id, mailout_id)
    assert not store.record_unsubscribe(contact_id, mailout_id)
    assert not store.record_unsubscribe(0, mailout_id)  # a test send
    with pytest.raises(NotFound):
        store.record_unsubscribe(99999, mailout_id)
    assert store.mailout_counters(mailout_id)["unsubscribed"] == 1
    assert store.suppressed(["P4@d1.example"]) == {"P4@d1.example"}
    assert store.contact("p4@d1.example")["unsubscribed_at"] is not None


def test_deleting_a_contact_takes_its_queued_rows(filled):
    store = filled
    mailout_id = store.create_mailout(spec("all"))
    run_out(store)
    assert store.delete_contact("p9@d0.example") == 1
    counters = store.mailout_counters(mailout_id)
    assert (counters["queued"], counters["deleted"]) == (29, 1)
    with pytest.raises(NotFound):
        store.contact("p9@d0.example")


def test_campaign_scenarios_follow_the_timeline(filled):
    store = filled
    t0 = time.time()
    store.create_campaign("spring", "news", "news@shop.example", t0, t0 + 100)
    for outside in (t0 - 1, t0 + 101):
        with pytest.raises(SpooldError, match="outside campaign 'spring'"):
            store.add_scenario("spring", "t", outside)
    store.add_scenario("spring", "t", t0 + 10)
    store.add_scenario("spring", "t", t0 + 90)
    store.mailout_step(t0 + 5, 100, HOUR)
    assert store.mailouts() == []
    run_out(store, now=t0 + 10)
    [made] = store.mailouts()
    assert (made["send_at"], made["campaign_id"], made["expanded"]) == (t0 + 10, 1, 30)
    store.mailout_step(t0 + 150, 100, HOUR)  # the runner was away past the end
    scenarios = store.campaign("spring")["scenario_list"]
    assert [(s["status"], s["mailout_id"]) for s in scenarios] == \
        [("fired", made["id"]), ("missed", None)]
    assert len(store.mailouts()) == 1


def test_mailout_rows_render_data(filled):
    store = filled
    test = store.create_mailout(spec("all", test_to=["qa@d1.example"],
                                     test_contact="p6@d0.example"))
    run_out(store)
    [row] = store.claim("me", 10, time.time() + 60)
    assert (row.recipient, row.mailout_id, row.message_id) == ("qa@d1.example", test, 0)
    fields = store.mailout_recipients([row.id])[row.id]
    assert fields[:4] == (test, 0, "p6@d0.example", "P 6")
    assert store.mailout_mailings([test])[test] == {
        "sender": "News <news@shop.example>", "subject": "Hi {{ name }}", "text": "Hello",
        "html": None}


def _log_by_mailout(store) -> dict[tuple[int, str], int]:
    with store.transaction() as cur:
        return {(m, s): n for m, s, n in store.execute(
            cur, "SELECT mailout_id, status, COUNT(*) FROM delivery WHERE mailout_id IS NOT NULL "
                 "GROUP BY mailout_id, status").fetchall()}


def _rollup_by_mailout(store) -> dict[tuple[int, str], int]:
    with store.transaction() as cur:
        return {(m, s): int(n) for m, s, n in store.execute(
            cur, "SELECT mailout_id, status, n FROM delivery_by_mailout").fetchall()}


def test_mailout_rollup_follows_every_way_a_row_is_logged(filled):
    store = filled
    first = store.create_mailout(spec("list", list_name="news", priority=1))
    second = store.create_mailout(spec("all"))
    run_out(store)
    rows = store.claim("r1", 6, time.time() + 60)  # the first's rows: a higher priority
    outcomes = ["sent", "sent", "bounced", "deferred", "expired", "sent"]
    store.record([Attempt(row, status, 250, "2.0.0", "ok", "mx", not_before=time.time() + 60)
                  for row, status in zip(rows, outcomes)], "r1")
    queued = store.queue_rows(mailout=first, state="queued", limit=3)
    assert store.delete(ids=[queued[0]["id"]]) == 1  # the operator's delete
    assert store.cancel_mailout(second) > 0  # queued rows dropped, logged cancelled
    assert store.delete_contact(queued[1]["recipient"]) == 1  # its row dropped, logged deleted
    log = _log_by_mailout(store)
    assert _rollup_by_mailout(store) == log
    assert {s for _, s in log} >= {"sent", "bounced", "deferred", "expired", "cancelled",
                                   "deleted"}
    with store.transaction() as cur:  # the other rollups count the dropped rows too
        totals = dict(store.execute(cur, "SELECT status, COUNT(*) FROM delivery "
                                         "GROUP BY status").fetchall())
    assert store.delivery_totals() == totals
    assert sum(store.delivery_counts(time.time() - 60).values()) == sum(totals.values())
    counters = store.mailout_counters(first)
    assert counters["deleted"] == log[first, "deleted"] == 2
    progress = {m["id"]: m for m in store.mailouts()}
    assert progress[second]["done"] == progress[second]["total"] == 30
    done = sum(n for (m, s), n in log.items() if m == first and s != "deferred")
    assert (progress[first]["done"], progress[first]["total"]) == (done, 30)
    assert done == 7  # 3 sent, 1 bounced, 1 expired, 2 deleted; the deferred one is queued
    assert progress[first]["outcomes"] == {s: n for (m, s), n in log.items() if m == first}
    assert [m["id"] for m in store.active_mailouts(time.time() - 60)] == [first]
    store.mailout_step(time.time(), 10, HOUR)  # the cancelled one is settled: it ended now
    assert [m["id"] for m in store.active_mailouts(time.time() - 60)] == [second, first]
    assert [m["id"] for m in store.active_mailouts(time.time() + 60)] == [first]
    with store.transaction() as cur:
        store.execute(cur, "DELETE FROM delivery_by_mailout")
    store.rebuild_rollups()  # migration 8's fill
    assert _rollup_by_mailout(store) == log


def test_migration_8_counts_an_existing_log_by_mailout(db_url):
    store = open_store(db_url)
    with store.transaction() as cur:  # a database as schema version 7 left it
        store.execute(cur, "CREATE TABLE schema_version (version INTEGER NOT NULL)"
                      + store.types["table"])
        for migration in MIGRATIONS[:7]:
            for statement in migration:
                if isinstance(statement, dict):
                    statement = statement[store.dialect]
                store.execute(cur, statement.format(**store.types))
        store.execute(cur, "INSERT INTO schema_version (version) VALUES (7)")
        store.executemany(cur, "INSERT INTO delivery (notify_id, message_id, sender, recipient, "
                               "domain, status, delay, attempt, at, mailout_id) VALUES "
                               "(1, 0, 's@x.test', 'a@x.test', 'x.test', ?, 0, 1, 1, ?)",
                          [("sent", 7), ("sent", 7), ("bounced", 7), ("sent", 8),
                           ("sent", None)])
    assert store.upgrade() == (7, len(MIGRATIONS))
    assert _rollup_by_mailout(store) == {(7, "sent"): 2, (7, "bounced"): 1, (8, "sent"): 1}
    store.close()


def test_queue_listing_and_verbs_by_mailout(filled):
    store = filled
    first = store.create_mailout(spec("list", list_name="news"))
    second = store.create_mailout(spec("all"))
    run_out(store)
    mine = store.queue_rows(mailout=first, limit=100)
    assert len(mine) == 30 and {r["mailout_id"] for r in mine} == {first}
    page = store.queue_rows(mailout=first, limit=5, after=mine[4]["id"])
    assert [r["id"] for r in page] == [r["id"] for r in mine[5:10]]
    assert store.queue_count(mailout=second, cap=100) == 30
    assert store.hold(mailout=first, domain="d0.example") == \
        sum(r["recipient"].endswith("@d0.example") for r in mine)
    assert store.release_held(mailout=first) > 0
    assert store.requeue(mailout=second) == 30
    assert store.delete(mailout=second) == 30
    assert store.queue_count(mailout=second) == 0 and store.queue_count(mailout=first) == 30
    with pytest.raises(TypeError, match="unknown queue filter campaign"):
        store.hold(campaign=1)


def test_contacts_page_by_id_search_names_and_edits(store):
    store.upsert_contacts(people(12), "news")
    store.upsert_contacts([ContactIn("ann@x.example", "Ann Lee", {"city": "Oslo"})])
    everyone = store.contacts(limit=100)
    first = store.contacts(limit=5)
    second = store.contacts(limit=5, after=first[-1]["id"])
    assert [c["id"] for c in first + second] == [c["id"] for c in everyone[:10]]
    back = store.contacts(limit=5, before=second[0]["id"])
    assert back == first
    assert [c["email"] for c in store.contacts(search="LEE")] == ["ann@x.example"]
    assert len(store.contacts(search="p1", list_name="news")) == 3  # p1, p10, p11
    assert store.contact(contact_id=everyone[0]["id"])["email"] == everyone[0]["email"]
    with pytest.raises(NotFound, match="no contact with id 999"):
        store.contact(contact_id=999)
    store.update_contact("ANN@x.example", "Ann", {"plan": "pro"})
    ann = store.contact("ann@x.example")
    assert (ann["name"], ann["attributes"]) == ("Ann", {"plan": "pro"})
    assert "plan" in store.attribute_names()
    assert store.list_names() == ["news"]


def test_secret_is_made_once(store):
    assert store.secret("unsubscribe") == store.secret("unsubscribe")
    assert len(store.secret("unsubscribe")) >= 40


@pytest.mark.parametrize("text, where", [
    ("city", "expected one of = != < <= > >= at character 5"),
    ("city = ", "expected a value at character 8"),
    ("and = 3", "expected a field name"),
    ("city = Paris plan = x", "expected 'and', 'or' or the end at character 14, found 'plan'"),
    ("(city = Paris", "expected ')'"),
    ("city ! Paris", "unexpected '!' at character 6"),
])
def test_filter_errors_name_the_token(text, where):
    with pytest.raises(FilterError, match=where.replace("(", r"\(").replace(")", r"\)")):
        compile_filter(text)


def test_filter_values_are_bound_never_pasted():
    sql, params = compile_filter("name = \"x' OR 1=1 --\" or not (plan != 'free')")
    assert "OR 1=1" not in sql and "x' OR 1=1 --" in params
