"""The store on real SQLite and real MariaDB: claims, leases, batched outcomes."""

from __future__ import annotations

import threading
import time

import pytest

from spoold.errors import NotFound, StoreUnavailable
from spoold.store import Attempt, open_store
from spoold.store.schema import LATEST

BODY = b"From: a@example.org\r\nSubject: t\r\n\r\nbody\r\n"


def _enqueue(store, n, domain="example.test", priority=1, **kw):
    rcpts = [(f"user{i}@{domain}", domain) for i in range(n)]
    ids, skipped = store.enqueue("a@example.org", BODY, rcpts, priority, time.time() + 3600, **kw)
    assert not skipped
    return ids


def test_upgrade_is_idempotent_and_versioned(store):
    assert store.schema_version() == LATEST
    assert store.upgrade() == (LATEST, LATEST)


def test_claim_leases_due_rows_once(store):
    ids = _enqueue(store, 5)
    later = _enqueue(store, 2, not_before=time.time() + 600)
    first = store.claim("r1", 3, time.time() + 60)
    second = store.claim("r2", 10, time.time() + 60)
    assert [r.id for r in first] == ids[:3]
    assert [r.id for r in second] == ids[3:]
    assert not {r.id for r in first + second} & set(later)
    assert store.claim("r3", 10, time.time() + 60) == []
    assert store.state_counts()["active"] == 5


def test_higher_priority_is_claimed_first(store):
    bulk = _enqueue(store, 3, priority=2)
    high = _enqueue(store, 2, priority=0)
    claimed = [r.id for r in store.claim("r1", 4, time.time() + 60)]
    assert claimed[:2] == high and claimed[2:] == bulk[:2]


def test_concurrent_claims_never_share_a_row(store, db_url):
    _enqueue(store, 400)
    got: dict[str, list[int]] = {}

    def claimer(name):
        own = open_store(db_url)
        ids = []
        while batch := own.claim(name, 7, time.time() + 60):
            ids.extend(r.id for r in batch)
        got[name] = ids
        own.close()

    threads = [threading.Thread(target=claimer, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in got.values() for i in ids]
    assert len(every) == 400 and len(set(every)) == 400


def test_record_logs_and_applies_outcomes_in_one_batch(store):
    _enqueue(store, 4)
    sent, deferred, bounced, expired = store.claim("r1", 4, time.time() + 60)
    retry_at = time.time() + 300
    store.record([
        Attempt(sent, "sent", 250, "2.0.0", "250 ok", "mx[127.0.1.1]:25"),
        Attempt(deferred, "deferred", 450, "4.2.0", "450 later", "mx", not_before=retry_at),
        Attempt(bounced, "bounced", 550, "5.1.1", "550 no such user", "mx", suppress=True),
        Attempt(expired, "expired", 450, "4.2.0", "450 later", "mx"),
    ], "r1")
    rows = store.queue_rows()
    assert [(r["id"], r["state"], r["attempts"]) for r in rows] == [(deferred.id, "queued", 1)]
    assert rows[0]["not_before"] == pytest.approx(retry_at)
    log = {d["notify_id"]: d["status"] for d in store.deliveries()}
    assert log == {sent.id: "sent", deferred.id: "deferred", bounced.id: "bounced",
                   expired.id: "expired"}
    assert store.suppressed([bounced.recipient, sent.recipient]) == {bounced.recipient}


def test_message_body_kept_until_its_last_row_is_final(store):
    _enqueue(store, 2)
    a, b = store.claim("r1", 2, time.time() + 60)
    store.record([Attempt(a, "sent", 250, "2.0.0", "ok", "mx")], "r1")
    assert store.bodies([b.message_id]) == {b.message_id: BODY}
    store.record([Attempt(b, "sent", 250, "2.0.0", "ok", "mx")], "r1")
    assert store.bodies([b.message_id]) == {}


def test_record_ignores_rows_leased_to_another_runner(store):
    _enqueue(store, 1)
    (row,) = store.claim("r1", 1, time.time() - 1)
    assert store.recover_expired() == 1
    (again,) = store.claim("r2", 1, time.time() + 60)
    store.record([Attempt(row, "sent", 250, "2.0.0", "late", "mx")], "r1")
    assert store.state_counts()["active"] == 1, "r2's claim must survive r1's late result"
    assert again.id == row.id


def test_release_owner_returns_a_dead_instance_rows(store):
    _enqueue(store, 3)
    store.claim("host:/run/a", 3, time.time() + 600)
    assert store.release_owner("host:/run/b") == 0
    assert store.release_owner("host:/run/a") == 3
    assert store.state_counts()["queued"] == 3


def test_operator_verbs(store):
    ids = _enqueue(store, 3, domain="a.test") + _enqueue(store, 2, domain="b.test")
    assert store.hold(domain="a.test") == 3
    assert store.claim("r", 10, time.time() + 60) and store.state_counts()["held"] == 3
    assert store.release_held(ids=ids[:1]) == 1
    assert store.requeue(domain="a.test") == 3
    assert store.delete(ids=ids[:2]) == 2
    assert {d["status"] for d in store.deliveries()} == {"deleted"}
    with pytest.raises(NotFound, match="999999"):
        store.hold(ids=[999999])


def test_next_due_and_flush(store):
    assert store.next_due() is None
    later = time.time() + 600
    _enqueue(store, 1, not_before=later)
    assert store.next_due() == pytest.approx(later)
    assert store.flush() == 1
    assert store.next_due() <= time.time()


def test_enqueue_skips_suppressed_recipients_in_the_same_transaction(store):
    _enqueue(store, 1, domain="gone.test")
    (row,) = store.claim("r1", 1, time.time() + 60)
    store.record([Attempt(row, "bounced", 550, "5.1.1", "no such user", "mx", suppress=True)],
                 "r1")
    rcpts = [("user0@gone.test", "gone.test"), ("USER1@gone.test", "gone.test")]
    ids, skipped = store.enqueue("a@example.org", BODY, rcpts, 1, time.time() + 60)
    assert skipped == {"user0@gone.test"} and len(ids) == 1
    ids, skipped = store.enqueue("a@example.org", BODY, rcpts[:1], 1, time.time() + 60)
    assert ids == [] and store.state_counts()["queued"] == 1


def test_sqlite_writer_waits_for_another_then_says_so_and_readers_never_wait(tmp_path):
    url = f"sqlite://{tmp_path / 'spool.db'}"
    first, second = open_store(url, busy_timeout=0.3), open_store(url, busy_timeout=0.3)
    first.upgrade()
    try:
        with first.transaction():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="database is locked"):
                with second.transaction():
                    pass
            assert time.monotonic() - started > 0.25  # it waited about busy_timeout
            assert second.state_counts()["queued"] == 0  # a reader gets in at once
        with second.transaction():  # the lock went with the first writer's commit
            pass
    finally:
        first.close()
        second.close()
