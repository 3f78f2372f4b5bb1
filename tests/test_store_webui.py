"""What the web UI reads and writes, on real SQLite and real MariaDB: the log's
rollups, keyset listings, filtered operator verbs, users, tokens, kept values."""

from __future__ import annotations

import time

import pytest

from spoold.errors import Exists, NotFound
from spoold.store import Attempt, open_store
from spoold.store.schema import MIGRATIONS

BODY = b"From: a@example.org\r\nSubject: t\r\n\r\nbody\r\n"


def _enqueue(store, n, domain="example.test", **kw):
    rcpts = [(f"user{i}@{domain}", domain) for i in range(n)]
    ids, _ = store.enqueue("a@example.org", BODY, rcpts, 1, time.time() + 3600, **kw)
    return ids


def _deliver(store, outcomes, now=None):
    """Claim one due row per outcome and record them as (status, reply) say."""
    rows = store.claim("r1", len(outcomes), time.time() + 60)
    assert len(rows) == len(outcomes)
    store.record([Attempt(row, status, 250 if status == "sent" else 550, "5.0.0", reply, "mx",
                          not_before=time.time() + 600)
                  for row, (status, reply) in zip(rows, outcomes)], "r1", now=now)
    return rows


def _log_counts(store, since=0.0):
    with store.transaction() as cur:
        rows = store.execute(cur, "SELECT status, COUNT(*) FROM delivery WHERE at >= ? "
                                  "GROUP BY status", (since,)).fetchall()
    return dict(rows)


def test_rollups_count_every_logged_attempt(store):
    _enqueue(store, 6, "one.test")
    _enqueue(store, 2, "two.test")
    _deliver(store, [("sent", "250 ok")] * 3 + [("deferred", "450 later"), ("bounced", "550 no")])
    hour_ago = time.time() - 3600
    _deliver(store, [("sent", "250 ok"), ("expired", "gave up")], now=hour_ago - 120)
    assert store.delete(domain="two.test") == 1
    log = _log_counts(store)
    assert store.delivery_totals() == log == {"sent": 4, "deferred": 1, "bounced": 1,
                                              "expired": 1, "deleted": 1}
    assert store.delivery_counts(hour_ago) == _log_counts(store, hour_ago)
    assert store.delivery_counts(0) == log
    hours = {}
    for _, status, n in store.delivery_series(0, 3600):
        hours[status] = hours.get(status, 0) + n
    assert hours == log


def test_migration_fills_the_rollups_from_an_existing_log(db_url):
    store = open_store(db_url)
    with store.transaction() as cur:  # a database as schema version 1 left it
        store.execute(cur, "CREATE TABLE schema_version (version INTEGER NOT NULL)"
                      + store.types["table"])
        for statement in MIGRATIONS[0]:
            store.execute(cur, statement.format(**store.types))
        store.execute(cur, "INSERT INTO schema_version (version) VALUES (1)")
        store.executemany(cur, "INSERT INTO delivery (notify_id, message_id, sender, recipient, "
                               "domain, status, delay, attempt, at) VALUES "
                               "(1, 1, 's@x.test', ?, ?, ?, 0, 1, ?)",
                          [("a@one.test", "one.test", "sent", 86400 * 3 + 59.9),
                           ("b@one.test", "one.test", "sent", 86400 * 3 + 60.0),
                           ("c@two.test", "two.test", "bounced", 86400 * 4 + 5)])
    assert store.upgrade()[0] == 1
    assert store.delivery_totals() == {"sent": 2, "bounced": 1}
    assert store.delivery_series(0, 60) == [(86400 * 3, "sent", 1), (86400 * 3 + 60, "sent", 1),
                                            (86400 * 4, "bounced", 1)]
    assert [(d["domain"], d["sent"], d["bounced"]) for d in store.top_domains(0)] == \
        [("one.test", 2, 0), ("two.test", 0, 1)]
    store.close()


def test_top_domains_rank_by_attempts_with_their_last_error(store):
    _enqueue(store, 4, "busy.test")
    _enqueue(store, 1, "quiet.test")
    _deliver(store, [("sent", "250 ok"), ("deferred", "451 first"), ("bounced", "550 last"),
                     ("sent", "250 ok"), ("sent", "250 ok")])
    top = store.top_domains(time.time() - 86400)
    assert [d["domain"] for d in top] == ["busy.test", "quiet.test"]
    busy, quiet = top
    assert (busy["attempts"], busy["sent"], busy["deferred"], busy["bounced"]) == (4, 2, 1, 1)
    assert busy["last_error"]["reply"] == "550 last" and quiet["last_error"] is None


def test_queue_rows_page_by_id_both_ways_under_a_filter(store):
    ids = _enqueue(store, 12, "a.test")
    _enqueue(store, 3, "b.test")
    store.hold(ids[::2])
    held = ids[::2]
    first = store.queue_rows(state="held", limit=4)
    assert [r["id"] for r in first] == held[:4]
    second = store.queue_rows(state="held", limit=4, after=first[-1]["id"])
    assert [r["id"] for r in second] == held[4:]
    back = store.queue_rows(state="held", limit=4, before=second[0]["id"])
    assert [r["id"] for r in back] == held[:4]
    assert [r["id"] for r in store.queue_rows(domain="a.test", limit=3, before=ids[5])] == ids[2:5]
    assert store.queue_count(domain="a.test", cap=5) == 5
    assert store.queue_count(recipient="user3@a.test") == 1
    row = store.queue_row(ids[3])
    assert (row["recipient"], row["state"], row["domain"]) == ("user3@a.test", "queued", "a.test")
    assert store.queue_row(10**9) is None


def test_deliveries_newest_first_pages_and_searches(store):
    _enqueue(store, 5)
    rows = _deliver(store, [("deferred", f"45{i} later") for i in range(5)])
    newest = store.deliveries(limit=2)
    assert [d["reply"] for d in newest] == ["454 later", "453 later"]
    older = store.deliveries(limit=2, before=newest[-1]["id"])
    assert [d["reply"] for d in older] == ["452 later", "451 later"]
    assert [d["reply"] for d in store.deliveries(limit=2, after=older[0]["id"])] == \
        ["454 later", "453 later"]
    assert [d["reply"] for d in store.deliveries(queue_id=rows[0].id)] == ["450 later"]
    assert [d["notify_id"] for d in store.deliveries(recipient="user1@example.test")] == \
        [rows[1].id]


def test_operator_verbs_take_a_filter(store):
    a = _enqueue(store, 3, "a.test")
    b = _enqueue(store, 2, "b.test")
    assert store.hold(recipient="user1@a.test") == 1
    assert store.hold(state="held") == 0  # only queued rows can be held
    assert store.hold(domain="b.test", state="queued") == 2
    assert {r["id"] for r in store.queue_rows(state="held")} == {a[1], *b}
    assert store.release_held(domain="b.test") == 2
    assert store.requeue(state="held") == 1
    assert store.delete(state="queued", domain="a.test") == 3
    assert [r["id"] for r in store.queue_rows()] == b
    with pytest.raises(NotFound):
        store.hold([a[0]])


def test_users_tokens_and_shared_secrets(store, db_url):
    uid = store.add_user("ann", "admin", "hash-1")
    with pytest.raises(Exists):
        store.add_user("ann", "viewer", "hash-2")
    store.add_token("ann", "d" * 64)
    assert store.token_user("d" * 64)["id"] == uid
    assert store.token_user("e" * 64) is None
    store.set_password("ann", "hash-3")
    assert store.user(name="ann")["password_hash"] == "hash-3"
    store.note_login(uid)
    (listed,) = store.users()
    assert (listed["name"], listed["role"], listed["tokens"]) == ("ann", "admin", 1)
    assert listed["last_login_at"] is not None and "password_hash" not in listed
    assert store.revoke_tokens("ann") == 1 and store.token_user("d" * 64) is None
    store.delete_user("ann")
    assert store.user(user_id=uid) is None
    with pytest.raises(NotFound):
        store.delete_user("ann")
    other = open_store(db_url)
    made = store.secret("webui_session")
    assert len(made) >= 32 and other.secret("webui_session") == made  # one key for every UI
    other.close()


def test_runner_rows_hold_every_column(store):
    store.heartbeat("host:1", "host", 1, time.time() - 60, 3, 8)
    (row,) = store.runner_rows()
    assert {"owner", "host", "pid", "started_at", "heartbeat_at", "children",
            "max_children"} <= set(row)
    assert (row["children"], row["max_children"]) == (3, 8)
