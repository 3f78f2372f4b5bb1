"""The operator's commands against a real queue and a real daemon."""

from __future__ import annotations

import json
import signal

from conftest import wait_for

from spoold.fakenet import Behaviour
from spoold.store.schema import LATEST


def _enqueue_cli(spool, *to, **kw):
    args = ["enqueue", "-f", "ops@spoold.test", "--subject", kw.get("subject", "s"),
            "--body", "b"]
    for address in to:
        args += ["--to", address]
    return spool.cli(*args)


def test_db_upgrade_reports_the_schema_version(spool):

    first = spool.cli("db", "upgrade").stdout.decode()
    assert first.startswith(f"schema version {LATEST} (was 0)")
    assert spool.cli("db", "upgrade").stdout.decode() == f"schema version {LATEST}\n"


def test_enqueue_prints_one_queue_id_per_recipient(spool):
    out = _enqueue_cli(spool, "a@x.test", "b@y.test", "A@x.test").stdout.decode().split("\n")
    assert [line.split(" ", 1)[1] for line in out if line] == ["a@x.test", "b@y.test"]


def test_enqueue_t_reads_recipients_from_headers_and_drops_bcc(world, spool):
    world.add_domain("x.test")
    message = (b"From: Ops <ops@spoold.test>\nTo: a@x.test\nBcc: hidden@x.test\n"
               b"Subject: headers\n\nbody\n")
    spool.cli("enqueue", "-t", input=message)
    spool.drain()
    (received,) = world.all_messages()
    assert sorted(received.rcpt_tos) == ["a@x.test", "hidden@x.test"]
    assert received.mail_from == "ops@spoold.test"
    assert b"hidden@x.test" not in received.data and b"Message-ID: <" in received.data


def test_queue_listing_summary_and_admin_verbs(spool):
    _enqueue_cli(spool, "a@one.test", "b@one.test", "c@two.test")
    listing = spool.cli("queue").stdout.decode()
    assert listing.splitlines()[0].split()[:6] == ["id", "size", "arrival", "sender",
                                                   "recipient", "state"]
    assert listing.count("ops@spoold.test") == 3
    assert spool.cli("hold", "--domain", "one.test").stdout == b"hold: 2 rows\n"
    summary = spool.cli("queue", "--summary").stdout.decode()
    assert "one.test  held    2" in summary and "two.test  queued  1" in summary
    assert "c@two.test" not in spool.cli("queue", "--state", "held").stdout.decode()
    assert spool.cli("release", "1").stdout == b"release: 1 row\n"
    assert spool.cli("requeue", "--all").stdout == b"requeue: 3 rows\n"
    assert spool.cli("delete", "3").stdout == b"delete: 1 row\n"
    log = spool.cli("log").stdout.decode()
    assert "c@two.test" in log and "deleted" in log
    missing = spool.cli("hold", "99", check=False)
    assert missing.returncode == 67 and missing.stderr == b"spoold: no queued mail with id 99\n"
    both = spool.cli("hold", "1", "--all", check=False)
    assert both.returncode == 1 and b"one of them" in both.stderr


def test_flush_makes_deferred_mail_due_and_wakes_the_runner(world, spool_factory):
    world.add_domain("grey.test", Behaviour(tempfail_first=1))
    spool = spool_factory(runner={"backoff_min": 3600, "backoff_max": 3600,
                                  "scan_interval": 60})
    spool.start()
    _enqueue_cli(spool, "a@grey.test")
    wait_for(lambda: spool.counts()["deferred"] == 1, what="a deferral")
    assert "1 deferred row due now" in spool.cli("flush").stdout.decode()
    spool.wait_settled(timeout=10)
    assert len(world.sinks_for("grey.test")[0].messages) == 1


def test_status_shows_the_runner_and_counters(world, spool):
    world.add_domain("ok.test")
    down = spool.cli("status", check=False)
    assert down.returncode == 3 and b"runner: not running" in down.stdout
    proc = spool.start()
    _enqueue_cli(spool, "a@ok.test")
    spool.wait_settled()
    wait_for(lambda: b"heartbeat" in spool.cli("status").stdout, what="a heartbeat")
    out = spool.cli("status").stdout.decode()
    assert f"runner: running, pid {proc.pid}" in out
    assert "queue: queued 0, active 0, held 0, deferred 0" in out
    assert "last 24h: sent 1," in out


def test_sighup_rereads_the_config_and_keeps_a_good_one_on_error(world, spool):
    world.add_domain("ok.test")
    proc = spool.start()
    _enqueue_cli(spool, "a@ok.test")
    spool.wait_settled()
    text = spool.config_path.read_text()
    spool.config_path.write_text(text + "\n[bogus]\n")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any('"reload_failed"' in line for line in spool.log_lines()),
              what="reload_failed")
    spool.config_path.write_text(text.replace("max_children = 8", "max_children = 3"))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any('"reloaded"' in line for line in spool.log_lines()), what="reloaded")
    _enqueue_cli(spool, "b@ok.test")
    spool.wait_settled()
    assert proc.poll() is None, "a bad config on SIGHUP must not stop the runner"
    assert len(world.sinks_for("ok.test")[0].messages) == 2
    reload_error = next(json.loads(line) for line in spool.log_lines()
                        if '"reload_failed"' in line)
    assert "unknown section [bogus]" in reload_error["error"]
