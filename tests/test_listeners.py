"""The SMTP listeners under a real runner: the bounce receiver and submission (swaks)."""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import sys

import pytest

from conftest import wait_for, write_config
from test_sender import certificate  # noqa: F401  (fixture: a self-signed certificate)

import spoold
from spoold.bounces.verp import verp_sender
from spoold.fakenet import Behaviour

BOUNCE_DOMAIN = "bounces.spoold.test"
SECRET = "test secret"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _dsn(recipient: str, status: str, diagnostic: str) -> bytes:
    """An RFC 3464 DSN as a remote MTA sends it."""
    return (
        "From: MAILER-DAEMON@mx.dest.test\r\nTo: someone@spoold.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.dest.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Remote-MTA: dns; store.dest.test\r\nDiagnostic-Code: smtp; {diagnostic}\r\n"
        "--B--\r\n").encode()


def _store_call(spool, method, *args):
    store = spool.store()
    try:
        return getattr(store, method)(*args)
    finally:
        store.close()


def _queue_ids(spool, recipients):
    return spoold.enqueue(sender="news@spoold.test", recipients=recipients, subject="hi",
                          body="hello\n", config=spool.config).ids


def test_dsn_to_the_bounce_listener_suppresses_and_a_policy_dsn_flags(world, spool_factory):
    (sink,) = world.add_domain("dest.test")
    port = _free_port()
    spool = spool_factory(bounces={"domain": BOUNCE_DOMAIN, "secret": SECRET,
                                   "listen_port": port})
    alice, bob = _queue_ids(spool, ["alice@dest.test", "bob@dest.test"])
    spool.start()
    sink.wait_for(2)
    # VERP: one transaction per row, each with its own signed envelope sender
    assert sorted(m.mail_from for m in sink.messages) == sorted(
        verp_sender(i, SECRET, BOUNCE_DOMAIN) for i in (alice, bob))
    wait_for(lambda: _listening("127.0.0.1", port), what="bounce listener")

    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.sendmail("", [verp_sender(alice, SECRET, BOUNCE_DOMAIN)],
                      _dsn("alice@dest.test", "5.1.1", "550 5.1.1 <alice@dest.test>: "
                                                       "Recipient address rejected: User unknown"))
        smtp.sendmail("", [verp_sender(bob, SECRET, BOUNCE_DOMAIN)],
                      _dsn("bob@dest.test", "5.7.1", "554 5.7.1 Service unavailable; Client "
                                                     "host blocked using zen.spamhaus.org"))
        with pytest.raises(smtplib.SMTPRecipientsRefused):  # no relay: only the bounce domain
            smtp.sendmail("", ["victim@elsewhere.test"], b"Subject: relay?\r\n\r\nx\r\n")

    wait_for(lambda: _store_call(spool, "suppressed", ["alice@dest.test"]),
             what="alice suppressed")
    wait_for(lambda: _store_call(spool, "destination_flags"), what="dest.test flagged")
    assert _store_call(spool, "suppressed", ["bob@dest.test"]) == set()
    (flag,) = _store_call(spool, "destination_flags")
    assert (flag["domain"], flag["cause"], flag["dsn"]) == ("dest.test", "blocked", "5.7.1")
    bounced = [d for d in _store_call(spool, "deliveries") if d["status"] == "bounced"]
    assert sorted((d["recipient"], d["dsn"], d["relay"]) for d in bounced) == [
        ("alice@dest.test", "5.1.1", "store.dest.test"),
        ("bob@dest.test", "5.7.1", "store.dest.test")]
    explained = spool.cli("suppression", "explain", "alice@dest.test").stdout.decode()
    assert "userunknown" in explained and f"queue id {alice}" in explained
    assert "5.1.1" in explained


def test_synchronous_replies_use_the_same_classifier(world, spool):
    world.add_domain("gone.test", Behaviour(rcpt_reply="550 5.1.1 <x@gone.test>: no such user"))
    world.add_domain("blocks.test", Behaviour(
        rcpt_reply="554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using "
                   "zen.spamhaus.org"))
    _queue_ids(spool, ["x@gone.test", "y@blocks.test"])
    assert spool.drain().returncode == 0
    assert _store_call(spool, "suppressed", ["x@gone.test", "y@blocks.test"]) == {"x@gone.test"}
    assert [f["domain"] for f in _store_call(spool, "destination_flags")] == ["blocks.test"]
    flags = spool.cli("bounces", "flags").stdout.decode()
    assert "blocks.test" in flags and "blocked" in flags


# --- submission -----------------------------------------------------------------------

pytestmark_swaks = pytest.mark.skipif(shutil.which("swaks") is None,
                                      reason="swaks is not installed (apt-get install swaks)")


def _swaks(port: int, *args: str, server: str = "127.0.0.1",
           data: str | None = None) -> subprocess.CompletedProcess:
    command = ["swaks", "--server", server, "--port", str(port), "--from", "app@spoold.test",
               "--timeout", "10", *args]
    if data is not None:
        command += ["--data", data]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytestmark_swaks
def test_loopback_submission_enqueues_and_refuses_malformed_mail(world, spool_factory):
    (sink,) = world.add_domain("dest.test")
    port = _free_port()
    spool = spool_factory(submission={"listen_port": port})
    spool.start()
    wait_for(lambda: _listening("127.0.0.1", port), what="submission listener")

    sent = _swaks(port, "--to", "carol@dest.test", "--header", "Subject: via SMTP")
    assert sent.returncode == 0, sent.stdout
    assert "250 2.0.0 Ok: queued as" in sent.stdout
    sink.wait_for(1)
    assert sink.messages[0].rcpt_tos == ["carol@dest.test"]

    bad = _swaks(port, "--to", "carol@dest.test", data="no header section here\r\n")
    assert bad.returncode != 0
    assert "554 5.6.0 line 1: not a header field" in bad.stdout


@pytestmark_swaks
def test_remote_submission_needs_auth_over_starttls(world, spool_factory, certificate):  # noqa: F811
    (sink,) = world.add_domain("dest.test")
    host, port = "127.0.0.2", _free_port("127.0.0.2")
    cert, key = certificate
    entry = subprocess.run([sys.executable, "-m", "spoold.cli", "submission", "hash-password",
                            "app", "--password-stdin"], input=b"s3cret pass\n",
                           capture_output=True, check=True).stdout.decode().strip()
    spool = spool_factory(submission={"listen_address": host, "listen_port": port,
                                      "require_auth": True, "tls_cert": cert, "tls_key": key,
                                      "users": [entry]})
    spool.start()
    wait_for(lambda: _listening(host, port), what="submission listener")

    plain = _swaks(port, "--to", "dave@dest.test", server=host)
    assert plain.returncode != 0 and "530" in plain.stdout  # STARTTLS first
    no_auth = _swaks(port, "--to", "dave@dest.test", "--tls", server=host)
    assert no_auth.returncode != 0 and "530 5.7.0 Authentication required" in no_auth.stdout
    wrong = _swaks(port, "--to", "dave@dest.test", "--tls", "--auth", "PLAIN",
                   "--auth-user", "app", "--auth-password", "guess", server=host)
    assert wrong.returncode != 0 and "535" in wrong.stdout
    assert _store_call(spool, "state_counts")["queued"] == 0 and not sink.messages

    for mechanism in ("PLAIN", "LOGIN"):
        ok = _swaks(port, "--to", "dave@dest.test", "--tls", "--auth", mechanism,
                    "--auth-user", "app", "--auth-password", "s3cret pass", server=host)
        assert ok.returncode == 0, ok.stdout
    sink.wait_for(2)


@pytest.mark.parametrize("name, password, error", [
    ("app:x", b"long enough\n", b"no colon or blank may appear"),
    ("app x", b"long enough\n", b"no colon or blank may appear"),
    ("app", b"short\n", b"at least 8 characters"),
])
def test_hash_password_refuses_what_would_make_a_bad_entry(name, password, error):
    proc = subprocess.run([sys.executable, "-m", "spoold.cli", "submission", "hash-password",
                           name, "--password-stdin"], input=password, capture_output=True)
    assert proc.returncode != 0 and not proc.stdout
    assert error in proc.stderr and b"Traceback" not in proc.stderr


@pytestmark_swaks
def test_database_outage_answers_451(tmp_path, world):
    port = _free_port()
    dead = f"mysql://root@127.0.0.1:{_free_port()}/nothing"  # nothing listens there
    path = write_config(tmp_path / "s.toml", dead, tmp_path / "run", world,
                        submission={"listen_port": port})
    listener = subprocess.Popen([sys.executable, "-m", "spoold.listeners", "submission"],
                                env={**__import__("os").environ, "SPOOLD_CONFIG": str(path)},
                                stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening("127.0.0.1", port), what="submission listener")
        result = _swaks(port, "--to", "erin@dest.test")
        assert result.returncode != 0
        assert "451 4.3.0 Database unavailable" in result.stdout
    finally:
        listener.terminate()
        listener.wait(10)


def test_a_crashed_listener_is_restarted_and_the_runner_lives_on(world, spool_factory):
    import psutil

    port = _free_port()
    spool = spool_factory(bounces={"domain": BOUNCE_DOMAIN, "secret": SECRET,
                                   "listen_port": port})
    runner = spool.start()
    wait_for(lambda: _listening("127.0.0.1", port), what="bounce listener")

    def listener_pids():
        return [c.pid for c in psutil.Process(runner.pid).children()
                if "spoold.listeners" in " ".join(c.cmdline())]

    (first,) = listener_pids()
    psutil.Process(first).kill()
    wait_for(lambda: listener_pids() and listener_pids() != [first], what="a new listener")
    wait_for(lambda: _listening("127.0.0.1", port), what="the listener back")
    assert runner.poll() is None
    assert any('"listener_exit"' in line for line in spool.log_lines())
