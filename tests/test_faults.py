"""Faulty peers, end to end: every SMTP and DNS fault of spoold.fakenet through the daemon.

One spool delivers one message to each of a few dozen domains, each domain
served by a sink or a DNS entry with one fault (spoold.fakenet.sink FAULTS,
nameserver TIMEOUT/SERVFAIL/NXDOMAIN/truncate/null MX).  The first attempt
at each must end as a sensible outcome -- deferred or bounced with the dsn a
postmaster would expect -- the daemon must exit cleanly, and every row must
be accounted for: logged final or still queued.  tests/test_sender.py holds
the child-level cases (MX fallback, refused connections, 4xx greetings, a
real failed TLS handshake); this file adds what they do not reach.
"""

from __future__ import annotations

import json

import pytest

from spoold.fakenet import Behaviour
from spoold.fakenet.sink import FAULT_HEADER

LONG_LINE = "250 " + "x" * 10_000

# domain -> (sink behaviour, or a DNS fault), expected (status, dsn) of the first attempt
SMTP_FAULTS = {
    "greeting-421": (Behaviour(greeting="421 4.3.2 Too busy"), ("deferred", "4.3.2")),
    "greeting-garbage": (Behaviour(greeting="hello, I am not SMTP"), ("deferred", "4.5.0")),
    "greeting-tarpit": (Behaviour(tarpit_at="greeting", tarpit_pace=0.2), ("deferred", "4.4.2")),
    "mail-421": (Behaviour(mail_reply="421 4.3.2 Closing now"), ("deferred", "4.3.2")),
    "mail-450": (Behaviour(mail_reply="450 4.7.1 Sender tempfailed"), ("deferred", "4.7.1")),
    "mail-550": (Behaviour(mail_reply="550 5.7.1 Sender refused"), ("bounced", "5.7.1")),
    "mail-drop": (Behaviour(drop_at="mail"), ("deferred", "4.4.2")),
    "mail-tarpit": (Behaviour(tarpit_at="mail", tarpit_pace=0.2), ("deferred", "4.4.2")),
    "rcpt-452": (Behaviour(rcpt_reply="452 4.5.3 Too many recipients"), ("deferred", "4.5.3")),
    "rcpt-550": (Behaviour(rcpt_reply="550 5.1.1 No such user"), ("bounced", "5.1.1")),
    "rcpt-garbage": (Behaviour(rcpt_reply="no code on this line"), ("deferred", "4.5.0")),
    "rcpt-drop": (Behaviour(drop_at="rcpt"), ("deferred", "4.4.2")),
    "data-554": (Behaviour(data_command_reply="554 5.5.1 No valid recipients"),
                 ("bounced", "5.5.1")),
    "data-451": (Behaviour(data_command_reply="451 4.3.0 Local error"), ("deferred", "4.3.0")),
    "data-drop": (Behaviour(drop_at="data"), ("deferred", "4.4.2")),
    "body-drop": (Behaviour(drop_at="body"), ("deferred", "4.4.2")),
    "dot-450": (Behaviour(data_reply="450 4.7.1 Try again later"), ("deferred", "4.7.1")),
    "dot-552": (Behaviour(data_reply="552 5.3.4 Message too big"), ("bounced", "5.3.4")),
    "dot-554": (Behaviour(data_reply="554 5.7.1 Looks like spam"), ("bounced", "5.7.1")),
    "dot-garbage": (Behaviour(data_reply="\x01\x02 garbage"), ("deferred", "4.5.0")),
    "dot-overlong": (Behaviour(data_reply=LONG_LINE), ("deferred", "4.4.2")),
    "dot-silent-close": (Behaviour(drop_after_data=True), ("deferred", "4.4.2")),
    "dot-tarpit": (Behaviour(tarpit_at="dot", tarpit_pace=0.2), ("deferred", "4.4.2")),
    "starttls-broken": (Behaviour(broken_starttls=True), ("sent", "2.0.0")),
}
DNS_FAULTS = {
    "dns-timeout": ("TIMEOUT", ("deferred", "4.4.3")),
    "dns-servfail": ("SERVFAIL", ("deferred", "4.4.3")),
    "dns-nxdomain": ("NXDOMAIN", ("bounced", "5.1.2")),
    "dns-nullmx": ("NULLMX", ("bounced", "5.1.10")),
    "dns-truncated": ("TRUNCATE", ("sent", "2.0.0")),
}


def _build(world) -> dict[str, tuple[str, str]]:
    expected = {}
    for name, (behaviour, outcome) in SMTP_FAULTS.items():
        world.add_domain(f"{name}.test", behaviour)
        expected[f"u@{name}.test"] = outcome
    for name, (fault, outcome) in DNS_FAULTS.items():
        domain = f"{name}.test"
        if fault == "NULLMX":
            world.add_null_mx(domain)
        elif fault == "TRUNCATE":
            world.add_domain(domain)
            world.dns.zone[domain]["truncate"] = True  # UDP says TC: the answer needs TCP
        else:
            world.add_dns_failure(domain, fault)
        expected[f"u@{domain}"] = outcome
    return expected


def _enqueue(spool, recipients, subject="fault", headers=""):
    import spoold

    ids = []
    for rcpt in recipients:
        message = (f"From: <s@spoold.test>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
                   f"{headers}\r\nhello\r\n").encode()
        ids += spoold.enqueue(message, sender="s@spoold.test", recipients=[rcpt],
                              config=spool.config).ids
    return ids


def test_every_fault_gets_a_sensible_outcome_and_nothing_is_lost(world, spool_factory):
    expected = _build(world)
    timeouts = {key: 2 for key in ("greeting_timeout", "helo_timeout", "mail_timeout",
                                   "rcpt_timeout", "data_init_timeout", "data_block_timeout",
                                   "data_done_timeout")}
    spool = spool_factory(smtp={"tls": "may", **timeouts},
                          runner={"backoff_min": 600, "backoff_max": 600, "child_timeout": 8,
                                  "max_children": 16, "destination_concurrency": 1})
    _enqueue(spool, expected)

    proc = spool.drain(timeout=90)

    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert b"Traceback" not in proc.stderr
    store = spool.store()
    try:
        log = store.deliveries(limit=1000)
        queued = {r["recipient"] for r in store.queue_rows()}
    finally:
        store.close()
    first = {}
    for attempt in sorted(log, key=lambda d: d["attempt"]):
        first.setdefault(attempt["recipient"], (attempt["status"], attempt["dsn"]))
    assert first == expected
    final = {d["recipient"] for d in log if d["status"] in ("sent", "bounced", "expired")}
    assert final | queued == set(expected) and not final & queued, "every row accounted for"
    silent = world.sinks_for("dot-silent-close.test")[0]
    assert len(silent.messages) == 1, "the sink kept the message it never acknowledged"
    replies = {d["recipient"]: d["reply"] for d in log}
    assert "timed out while sending end of data" in replies["u@dot-tarpit.test"]
    assert "may be sent more than once" in replies["u@dot-silent-close.test"]


def _one_pass(spool) -> list[dict]:
    """``spoold run --drain`` once; its delivery events."""
    proc = spool.drain(timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return [json.loads(line) for line in proc.stderr.decode().splitlines()
            if '"delivery"' in line]


def test_required_tls_with_a_failing_handshake_is_deferred_not_sent_in_clear(world,
                                                                            spool_factory):
    sink = world.add_domain("starttls.test", Behaviour(broken_starttls=True))[0]
    spool = spool_factory(smtp={"tls": "encrypt"},
                          runner={"backoff_min": 600, "backoff_max": 600})
    _enqueue(spool, ["u@starttls.test"])
    (attempt,) = _one_pass(spool)
    assert (attempt["status"], attempt["dsn"]) == ("deferred", "4.7.5")
    assert "Cannot start TLS" in attempt["reply"] and sink.messages == []


def test_stage_timeout_is_a_deadline_a_tarpit_cannot_stretch(world, spool_factory):
    """One byte a second keeps a per-read timeout from ever firing; the stage still ends."""
    world.add_domain("tarpit.test", Behaviour(tarpit_at="dot", tarpit_pace=0.3))
    spool = spool_factory(smtp={"data_done_timeout": 1.5},
                          runner={"child_timeout": 30, "backoff_min": 600, "backoff_max": 600})
    _enqueue(spool, ["u@tarpit.test"])
    (attempt,) = _one_pass(spool)
    assert (attempt["status"], attempt["dsn"]) == ("deferred", "4.4.2")
    assert attempt["delay"] < 10, "the child gave up at its deadline, not at child_timeout"


def _one_held(counts: dict[str, int]) -> bool:
    return counts["held"] == 1 and counts["queued"] + counts["active"] == 0


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_poison_message_is_held_and_the_rest_keeps_flowing(world, spool_factory, fault):
    """A message whose delivery kills (or freezes) the child every time is set aside."""
    sink = world.add_domain("victim.test")[0]
    spool = spool_factory(runner={"max_agent_failures": 3, "child_timeout": 2,
                                  "max_children": 2, "job_size": 5})
    (poison,) = _enqueue(spool, ["poison@victim.test"], headers=f"{FAULT_HEADER}: {fault}\r\n")
    _enqueue(spool, [f"u{i}@victim.test" for i in range(12)])
    spool.start()
    spool.wait_settled(timeout=60, until=_one_held)
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == \
        sorted(f"u{i}@victim.test" for i in range(12)), "everything else was delivered once"
    listing = spool.cli("queue").stdout.decode()
    (line,) = [line for line in listing.splitlines() if line.startswith(f"{poison} ")]
    assert "held" in line and "3 delivery agent failures" in line
    assert spool.procs[0].poll() is None, "the runner lives on"
    # Released by the operator, the row gets a fresh count (and the fault strikes again).
    spool.cli("release", str(poison))
    spool.wait_settled(timeout=60, until=_one_held)
    store = spool.store()
    try:
        fails = [d for d in store.deliveries(recipient="poison@victim.test", limit=100)]
    finally:
        store.close()
    assert len(fails) == 6 and {d["dsn"] for d in fails} == {"4.3.0"}


def test_agent_failures_are_counted_held_and_reset_by_release(store):
    import time

    from spoold import outcome

    ids, _ = store.enqueue("s@spoold.test", b"Subject: x\r\n\r\nx\r\n", [("u@x.test", "x.test")],
                           1, time.time() + 600)
    for expected_state in ("queued", "queued", "held"):
        (row,) = store.claim("me", 1, time.time() + 600, now=time.time() + 10**5)
        store.record([outcome.lost(row, "delivery agent killed by SIGKILL", time.time(), 0, 0,
                                   max_agent_failures=3)], "me")
        (listed,) = store.queue_rows()
        assert listed["state"] == expected_state
    assert listed["last_reply"] == ("held after 3 delivery agent failures: delivery agent "
                                    "killed by SIGKILL")
    assert store.release_held(ids) == 1
    (row,) = store.claim("me", 1, time.time() + 600, now=time.time() + 10**5)
    assert row.agent_failures == 0
