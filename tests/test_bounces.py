"""Bounces: the real-world corpus, the classifier, VERP, and what verdicts do to the lists."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from spoold.bounces.classify import classify, classify_feedback
from spoold.bounces.report import parse_report
from spoold.bounces.verp import envelope_sender, verp_id, verp_sender
from spoold.errors import ReportError
from spoold.store import Attempt, QueueRow
from spoold.store.bounces import BouncePolicy

# A copy of ../shared/bounces (sisimai's set-of-emails, BSD 2-Clause, LICENSE
# beside it), so that a clean clone runs the corpus too.
CORPUS = Path(__file__).resolve().parent / "bounces"
DAY = 86400.0


# --- the real-world corpus -------------------------------------------------------

def _expected_suppress(entry: dict) -> bool:
    # A complaint suppresses; an RFC 6591 auth-failure report is about our
    # signatures, not the recipient's wish.
    complaint = entry["reason"] == "feedback" and entry.get("feedback") != "auth-failure"
    return entry["hard"] or complaint


def _given_status(status: str) -> bool:
    """A status the bounce states (sisimai writes x.0.9xx for those it inferred)."""
    parts = status.split(".")
    return bool(status) and not (parts[1] == "0" and len(parts[2]) == 3 and
                                 parts[2].startswith("9"))


def test_real_world_corpus_agrees_with_the_expected_readings(capsys):
    expected = json.loads((CORPUS / "expected.json").read_text())
    decisions = statuses = decided = stated = 0
    errors, misread = [], []
    for name, entries in sorted(expected.items()):
        try:
            bounces = parse_report((CORPUS / "samples" / name).read_bytes()).bounces
        except ReportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        for index, entry in enumerate(entries):
            got = bounces[index] if index < len(bounces) else None
            decided += 1
            if (got is not None and got.verdict.suppresses) == _expected_suppress(entry):
                decisions += 1
            else:
                misread.append(f"{name}[{index}]: expected {entry['reason']} "
                               f"{entry['status']}, got {got and got.verdict}")
            if _given_status(entry["status"]):
                stated += 1
                statuses += got is not None and got.status == entry["status"]
    decision_rate, status_rate = decisions / decided, statuses / stated
    with capsys.disabled():  # the figures belong in every run's output
        print(f"\nbounce corpus: {len(expected)} messages, {decided} recipients; "
              f"suppress decision agrees {decisions}/{decided} = {decision_rate:.1%}; "
              f"status agrees {statuses}/{stated} = {status_rate:.1%}; "
              f"parse errors {len(errors)}")
        for line in misread:
            print("  " + line)
    assert not errors, errors
    assert decision_rate >= 0.97
    assert status_rate >= 0.95


# --- classification ----------------------------------------------------------------

@pytest.mark.parametrize("status, text, kind, reason", [
    ("5.1.1", "550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
     "hard", "userunknown"),
    ("5.1.10", "Domain example.org does not accept mail (nullMX)", "hard", "notaccept"),
    ("5.1.2", "Host or domain name not found", "hard", "hostunknown"),
    ("5.2.1", "", "hard", "userunknown"),
    ("5.2.2", "552 5.2.2 Mailbox full", "soft", "mailboxfull"),
    ("5.1.1", "550 5.1.1 user is over quota", "soft", "mailboxfull"),
    ("4.1.1", "450 4.1.1 <bob@x>: Recipient address rejected: User unknown", "soft",
     "userunknown"),
    ("5.7.1", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
              "zen.spamhaus.org", "policy", "blocked"),
    ("5.7.1", "554 5.7.1 <bob@x>: Relay access denied", "policy", "norelaying"),
    ("5.7.26", "550 5.7.26 This mail is unauthenticated (DMARC)", "policy", "authfailure"),
    ("5.0.0", "550 Your IP has a poor reputation", "policy", "badreputation"),
    ("5.1.8", "553 5.1.8 <a@x>: Sender address rejected: Domain not found", "policy",
     "rejected"),
    ("4.7.0", "421 4.7.0 Try again later, closing connection (rate limited)", "policy",
     "speeding"),
    ("5.0.0", "550 Unknown user bob@x (in reply to end of DATA command)", "soft", "filtered"),
    ("5.0.0", "550 Unknown user bob@x (in reply to RCPT TO command)", "hard", "userunknown"),
    ("4.4.1", "connect to mx.example.org[192.0.2.1]:25: Connection refused", "soft",
     "networkerror"),
    ("5.0.0", "", "soft", "undefined"),
    ("5.7.1", "", "policy", "blocked"),
    ("2.0.0", "250 2.0.0 Ok", "none", "delivered"),
])
def test_classify(status, text, kind, reason):
    verdict = classify(status, text)
    assert (verdict.kind, verdict.reason) == (kind, reason)


@pytest.mark.parametrize("status, suppresses", [
    ("5.1.1", True), ("5.1.2", True), ("5.1.3", True), ("5.1.6", True), ("5.1.10", True),
    ("5.2.1", True), ("5.2.2", False), ("5.1.7", False), ("5.1.8", False), ("5.7.1", False),
    ("5.7.26", False), ("5.0.0", False), ("5.3.4", False), ("5.4.4", False), ("4.1.1", False),
])
def test_codes_alone_suppress_only_dead_addresses(status, suppresses):
    assert classify(status).suppresses is suppresses


def test_complaints_suppress_but_authentication_reports_flag():
    assert classify_feedback("abuse").suppresses
    assert classify_feedback("opt-out").suppresses
    assert classify_feedback("auth-failure").kind == "policy"
    assert classify_feedback("not-spam").kind == "none"


def test_unreadable_report_is_an_error():
    with pytest.raises(ReportError):
        parse_report(b"From: someone@example.org\r\nSubject: hello\r\n\r\nJust a letter.\r\n")


# --- VERP --------------------------------------------------------------------------------

def test_verp_round_trip_and_forgeries():
    address = verp_sender(4711, "secret", "b.example.org")
    assert address.startswith("bounces+4711.") and address.endswith("@b.example.org")
    assert verp_id(address, "secret", "b.example.org") == 4711
    assert verp_id(address.upper(), "secret", "b.example.org") == 4711  # case folded on the way
    assert verp_id(address, "other secret", "b.example.org") is None
    assert verp_id(address.replace("+4711.", "+4712."), "secret", "b.example.org") is None
    assert verp_id("bounces@b.example.org", "secret", "b.example.org") is None


def test_envelope_sender_only_with_a_bounce_domain():
    from types import SimpleNamespace

    off = SimpleNamespace(domain="", secret="", local_part="bounces")
    on = SimpleNamespace(domain="b.example.org", secret="k", local_part="rt")
    assert envelope_sender("me@example.org", 3, off) == "me@example.org"
    assert envelope_sender("", 3, on) == ""  # a bounce of ours stays a null sender
    assert verp_id(envelope_sender("me@example.org", 3, on), "k", "b.example.org", "rt") == 3


# --- verdicts in the store (SQLite and MariaDB) ------------------------------------------

def _queue_row(store, recipient: str) -> QueueRow:
    ids, _ = store.enqueue("me@example.org", b"Subject: x\r\n\r\nx\r\n",
                           [(recipient, recipient.split("@")[1])], 1, time.time() + 5 * DAY)
    return store.claim("test", 10, time.time() + 600)[0] if ids else None


def _attempt(row: QueueRow, status: str, dsn: str, reply: str) -> Attempt:
    verdict = classify(dsn, reply)
    return Attempt(row, status, int(dsn[0]) * 100 + 50, dsn, reply, "mx.example.net",
                   suppress=status == "bounced" and verdict.suppresses, kind=verdict.kind,
                   cause=verdict.reason)


def _bounce_soft(store, address: str, at: float) -> None:
    row = _queue_row(store, address)
    store.record([_attempt(row, "bounced", "5.2.2", "552 5.2.2 Mailbox full")], "test", now=at)


def test_soft_bounces_suppress_only_past_the_threshold_over_days(store):
    store.bounce_policy = BouncePolicy(soft_limit=3, soft_span=2 * DAY)
    start = time.time() - 10 * DAY
    for hours in (0, 1, 2, 3):  # four in one morning: not spread over days
        _bounce_soft(store, "full@example.net", start + hours * 3600)
    assert store.suppressed(["full@example.net"]) == set()
    _bounce_soft(store, "full@example.net", start + 2 * DAY)  # now over two days
    assert store.suppressed(["full@example.net"]) == {"full@example.net"}
    explained = store.suppression_explained("full@example.net")
    assert explained["reason"] == "soft-bounces" and explained["cause"] == "mailboxfull"
    assert explained["soft"]["bounces"] == 5


def test_a_delivery_resets_the_soft_bounce_count(store):
    store.bounce_policy = BouncePolicy(soft_limit=3, soft_span=0)
    start = time.time() - DAY
    _bounce_soft(store, "flaky@example.net", start)
    _bounce_soft(store, "flaky@example.net", start + 60)
    row = _queue_row(store, "flaky@example.net")
    store.record([Attempt(row, "sent", 250, "2.0.0", "250 ok", "mx")], "test", now=start + 120)
    _bounce_soft(store, "flaky@example.net", start + 180)
    _bounce_soft(store, "flaky@example.net", start + 240)
    assert store.suppressed(["flaky@example.net"]) == set()  # 2 since the delivery, not 4
    _bounce_soft(store, "flaky@example.net", start + 300)
    assert store.suppressed(["flaky@example.net"]) == {"flaky@example.net"}


def test_policy_refusals_flag_the_destination_and_never_suppress(store):
    row = _queue_row(store, "bob@blocking.example")
    reply = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
    store.record([_attempt(row, "bounced", "5.7.1", reply)], "test")
    row = _queue_row(store, "carol@blocking.example")
    store.record([_attempt(row, "deferred", "4.7.0", "421 4.7.0 rate limited, slow down")],
                 "test")
    assert store.suppressed(["bob@blocking.example"]) == set()
    (flag,) = store.destination_flags()
    assert (flag["domain"], flag["hits"], flag["cause"]) == ("blocking.example", 2, "speeding")


def test_hard_bounce_is_explained_and_can_be_lifted(store):
    row = _queue_row(store, "gone@example.net")
    store.record([_attempt(row, "bounced", "5.1.1", "550 5.1.1 <gone@example.net>: no such user")],
                 "test")
    explained = store.suppression_explained("gone@example.net")
    assert (explained["reason"], explained["cause"], explained["dsn"]) == \
        ("bounce", "userunknown", "5.1.1")
    assert explained["notify_id"] == row.id
    assert explained["delivery"]["status"] == "bounced"
    assert store.unsuppress("gone@example.net")
    assert store.suppression_explained("gone@example.net") is None
