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
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from bench import chaoslib
from bench.chaoslib import Batch, ChaosSpool, Tally

from spoold import journal
from spoold.store import Attempt, open_store
from sender.protocol import (Job, Message, Recipient, Result, SenderConfig, Target,
                             encode_config, encode_job, encode_result)

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


class _HeldDot:
    """An SMTP server on loopback that holds its reply to the first final dot
    until ``release`` is set, then notes every command it gets after it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dot = threading.Event()
        self.release = threading.Event()
        self.after: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        lines = conn.makefile("rb")
        conn.sendall(b"220 held ESMTP\r\n")
        in_data = False
        for line in lines:
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    if not self.dot.is_set():
                        self.dot.set()
                        self.release.wait(30)
                    conn.sendall(b"250 2.0.0 queued\r\n")
                continue
            if self.dot.is_set():
                self.after.append(line.split()[0].upper())
            if line.upper().startswith(b"DATA"):
                in_data = True
                conn.sendall(b"354 go ahead\r\n")
            else:
                conn.sendall(b"250 ok\r\n")
        conn.close()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_child_whose_runner_dies_at_the_final_dot_journals_the_reply_and_stops(tmp_path):
    """The runner dies (SIGKILL) while a child waits for the reply to a final dot:
    the child reads it, journals the result and exits without starting the
    next message; a new runner's journal waits for that child (flock)."""
    server = _HeldDot()
    path = tmp_path / journal.CHILDREN
    job_r, job_w = os.pipe()
    answer_r, answer_w = os.pipe()
    # A stand-in for the runner: it holds the journal's lock (spoold/journal.py),
    # starts the child on our pipes with the journal as fd 3, then waits to be killed.
    runner = subprocess.Popen([sys.executable, "-c", f"""if True:
        import fcntl, os, subprocess, sys, time
        fd = os.open({str(path)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.dup2(fd, 3)
        subprocess.Popen([sys.executable, "-m", "sender"], stdin={job_r}, stdout={answer_w},
                         pass_fds=(3,))
        print(flush=True)
        time.sleep(60)
        """], stdout=subprocess.PIPE, pass_fds=(job_r, answer_w))
    os.close(job_r)
    os.close(answer_w)
    runner.stdout.readline()
    config = SenderConfig(helo_name="test", port=server.port, journal_fd=3)
    job = Job(1, "held.test", [Message("a@spoold.test", b"Subject: %d\r\n\r\nx\r\n" % i,
                                       [Recipient(i, f"u{i}@held.test")]) for i in (1, 2)],
              targets=[Target("mx.held.test", "127.0.0.1", 10)])
    os.write(job_w, encode_config(config) + encode_job(job))
    try:
        assert server.dot.wait(20), "the child never sent its first final dot"
        (child,) = psutil.Process(runner.pid).children()
        runner.kill()
        runner.wait()
        time.sleep(0.3)
        assert _alive(child), "the child died with the dot's reply unread"
        started = time.monotonic()
        server.release.set()
        waiting = journal.ResultJournal(tmp_path)
        assert waiting.take(timeout=10), "the orphan kept the journal's lock"
        assert not _alive(child)
        assert time.monotonic() - started < 5
        waiting.close()
        results = [json.loads(line) for line in path.read_bytes().splitlines()]
        assert [(r["id"], r["status"]) for r in results] == [(1, "sent")]
        server.thread.join(5)
        assert b"MAIL" not in server.after and b"RCPT" not in server.after, server.after
    finally:
        os.close(job_w)
        os.close(answer_r)
        runner.kill()
        runner.wait()


def test_a_killed_zygote_is_replaced_and_nothing_waits(world, spool_factory):
    """kill -9 the process children are forked from (sender/zygote.py): the runner
    starts another when it next needs a child, and every message goes."""
    from conftest import log_events, wait_for
    from sender.zygote import TITLE
    from spoold.fakenet import Behaviour
    import spoold

    world.add_domain("slow.test", Behaviour(delay=0.2))
    spool = spool_factory(runner={"max_use": 1, "job_size": 1, "max_children": 2})
    spoold.enqueue(sender="s@spoold.test", recipients=[f"u{i}@slow.test" for i in range(8)],
                   subject="z", body="x", config=spool.config)
    runner = psutil.Process(spool.start().pid)

    def zygotes():
        return [c for c in runner.children() if TITLE in " ".join(c.cmdline())]

    wait_for(zygotes, 20, "the zygote")
    (first,) = zygotes()
    first.kill()
    spool.wait_settled(timeout=60)
    assert zygotes() and zygotes()[0].pid != first.pid
    spool.stop()
    assert len(world.all_messages()) == 8
    assert [e["pid"] for e in log_events(spool.log_lines(), "zygote_exit")] == [first.pid]
    assert len(log_events(spool.log_lines(), "zygote_start")) == 2
