"""Chaos, short: kill -9 the runner during a run and account for every message.

The full runs are ``python3 -m bench.chaos`` (docs/RELIABILITY.md); these are
the same machinery (bench/chaoslib.py) at a size the suite can afford: a
thousand messages on SQLite, a few hundred on MariaDB, a few kills each.
Nothing may be lost, and a message may reach a sink twice only if a kill
came while its final dot was in flight: at most one per sender child alive
at the kill (a child has one message in that window at a time; the result
journal, spoold/journal.py, covers everything after the child read the 250).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import pytest

from bench import chaoslib
from bench.chaoslib import Batch, ChaosSpool, Tally

from spoold import journal
from spoold.store import Attempt, open_store
from sender.protocol import Result, encode_result

CHILDREN = 4


def _kill_run(tmp_path, db_url: str, count: int, kills: int) -> Tally:
    world, faults = chaoslib.chaos_world(healthy=6, faults=False)
    tally = Tally("short")
    try:
        spool = ChaosSpool(tmp_path, db_url, world, runner={"max_children": CHILDREN})
        batch = Batch(f"t{random.randrange(10**6)}")
        batch.enqueue(spool, chaoslib.recipients(count, faults, 6, 0.0))
        spool.start()
        rng = random.Random(4)
        for mark in sorted(rng.randint(count // 10, count * 8 // 10) for _ in range(kills)):
            assert chaoslib.wait_delivered(world, mark, 60, [spool]), "the run stalled"
            time.sleep(rng.random() * 0.1)
            spool.kill()
            tally.kill()
            spool.start()
        chaoslib.settle([spool], batch, 120)
        assert spool.stop() == 0
        assert spool.crashes == 0
        store = spool.store()
        try:
            return chaoslib.account(tally, batch, store, world)
        finally:
            store.close()
    finally:
        world.stop()


def _check(tally: Tally, count: int) -> None:
    assert tally.enqueued == count
    assert tally.lost == 0, tally
    assert (tally.sent, tally.queued) == (count, 0), tally
    assert tally.unexplained == 0, tally.notes
    assert tally.duplicates <= tally.kills * CHILDREN, tally
    assert not tally.notes, tally.notes


def test_runner_killed_five_times_loses_nothing_sqlite(tmp_path):
    tally = _kill_run(tmp_path, f"sqlite://{tmp_path / 'spool.db'}", 1000, 5)
    _check(tally, 1000)


def test_runner_killed_three_times_loses_nothing_mariadb(tmp_path, mysql_url):
    tally = _kill_run(tmp_path, mysql_url, 400, 3)
    _check(tally, 400)


def test_restarted_runner_replays_what_its_last_life_heard(world, spool_factory):
    """Results journalled but not committed are applied on start, never sent again."""
    import spoold
    from spoold.runner import owner_name

    sink = world.add_domain("ok.test")[0]
    spool = spool_factory()
    ids = [spoold.enqueue(sender="s@spoold.test", recipients=[f"u{i}@ok.test"], subject="j",
                          body="x", config=spool.config).ids[0] for i in range(4)]
    owner = owner_name(spool.config.runner.run_dir)
    store = open_store(spool.config.database.url)
    rows = {row.id: row for row in store.claim(owner, 3, time.time() + 600)}
    committed = Attempt(rows[ids[2]], "sent", 250, "2.0.0", "250 ok", "mx")
    store.record([committed], owner)  # committed just before the kill: not applied again
    store.close()
    journal_dir = Path(spool.config.runner.run_dir)
    journal_dir.mkdir(parents=True, exist_ok=True)
    (journal_dir / journal.RUNNER).write_bytes(
        journal.encode(Attempt(rows[ids[0]], "sent", 250, "2.0.0", "250 from the runner", "mx"))
        + journal.encode(committed) + b'{"cut short by the ki')
    (journal_dir / journal.CHILDREN).write_bytes(encode_result(Result(
        ids[1], "bounced", 550, "5.1.1", "550 from a child", "mx", 0.1)))

    proc = spool.drain()

    assert proc.returncode == 0, proc.stderr.decode()
    events = [json.loads(line) for line in proc.stderr.decode().splitlines()]
    (replayed,) = [e for e in events if e["event"] == "results_replayed"]
    assert replayed["applied"] == 2
    assert any(e["event"] == "journal_line_skipped" for e in events)
    store = spool.store()
    try:
        log = {(d["notify_id"], d["status"], d["reply"]) for d in store.deliveries()}
    finally:
        store.close()
    assert log == {(ids[0], "sent", "250 from the runner"), (ids[1], "bounced", "550 from a child"),
                   (ids[2], "sent", "250 ok"), (ids[3], "sent", "250 2.0.0 Ok: queued as 1")}
    assert [m.rcpt_tos for m in sink.messages] == [["u3@ok.test"]], "only the unheard one is sent"
    assert (journal_dir / journal.RUNNER).read_bytes() == b""


@pytest.fixture(autouse=True)
def _quiet_sinks():
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's chatter


def test_replay_applies_only_what_the_owner_still_leases(store):
    ids, _ = store.enqueue("s@spoold.test", b"Subject: x\r\n\r\nx\r\n",
                           [(f"u{i}@x.test", "x.test") for i in range(3)], 1, time.time() + 600)
    rows = {row.id: row for row in store.claim("me", 3, time.time() + 600)}
    done, pending, stolen = (rows[i] for i in ids)
    store.record([Attempt(done, "sent", 250, "2.0.0", "250 ok", "mx")], "me")
    store.release("me", [stolen.id])
    store.claim("other", 1, time.time() + 600)  # another runner took it after the lease
    journalled = [Attempt(row, "sent", 250, "2.0.0", "250 journal", "mx")
                  for row in (done, pending, stolen)]

    assert store.replay(journalled, "me") == 1
    assert store.replay(journalled, "me") == 0, "replaying twice changes nothing"
    log = sorted((d["notify_id"], d["reply"]) for d in store.deliveries())
    assert log == [(done.id, "250 ok"), (pending.id, "250 journal")]
    assert [r["id"] for r in store.queue_rows()] == [stolen.id]
