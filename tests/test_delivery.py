"""End to end: enqueue -> spoold run (a real daemon) -> DNS -> SMTP sinks, all on loopback."""

from __future__ import annotations

import json
import signal
import time

import psutil
import pytest

import sender

from conftest import log_events, wait_for

from spoold.fakenet import Behaviour


def _enqueue(spool, recipients, **kw):
    import spoold

    return spoold.enqueue(sender="sender@spoold.test", recipients=recipients,
                          subject=kw.pop("subject", "test"), body="hello\n",
                          config=spool.config, **kw)


def _deliveries(spool):
    store = spool.store()
    try:
        return store.deliveries(limit=100000)
    finally:
        store.close()


def _statuses(spool):
    return sorted((d["recipient"], d["status"]) for d in _deliveries(spool))


def _events(spool, name="delivery"):
    return log_events(spool.log_lines(), name)


def _received(world):
    """Every recipient the sinks accepted, once per acceptance."""
    return [rcpt for m in world.all_messages() for rcpt in m.rcpt_tos]


def _sender_children(proc):
    return [c for c in psutil.Process(proc.pid).children()
            if sender.TITLE in " ".join(c.cmdline())]


def test_mx_preference_and_fallback_to_next_mx(world, spool):
    world.add_domain("two.test", mx_count=2)
    world.add_domain("deadfirst.test", mx_count=2, dead_mx_first=True)
    _enqueue(spool, ["a@two.test", "b@deadfirst.test"])
    assert spool.drain().returncode == 0
    primary, backup = world.sinks_for("two.test")
    assert len(primary.messages) == 1 and not backup.messages
    live = [s for s in world.sinks_for("deadfirst.test") if s.messages]
    assert len(live) == 1
    assert _statuses(spool) == [("a@two.test", "sent"), ("b@deadfirst.test", "sent")]


def test_domain_without_mx_gets_mail_at_its_a_record(world, spool):
    world.add_a_only("plain.test")
    _enqueue(spool, ["x@plain.test"])
    spool.drain()
    assert len(world.sinks_for("plain.test")[0].messages) == 1
    assert _statuses(spool) == [("x@plain.test", "sent")]


def test_null_mx_bounces_without_connecting(world, spool):
    world.add_null_mx("nomail.test")
    _enqueue(spool, ["x@nomail.test"])
    spool.drain()
    (attempt,) = _deliveries(spool)
    assert attempt["status"] == "bounced" and attempt["dsn"] == "5.1.10"
    assert world.all_messages() == []


def test_greylisting_4xx_is_deferred_then_retried_and_sent(world, spool):
    world.add_domain("grey.test", Behaviour(tempfail_first=1))
    _enqueue(spool, ["x@grey.test"])
    spool.start()
    spool.wait_settled()
    log = sorted(_deliveries(spool), key=lambda d: d["attempt"])
    assert [(d["status"], d["attempt"]) for d in log] == [("deferred", 1), ("sent", 2)]
    assert log[0]["code"] == 450 and log[0]["dsn"].startswith("4.")
    assert len(world.sinks_for("grey.test")[0].messages) == 1


def test_5xx_bounces_and_suppresses_the_address(world, spool):
    world.add_domain("strict.test", Behaviour(rcpt_reply="550 5.1.1 No such user"))
    _enqueue(spool, ["gone@strict.test"])
    spool.drain()
    (attempt,) = _deliveries(spool)
    assert (attempt["status"], attempt["code"], attempt["dsn"]) == ("bounced", 550, "5.1.1")
    again = _enqueue(spool, ["gone@strict.test"])
    assert again.ids == [] and again.suppressed == ["gone@strict.test"]
    proc = spool.cli("enqueue", "-f", "a@spoold.test", "--to", "gone@strict.test",
                     "--subject", "x", "--body", "y", check=False)
    assert proc.returncode == 1 and b"skipped gone@strict.test: suppressed" in proc.stderr


def test_one_pipelined_transaction_gets_an_outcome_per_recipient(world, spool):
    world.add_domain("mixed.test", Behaviour(rcpt_replies={
        "gone@mixed.test": "550 5.1.1 No such user", "full@mixed.test": "452 4.2.2 Mailbox full"}))
    _enqueue(spool, ["ok@mixed.test", "gone@mixed.test", "full@mixed.test"])
    spool.drain()
    assert _statuses(spool) == [("full@mixed.test", "deferred"), ("gone@mixed.test", "bounced"),
                                ("ok@mixed.test", "sent")]
    (received,) = world.all_messages()
    assert received.rcpt_tos == ["ok@mixed.test"]


def test_policy_rejection_does_not_suppress(world, spool):
    world.add_domain("picky.test", Behaviour(data_reply="554 5.7.1 Message refused as spam"))
    _enqueue(spool, ["a@picky.test"])
    spool.drain()
    assert _statuses(spool) == [("a@picky.test", "bounced")]
    assert _enqueue(spool, ["a@picky.test"]).suppressed == []


def test_row_expires_after_its_lifetime(world, spool_factory):
    world.add_domain("down.test", Behaviour(rcpt_reply="451 4.3.0 Try later"))
    spool = spool_factory(runner={"max_lifetime": 2})
    _enqueue(spool, ["a@down.test"])
    spool.start()
    spool.wait_settled()
    statuses = [d["status"] for d in sorted(_deliveries(spool), key=lambda d: d["attempt"])]
    assert statuses[-1] == "expired" and set(statuses[:-1]) <= {"deferred"}
    assert statuses.count("deferred") >= 1


def test_dropped_connection_in_data_is_deferred_not_lost(world, spool):
    world.add_domain("flaky.test", Behaviour(drop_in_data=True))
    _enqueue(spool, ["a@flaky.test"])
    spool.drain()
    (attempt,) = _deliveries(spool)
    assert attempt["status"] == "deferred"
    world.sinks_for("flaky.test")[0].behaviour = Behaviour()
    spool.cli("flush")
    spool.drain()
    assert [d["status"] for d in _deliveries(spool)] == ["sent", "deferred"]


def test_slow_server_still_delivers(world, spool):
    world.add_domain("slow.test", Behaviour(delay=0.5))
    _enqueue(spool, ["a@slow.test", "b@slow.test"])
    spool.drain()
    assert _statuses(spool) == [("a@slow.test", "sent"), ("b@slow.test", "sent")]


def test_second_instance_is_refused(world, spool):
    first = spool.start()
    pidfile = spool.config_path.parent / "run-a" / "spoold.pid"
    wait_for(pidfile.exists, 10, "the lockfile")
    time.sleep(0.3)
    proc = spool.cli("run", check=False)
    assert proc.returncode == 75
    assert proc.stderr.decode().strip() == f"spoold: already running (pid {first.pid})"


def test_stale_lock_of_a_dead_runner_is_taken_over(world, spool):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    run_dir = spool.config_path.parent / "run-a"
    run_dir.mkdir()
    (run_dir / "spoold.pid").write_text(f"{dead.pid}\n")
    world.add_domain("ok.test")
    _enqueue(spool, ["a@ok.test"])
    proc = spool.drain()
    assert proc.returncode == 0, proc.stderr
    assert f'"previous_pid": {dead.pid}' in proc.stderr.decode()
    assert _statuses(spool) == [("a@ok.test", "sent")]


def test_idle_daemon_picks_up_new_mail_at_once(world, spool_factory):
    world.add_domain("fast.test")
    spool = spool_factory(runner={"scan_interval": 60})
    spool.start()
    time.sleep(1.5)  # let it start and go idle: only a poke can wake it within the minute
    _enqueue(spool, ["a@fast.test"])
    spool.wait_settled(timeout=5)
    assert len(world.sinks_for("fast.test")[0].messages) == 1


def test_caps_on_children_and_per_destination_are_never_exceeded(world, spool_factory):
    world.add_domain("busy.test", Behaviour(delay=0.2))
    for i in range(4):
        world.add_domain(f"other{i}.test", Behaviour(delay=0.2))
    spool = spool_factory(runner={"max_children": 5, "destination_concurrency": 2,
                                  "job_size": 2})
    _enqueue(spool, [f"u{i}@busy.test" for i in range(20)])
    _enqueue(spool, [f"u{i}@other{i % 4}.test" for i in range(20)])
    proc = spool.start()
    peak = 0
    store = spool.store()
    deadline = time.monotonic() + 60
    while (counts := store.state_counts())["queued"] + counts["active"]:
        peak = max(peak, len(_sender_children(proc)))
        assert time.monotonic() < deadline
        time.sleep(0.05)
    store.close()
    assert world.sinks_for("busy.test")[0].max_concurrent == 2
    total_peak = sum(s.max_concurrent for d in ["busy.test"] + [f"other{i}.test" for i in range(4)]
                     for s in world.sinks_for(d))
    assert 2 <= total_peak and peak <= 5
    assert len(_received(world)) == 40


def test_killed_child_loses_nothing(world, spool):
    world.add_domain("slow.test", Behaviour(delay=0.3))
    _enqueue(spool, [f"u{i}@slow.test" for i in range(10)])
    proc = spool.start()
    wait_for(lambda: _sender_children(proc), 20, "a sender child")
    _sender_children(proc)[0].send_signal(signal.SIGKILL)
    spool.wait_settled(timeout=60)
    final = {d["recipient"] for d in _deliveries(spool) if d["status"] == "sent"}
    assert final == {f"u{i}@slow.test" for i in range(10)}
    lost = [d for d in _deliveries(spool) if d["dsn"] == "4.3.0"]
    assert lost and all(d["status"] == "deferred" for d in lost)
    assert any(e["event"] == "child_exit" and "SIGKILL" in e["status"]
               for e in _events(spool, "child_exit"))


def test_killed_runner_loses_nothing_after_restart(world, spool):
    world.add_domain("slow.test", Behaviour(delay=0.2))
    _enqueue(spool, [f"u{i}@slow.test" for i in range(30)])
    proc = spool.start()
    wait_for(lambda: world.all_messages(), 20, "a first delivery")
    proc.kill()
    proc.wait()
    spool.start()
    spool.wait_settled(timeout=60)
    sent = {d["recipient"] for d in _deliveries(spool) if d["status"] == "sent"}
    assert sent == {f"u{i}@slow.test" for i in range(30)}
    received = _received(world)
    assert set(received) == sent
    # A duplicate is only possible for a message whose DATA was accepted but whose
    # result died with the runner: at most one job's worth (job_size).
    assert len(received) - len(set(received)) <= spool.config.runner.job_size


def test_sigterm_finishes_jobs_in_hand_and_exits_cleanly(world, spool_factory):
    world.add_domain("slow.test", Behaviour(delay=0.5))
    spool = spool_factory(runner={"max_children": 2, "job_size": 1})
    _enqueue(spool, [f"u{i}@slow.test" for i in range(10)])
    proc = spool.start()
    wait_for(lambda: world.all_messages(), 20, "a first delivery")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    counts = spool.counts()
    assert counts["active"] == 0
    sent = [d for d in _deliveries(spool) if d["status"] == "sent"]
    assert len(sent) == len(world.all_messages()) and counts["queued"] == 10 - len(sent)
    assert not [d for d in _deliveries(spool) if d["status"] != "sent"]


def test_two_runners_on_mariadb_never_deliver_a_row_twice(world, spool_factory, mysql_url):
    for i in range(5):  # slow enough that one runner cannot finish before the other starts
        world.add_domain(f"d{i}.test", Behaviour(delay=0.02))
    first = spool_factory(mysql_url, name="a", runner={"claim_batch": 20, "job_size": 5})
    second = spool_factory(mysql_url, name="b", runner={"claim_batch": 20, "job_size": 5})
    rcpts = [f"u{i}@d{i % 5}.test" for i in range(300)]
    for chunk in range(0, 300, 50):
        _enqueue(first, rcpts[chunk:chunk + 50])
    first.start()
    second.start()
    first.wait_settled(timeout=90)
    received = _received(world)
    assert sorted(received) == sorted(rcpts), "each row delivered exactly once"
    assert _events(first) and _events(second), "both runners took part"


def test_log_has_one_event_per_attempt_with_the_maillog_fields(world, spool):
    world.add_domain("grey.test", Behaviour(tempfail_first=1))
    _enqueue(spool, ["a@grey.test"])
    spool.start()
    spool.wait_settled()
    spool.stop()
    events = _events(spool)
    assert [e["status"] for e in events] == ["deferred", "sent"]
    for event in events:
        assert {"id", "to", "relay", "delay", "dsn", "status", "reply"} <= event.keys()
        assert event["to"] == "a@grey.test" and "hello" not in json.dumps(event)


def test_cli_errors_are_one_line(world, spool, tmp_path):
    bad = spool.cli("enqueue", "-f", "a@spoold.test", "--to", "not-an-address", "--subject",
                    "x", "--body", "y", check=False)
    assert bad.returncode == 65
    assert bad.stderr.decode() == "spoold: bad address 'not-an-address': has no @domain\n"
    missing = spool.cli("enqueue", "--to", "a@b.test", str(tmp_path / "nope.eml"), check=False)
    assert missing.returncode == 65 and b"nope.eml: No such file or directory" in missing.stderr
    garbage = spool.cli("enqueue", "--to", "a@b.test", "-f", "x@spoold.test",
                        input=b"\x00\x01binary junk", check=False)
    assert garbage.returncode == 65 and b"line 1: not a header field" in garbage.stderr
    assert spool.counts()["queued"] == 0, "nothing half-enqueued"


@pytest.mark.parametrize("max_use, children", [(1, 6), (3, 2)])
def test_children_are_reused_up_to_max_use(world, spool_factory, max_use, children):
    world.add_domain("ok.test")
    spool = spool_factory(runner={"max_use": max_use, "job_size": 1, "max_children": 1})
    _enqueue(spool, [f"u{i}@ok.test" for i in range(6)])
    proc = spool.drain()
    exits = [json.loads(line) for line in proc.stderr.decode().splitlines()
             if '"child_exit"' in line]
    assert len(world.all_messages()) == 6
    assert len(exits) == children and all(e["status"] == "exit 0" for e in exits)


def test_hung_child_is_killed_and_its_rows_retried(world, spool_factory):
    world.add_domain("slow.test", Behaviour(delay=0.3))
    spool = spool_factory(runner={"child_timeout": 2, "max_children": 1, "job_size": 2})
    _enqueue(spool, [f"u{i}@slow.test" for i in range(4)], subject="hang")
    proc = spool.start()
    wait_for(lambda: _sender_children(proc), 20, "a sender child")
    stopped = _sender_children(proc)[0]
    stopped.send_signal(signal.SIGSTOP)
    spool.wait_settled(timeout=60)
    assert any(e["pid"] == stopped.pid for e in _events(spool, "child_timeout"))
    timed_out = [d for d in _deliveries(spool) if d["reply"] == "delivery agent timed out"]
    assert timed_out and all(d["status"] == "deferred" for d in timed_out)
    assert {d["recipient"] for d in _deliveries(spool) if d["status"] == "sent"} == \
        {f"u{i}@slow.test" for i in range(4)}


def test_a_route_one_child_looked_up_serves_the_next_children(world, spool_factory):
    world.add_domain("ok.test")
    spool = spool_factory(runner={"max_use": 1, "job_size": 1, "max_children": 1})
    _enqueue(spool, [f"u{i}@ok.test" for i in range(5)])
    spool.drain()
    assert len(world.all_messages()) == 5  # five jobs, five children, one after another
    assert world.dns.queries[("ok.test", "MX")] == 1
