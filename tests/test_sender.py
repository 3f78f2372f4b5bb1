"""The sender child, end to end: ``python -m sender`` against real servers.

Each test runs the child as a subprocess, feeds it protocol lines and reads
its answers, while a real DNS server (dnspython messages over UDP) and real
SMTP servers (aiosmtpd sinks, plus a hand-driven server for the failures
aiosmtpd will not produce) listen on a random 127.x.y.0/24 and a random high
port.  The pure parts -- sender.trouble, the resolver, the data encoding --
are tested in-process at the end.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import random
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from aiosmtpd.controller import Controller

from sender import trouble
from sender.client import crlf_lines, dot_stuff
from sender.mx import DnsPermanentError, DnsTemporaryError, MxResolver
from sender.protocol import (Job, Message, Recipient, SenderConfig, Target, encode_config,
                             encode_job)

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "example.test"
SENDER = "alice@sender.test"


# --- the fake internet -------------------------------------------------------


class DnsServer(socketserver.ThreadingUDPServer):
    """Authoritative for whatever ``records`` holds; NXDOMAIN for the rest."""

    daemon_threads = True

    def __init__(self, address: str) -> None:
        super().__init__((address, 0), _DnsHandler)
        self.records: dict[str, dict[str, list[str]]] = {}
        self.servfail: set[str] = set()

    def answer(self, query: dns.message.Message) -> bytes:
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif rdtype in self.records[name]:
            response.answer.append(dns.rrset.from_text_list(
                question.name, 300, "IN", rdtype, self.records[name][rdtype]))
        return response.to_wire()


class _DnsHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(self.server.answer(dns.message.from_wire(data)), self.client_address)


@dataclass
class Received:
    peer: tuple
    sender: str
    rcpts: list[str]
    data: bytes
    mail_options: list[str]
    tls: bool


class Sink:
    """aiosmtpd handler: keeps what it gets; ``replies`` refuses local parts."""

    def __init__(self, replies: dict[str, str] | None = None) -> None:
        self.replies = replies or {}
        self.received: list[Received] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.replies.get(address.partition("@")[0])
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        self.received.append(Received(session.peer, envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content, list(envelope.mail_options),
                                      session.ssl is not None))
        return "250 2.0.0 Ok: queued as 1234"


class SinkController(Controller):
    """A Controller that counts the connections it is given."""

    connections = 0

    def factory(self):
        self.connections += 1
        return super().factory()

    def start(self) -> None:
        super().start()
        self.connections = 0  # start() itself connected once, to check the server is up


class RawServer(socketserver.ThreadingTCPServer):
    """A hand-driven SMTP server: a chosen greeting (None: never greets), and
    optionally a connection dropped right after the final dot, or closed
    right after the reply to it (as a server whose idle timer ran out)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], greeting: str | None,
                 drop_after_dot: bool = False, close_after_reply: bool = False) -> None:
        super().__init__(address, _RawHandler)
        self.greeting = greeting
        self.drop_after_dot = drop_after_dot
        self.close_after_reply = close_after_reply
        self.connections = 0
        self.messages = 0
        self.quits = 0


class _RawHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server = self.server
        server.connections += 1
        if server.greeting is None:
            self.rfile.read()  # say nothing until the client gives up
            return
        self.wfile.write(server.greeting.encode() + b"\r\n")
        for line in iter(self.rfile.readline, b""):
            verb = line[:4].upper()
            if verb == b"QUIT":
                server.quits += 1
                self.wfile.write(b"221 2.0.0 Bye\r\n")
                return
            if verb == b"DATA":
                self.wfile.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                for data_line in iter(self.rfile.readline, b""):
                    if data_line == b".\r\n":
                        break
                if server.drop_after_dot:
                    return
                server.messages += 1
            self.wfile.write(b"250 2.0.0 Ok\r\n")
            if verb == b"DATA" and server.close_after_reply:
                return


class World:
    """One test's view of the fake internet: DNS records and SMTP servers."""

    def __init__(self, base: str, port: int, dns_server: DnsServer) -> None:
        self.base = base
        self.port = port
        self.dns = dns_server
        self._stops: list = []

    def ip(self, number: int) -> str:
        return f"{self.base}.{number}"

    def records(self, name: str, **by_type: list[str]) -> None:
        self.dns.records[name] = by_type

    def host(self, name: str, number: int) -> None:
        """An A record for ``name``, pointing at server ``number``."""
        self.records(name, A=[self.ip(number)])

    def sink(self, number: int, handler: Sink | None = None, **smtp_parameters) -> SinkController:
        controller = SinkController(handler or Sink(), hostname=self.ip(number), port=self.port,
                                    **smtp_parameters)
        controller.start()
        self._stops.append(controller.stop)
        return controller

    def raw(self, number: int, greeting: str | None = "220 raw.test ESMTP",
            drop_after_dot: bool = False, close_after_reply: bool = False) -> RawServer:
        server = RawServer((self.ip(number), self.port), greeting, drop_after_dot,
                           close_after_reply)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._stops += [server.server_close, server.shutdown]
        return server

    def config(self, **overrides) -> SenderConfig:
        settings = dict(helo_name="sender.test", port=self.port,
                        dns_nameservers=[self.dns.server_address[0]],
                        dns_port=self.dns.server_address[1], dns_timeout=2.0, tls="none",
                        connect_timeout=2.0, greeting_timeout=3.0, helo_timeout=3.0,
                        mail_timeout=3.0, rcpt_timeout=3.0, data_init_timeout=3.0,
                        data_block_timeout=3.0, data_done_timeout=3.0, quit_timeout=2.0)
        return SenderConfig(**{**settings, **overrides})

    def stop(self) -> None:
        for stop in reversed(self._stops):
            stop()


def _free_port(base: str, numbers: range) -> int:
    """A port nothing listens on at any of base.<numbers>."""
    while True:
        port = random.randint(20000, 60000)
        try:
            for number in numbers:
                with socket.socket() as probe:
                    probe.bind((f"{base}.{number}", port))
            return port
        except OSError:
            continue


@pytest.fixture(scope="module")
def dns_server() -> Iterator[tuple[str, int, DnsServer]]:
    base = f"127.{random.randint(100, 254)}.{random.randint(0, 254)}"
    server = DnsServer(f"{base}.1")
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield base, _free_port(base, range(2, 10)), server
    server.shutdown()
    server.server_close()


@pytest.fixture
def world(dns_server) -> Iterator[World]:
    base, port, server = dns_server
    server.records.clear()
    server.servfail.clear()
    w = World(base, port, server)
    yield w
    w.stop()


# --- running the child -------------------------------------------------------


def make_job(*bodies: bytes, to: tuple[str, ...] = ("bob",), job_id: int = 1,
             domain: str = DOMAIN) -> Job:
    """One message per body, each to the local parts ``to`` at ``domain``."""
    ids = itertools.count(1)
    return Job(job_id, domain, [
        Message(SENDER, body, [Recipient(next(ids), f"{local}@{domain}") for local in to])
        for body in bodies
    ])


def run_sender(config: SenderConfig | None, *lines: bytes | Job,
               timeout: float = 20) -> tuple[list[dict], subprocess.CompletedProcess]:
    """Feed the child a config line and jobs, then EOF; its answer lines and exit."""
    data = b"".join(encode_job(x) if isinstance(x, Job) else x for x in lines)
    if config is not None:
        data = encode_config(config) + data
    proc = subprocess.run([sys.executable, "-m", "sender"], input=data, capture_output=True,
                          cwd=ROOT, timeout=timeout)
    return [json.loads(line) for line in proc.stdout.splitlines()], proc


def deliver(config: SenderConfig, job: Job) -> dict[int, dict]:
    """Run one job; its results by recipient id (the done line checked)."""
    answers, proc = run_sender(config, job)
    assert proc.returncode == 0, proc.stderr.decode()
    assert answers[-1]["done"] == job.job, answers
    return {answer["id"]: answer for answer in answers[:-1]}


# --- delivery: MX choice and fallback ---------------------------------------


def test_mx_preference_order(world):
    world.records(DOMAIN, MX=["20 mx2.example.test.", "10 mx1.example.test."])
    world.host("mx1.example.test", 2)
    world.host("mx2.example.test", 3)
    first, second = world.sink(2), world.sink(3)

    result = deliver(world.config(), make_job(b"Subject: hi\r\n\r\nhello\r\n"))[1]

    assert result["status"] == "sent"
    assert (result["code"], result["dsn"]) == (250, "2.0.0")
    assert result["reply"] == "250 2.0.0 Ok: queued as 1234"
    assert result["relay"] == f"mx1.example.test[{world.ip(2)}]:{world.port}"
    assert result["duration"] >= 0
    assert [r.rcpts for r in first.handler.received] == [[f"bob@{DOMAIN}"]]
    assert second.handler.received == []


def test_next_mx_after_refused_connection_and_4xx_greeting(world):
    world.records(DOMAIN, MX=["10 refuses.example.test.", "20 busy.example.test.",
                              "30 ok.example.test."])
    world.host("refuses.example.test", 9)  # nothing listens there
    world.host("busy.example.test", 2)
    world.host("ok.example.test", 3)
    busy = world.raw(2, greeting="421 4.3.2 Too busy, come back later")
    sink = world.sink(3)

    result = deliver(world.config(), make_job(b"Subject: hi\r\n\r\nhello\r\n"))[1]

    assert result["status"] == "sent"
    assert result["relay"] == f"ok.example.test[{world.ip(3)}]:{world.port}"
    assert busy.connections == 1
    assert len(sink.handler.received) == 1


def test_all_mx_failing_defers_with_the_last_reply(world):
    world.records(DOMAIN, MX=["10 refuses.example.test.", "20 busy.example.test."])
    world.host("refuses.example.test", 9)
    world.host("busy.example.test", 2)
    world.raw(2, greeting="554 5.7.1 Not from you")  # a 5xx greeting is skipped, not final

    result = deliver(world.config(), make_job(b"x\r\n"))[1]

    assert result["status"] == "deferred"
    assert (result["code"], result["dsn"]) == (554, "4.7.1")
    assert result["reply"] == "554 5.7.1 Not from you"
    assert result["relay"] == f"busy.example.test[{world.ip(2)}]:{world.port}"


def test_refused_connection_on_the_only_host(world):
    world.records(DOMAIN, MX=["10 refuses.example.test."])
    world.host("refuses.example.test", 9)

    result = deliver(world.config(), make_job(b"x\r\n"))[1]

    assert (result["status"], result["code"], result["dsn"]) == ("deferred", None, "4.4.1")
    assert result["reply"] == (f"connect to refuses.example.test[{world.ip(9)}]:{world.port}: "
                               "Connection refused")


def test_silent_server_times_out_and_next_mx_takes_the_mail(world):
    world.records(DOMAIN, MX=["10 mute.example.test.", "20 ok.example.test."])
    world.host("mute.example.test", 2)
    world.host("ok.example.test", 3)
    world.raw(2, greeting=None)
    sink = world.sink(3)

    result = deliver(world.config(greeting_timeout=0.5), make_job(b"x\r\n"))[1]

    assert result["status"] == "sent"
    assert len(sink.handler.received) == 1


def test_no_mx_falls_back_to_the_domain_address(world):
    world.host(DOMAIN, 2)
    sink = world.sink(2)

    result = deliver(world.config(), make_job(b"x\r\n"))[1]

    assert result["status"] == "sent"
    assert result["relay"] == f"{DOMAIN}[{world.ip(2)}]:{world.port}"
    assert len(sink.handler.received) == 1


# --- delivery: DNS failures ---------------------------------------------------


def test_null_mx_bounces_without_connecting(world):
    world.records(DOMAIN, MX=["0 ."], A=[world.ip(2)])
    sink = world.sink(2)

    result = deliver(world.config(), make_job(b"x\r\n"))[1]

    assert (result["status"], result["code"], result["dsn"]) == ("bounced", None, "5.1.10")
    assert result["relay"] == "none"
    assert sink.connections == 0


def test_nxdomain_bounces(world):
    result = deliver(world.config(), make_job(b"x\r\n", to=("bob", "carol")))

    assert {r["status"] for r in result.values()} == {"bounced"}
    assert result[1]["dsn"] == "5.1.2"
    assert result[1]["code"] is None
    assert "Host or domain name not found" in result[1]["reply"]


def test_servfail_defers(world):
    world.dns.servfail.add(DOMAIN)

    result = deliver(world.config(), make_job(b"x\r\n"))[1]

    assert (result["status"], result["code"], result["dsn"]) == ("deferred", None, "4.4.3")
    assert result["relay"] == "none"


# --- delivery: replies per recipient ----------------------------------------


def test_rcpt_replies_per_recipient(world):
    world.records(DOMAIN, MX=["10 mx1.example.test."])
    world.host("mx1.example.test", 2)
    world.sink(2, Sink({"gone": "550 5.1.1 <gone@example.test>: Recipient address rejected",
                        "full": "450 4.2.2 Mailbox full, try later",
                        "plain": "550 No such user here"}))

    result = deliver(world.config(), make_job(b"x\r\n", to=("bob", "gone", "full", "plain")))

    assert result[1]["status"] == "sent"
    assert (result[2]["status"], result[2]["code"], result[2]["dsn"]) == ("bounced", 550, "5.1.1")
    assert result[2]["reply"] == "550 5.1.1 <gone@example.test>: Recipient address rejected"
    assert (result[3]["status"], result[3]["code"], result[3]["dsn"]) == ("deferred", 450, "4.2.2")
    assert (result[4]["status"], result[4]["dsn"]) == ("bounced", "5.0.0")


def test_4xx_recipient_tries_next_mx_but_5xx_is_final(world):
    world.records(DOMAIN, MX=["10 mx1.example.test.", "20 mx2.example.test."])
    world.host("mx1.example.test", 2)
    world.host("mx2.example.test", 3)
    world.sink(2, Sink({"gone": "550 5.1.1 No such user", "later": "451 4.3.0 Try again"}))
    second = world.sink(3)

    result = deliver(world.config(), make_job(b"x\r\n", to=("bob", "gone", "later")))

    assert result[1]["relay"].startswith("mx1.example.test[")
    assert result[2]["status"] == "bounced"
    assert result[3]["status"] == "sent"
    assert result[3]["relay"].startswith("mx2.example.test[")
    assert [r.rcpts for r in second.handler.received] == [[f"later@{DOMAIN}"]]


def test_lost_connection_after_the_dot_defers_without_trying_the_next_mx(world):
    world.records(DOMAIN, MX=["10 mx1.example.test.", "20 mx2.example.test."])
    world.host("mx1.example.test", 2)
    world.host("mx2.example.test", 3)
    world.raw(2, drop_after_dot=True)
    second = world.sink(3)

    result = deliver(world.config(), make_job(b"x\r\n"))[1]

    assert (result["status"], result["code"], result["dsn"]) == ("deferred", None, "4.4.2")
    assert "may be sent more than once" in result["reply"]
    assert second.handler.received == []


# --- delivery: the connection and the data ----------------------------------


def test_two_messages_share_one_connection(world):
    world.host(DOMAIN, 2)
    sink = world.sink(2)

    result = deliver(world.config(), make_job(b"first\r\n", b"second\r\n"))

    assert [r["status"] for r in result.values()] == ["sent", "sent"]
    assert [r.data for r in sink.handler.received] == [b"first\r\n", b"second\r\n"]
    assert sink.connections == 1


def test_next_job_to_the_same_host_reuses_the_connection(world):
    world.host(DOMAIN, 2)
    sink = world.sink(2)

    answers, proc = run_sender(world.config(), make_job(b"first\r\n"),
                               make_job(b"second\r\n", job_id=2))

    assert proc.returncode == 0, proc.stderr.decode()
    assert [a.get("status") for a in answers] == ["sent", None, "sent", None]
    assert [r.data for r in sink.handler.received] == [b"first\r\n", b"second\r\n"]
    assert sink.connections == 1


def test_done_line_gives_the_route_it_looked_up_and_the_kept_endpoint(world):
    world.records(DOMAIN, MX=["10 mx1.example.test."])
    world.host("mx1.example.test", 2)
    world.sink(2)

    answers, _ = run_sender(world.config(), make_job(b"x\r\n"))

    done = answers[-1]
    assert done["targets"] == [["mx1.example.test", world.ip(2), 10]]
    assert 0 < done["ttl"] <= 60
    assert done["kept"] == f"{world.ip(2)}:{world.port}"


def test_job_that_brings_its_targets_is_delivered_without_a_dns_lookup(world):
    world.sink(2)  # DOMAIN has no DNS records at all
    job = make_job(b"x\r\n")
    job.targets = [Target("mx1.example.test", world.ip(2), 10)]

    answers, _ = run_sender(world.config(connection_cache_time=0), job)

    assert answers[0]["status"] == "sent"
    assert answers[-1] == {"done": 1}  # nothing looked up, nothing kept


def test_kept_connection_serves_another_domain_whose_mx_has_its_address(world):
    world.host(DOMAIN, 2)
    world.host("other.test", 2)
    server = world.raw(2)

    answers, _ = run_sender(world.config(), make_job(b"first\r\n"),
                            make_job(b"second\r\n", job_id=2, domain="other.test"))

    assert [a.get("status") for a in answers] == ["sent", None, "sent", None]
    assert (server.messages, server.connections) == (2, 1)


def test_kept_connection_to_a_backup_mx_does_not_jump_the_mx_order(world):
    world.records(DOMAIN, MX=["10 mx1.example.test.", "20 mx2.example.test."])
    world.host("mx1.example.test", 2)
    world.host("mx2.example.test", 3)
    world.host("other.test", 3)
    primary, backup = world.raw(2), world.raw(3)

    run_sender(world.config(), make_job(b"first\r\n", domain="other.test"),
               make_job(b"second\r\n", job_id=2))

    assert (primary.messages, backup.messages) == (1, 1)


def test_kept_connection_the_server_closed_is_replaced_without_a_deferral(world):
    world.host(DOMAIN, 2)
    server = world.raw(2, close_after_reply=True)

    answers, _ = run_sender(world.config(), make_job(b"first\r\n"),
                            make_job(b"second\r\n", job_id=2))

    assert [a.get("status") for a in answers] == ["sent", None, "sent", None]
    assert (server.messages, server.connections) == (2, 2)


def test_kept_connection_is_closed_when_idle_for_the_cache_time(world):
    world.host(DOMAIN, 2)
    server = world.raw(2)
    child = subprocess.Popen([sys.executable, "-m", "sender"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd=ROOT)
    try:
        child.stdin.write(encode_config(world.config(connection_cache_time=0.3))
                          + encode_job(make_job(b"first\r\n")))
        child.stdin.flush()
        assert json.loads(child.stdout.readline())["status"] == "sent"
        assert json.loads(child.stdout.readline())["done"] == 1
        assert server.quits == 0  # kept open for a next job
        time.sleep(1.0)
        assert (server.quits, child.poll()) == (1, None)  # closed, though the child lives on
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_open_transaction_is_reset_before_the_next_message(world):
    world.host(DOMAIN, 2)
    sink = world.sink(2, Sink({"bob": "550 5.1.1 No such user"}))
    job = Job(1, DOMAIN, [Message(SENDER, b"first\r\n", [Recipient(1, f"bob@{DOMAIN}")]),
                          Message(SENDER, b"second\r\n", [Recipient(2, f"amy@{DOMAIN}")])])

    result = deliver(world.config(), job)

    # Without an RSET after the refused RCPT, the second MAIL would be a nested one (503).
    assert [result[1]["status"], result[2]["status"]] == ["bounced", "sent"]
    assert [r.data for r in sink.handler.received] == [b"second\r\n"]
    assert sink.connections == 1


def test_bare_lf_becomes_crlf_and_dots_survive(world):
    world.host(DOMAIN, 2)
    sink = world.sink(2)
    body = b"Subject: dots\n\n.a line starting with a dot\n..two dots\n.\nbare CR\rend"

    deliver(world.config(), make_job(body))

    assert sink.handler.received[0].data == (
        b"Subject: dots\r\n\r\n.a line starting with a dot\r\n..two dots\r\n.\r\n"
        b"bare CR\r\nend\r\n")


def test_message_over_the_size_limit_bounces_unsent(world):
    world.host(DOMAIN, 2)
    sink = world.sink(2, data_size_limit=200)
    small, big = b"small\r\n", b"x" * 300 + b"\r\n"

    result = deliver(world.config(), make_job(big, small))

    assert (result[1]["status"], result[1]["code"], result[1]["dsn"]) == ("bounced", None, "5.3.4")
    assert "exceeds size limit 200" in result[1]["reply"]
    assert result[2]["status"] == "sent"
    assert [(r.data, r.mail_options) for r in sink.handler.received] == [(small, ["SIZE=7"])]


# --- delivery: STARTTLS -------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate and key for the sinks' STARTTLS."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _server_context(certificate: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_tls_may_uses_starttls_with_an_unverified_certificate(world, certificate):
    world.host(DOMAIN, 2)
    sink = world.sink(2, tls_context=_server_context(certificate))

    result = deliver(world.config(tls="may"), make_job(b"x\r\n"))[1]

    assert result["status"] == "sent"
    assert sink.handler.received[0].tls


def test_tls_may_retries_in_plaintext_when_the_handshake_fails(world, certificate):
    world.host(DOMAIN, 2)
    context = _server_context(certificate)
    # A TLS 1.2 server that wants a client certificate aborts the handshake
    # itself (under TLS 1.3 the client would only notice after it).
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(certificate[0])
    sink = world.sink(2, tls_context=context)

    result = deliver(world.config(tls="may"), make_job(b"x\r\n"))[1]

    assert result["status"] == "sent"
    assert not sink.handler.received[0].tls
    assert sink.connections == 2


def test_tls_encrypt_defers_when_starttls_is_not_offered(world):
    world.host(DOMAIN, 2)
    sink = world.sink(2)

    result = deliver(world.config(tls="encrypt"), make_job(b"x\r\n"))[1]

    assert (result["status"], result["dsn"]) == ("deferred", "4.7.4")
    assert "TLS is required" in result["reply"]
    assert sink.handler.received == []


# --- the child program --------------------------------------------------------


def test_garbage_line_is_answered_and_the_child_keeps_serving(world):
    world.host(DOMAIN, 2)
    world.sink(2)
    proc = subprocess.Popen([sys.executable, "-m", "sender"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=ROOT)
    try:
        proc.stdin.write(encode_config(world.config()) + b"this is not json\n")
        proc.stdin.flush()
        assert "error" in json.loads(proc.stdout.readline())  # answered before EOF: flushed

        proc.stdin.write(encode_job(make_job(b"x\r\n", job_id=2)))
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["status"] == "sent"
        assert json.loads(proc.stdout.readline())["done"] == 2
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_sigint_and_sighup_are_ignored(world):
    world.host(DOMAIN, 2)
    world.sink(2)
    proc = subprocess.Popen([sys.executable, "-m", "sender"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=ROOT)
    try:
        proc.stdin.write(encode_config(world.config()) + b"ready?\n")
        proc.stdin.flush()
        proc.stdout.readline()  # the error line: the child is up, its handlers are set
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGHUP)
        proc.stdin.write(encode_job(make_job(b"x\r\n")))
        proc.stdin.close()
        assert json.loads(proc.stdout.readline())["status"] == "sent"
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_child_exits_when_its_parent_is_gone(world):
    # A middle process starts the child on our pipes, then exits when told to.
    job_r, job_w = os.pipe()
    answer_r, answer_w = os.pipe()
    spawn = ("import subprocess, sys; "
             f"subprocess.Popen([sys.executable, '-m', 'sender'], stdin={job_r}, "
             f"stdout={answer_w}); sys.stdin.readline()")
    middle = subprocess.Popen([sys.executable, "-c", spawn], stdin=subprocess.PIPE, cwd=ROOT,
                              pass_fds=(job_r, answer_w))
    os.close(job_r)
    os.close(answer_w)
    with open(job_w, "wb", buffering=0) as jobs, open(answer_r, "rb") as answers:
        jobs.write(encode_config(world.config()) + b"not a job\n")
        assert "error" in json.loads(answers.readline())  # the child runs, its parent known
        middle.communicate(b"exit now\n", timeout=10)
        # Killed with its parent (PR_SET_PDEATHSIG), though its stdin is still open.
        assert answers.readline() == b""


def test_malformed_job_with_readable_ids_is_deferred(world):
    line = json.dumps({"job": 9, "domain": DOMAIN, "messages": [
        {"sender": SENDER, "data": "not base64!", "recipients": [{"id": 5, "to": "b@x.test"}]},
    ]}).encode() + b"\n"

    answers, proc = run_sender(world.config(), line)

    assert proc.returncode == 0
    assert "error" in answers[0]
    assert (answers[1]["id"], answers[1]["status"], answers[1]["dsn"]) == (5, "deferred", "4.3.0")
    assert answers[2] == {"done": 9}  # nothing learned from a job it could not read


def test_unexpected_error_defers_the_job_and_the_child_goes_on(world):
    world.host(DOMAIN, 2)
    world.sink(2)
    broken = make_job(b"x\r\n", to=("bjørn", "bob"), job_id=1)  # smtplib refuses non-ASCII
    fine = make_job(b"x\r\n", job_id=2)

    answers, proc = run_sender(world.config(), broken, fine)

    assert proc.returncode == 0
    assert [(a.get("id"), a.get("status"), a.get("dsn")) for a in answers[:2]] == [
        (1, "deferred", "4.3.0"), (2, "deferred", "4.3.0")]
    assert "UnicodeEncodeError" in answers[0]["reply"]
    assert answers[2] == {"done": 1}  # a failed job teaches the runner nothing
    assert answers[3]["status"] == "sent"
    assert answers[4]["done"] == 2
    assert b"Traceback" in proc.stderr


def test_eof_exits_zero():
    for config in (None, SenderConfig()):
        answers, proc = run_sender(config)
        assert (answers, proc.returncode) == ([], 0)


def test_bad_config_line_exits_78():
    answers, proc = run_sender(None, b'{"config": {"no_such_setting": 1}}\n')
    assert proc.returncode == 78
    assert "error" in answers[0]


# --- in-process: resolver ------------------------------------------------------


def test_resolver_shuffles_equal_preferences_and_limits_hosts(world):
    world.records(DOMAIN, MX=["10 a.example.test.", "10 b.example.test.", "20 c.example.test.",
                              "30 d.example.test."])
    for number, host in enumerate("abcd", start=2):
        world.host(f"{host}.example.test", number)
    resolver = MxResolver(world.config(mx_limit=3))

    orders = {tuple(t.host for t in resolver.route(DOMAIN).targets) for _ in range(40)}

    assert orders == {("a.example.test", "b.example.test", "c.example.test"),
                      ("b.example.test", "a.example.test", "c.example.test")}


def test_resolver_uses_a_then_aaaa_and_skips_failing_hosts(world):
    world.records(DOMAIN, MX=["10 nowhere.example.test.", "20 mx.example.test.",
                              "30 v4only.example.test."])
    world.records("mx.example.test", A=[world.ip(2)], AAAA=["::1"])
    world.records("v4only.example.test", A=[world.ip(3)])
    world.dns.servfail.add("nowhere.example.test")

    targets = MxResolver(world.config()).route(DOMAIN).targets

    assert [(t.host, t.address) for t in targets] == [("mx.example.test", world.ip(2)),
                                                      ("mx.example.test", "::1"),
                                                      ("v4only.example.test", world.ip(3))]


def test_resolver_failures(world):
    resolver = MxResolver(world.config())
    world.records("noaddress.test", TXT=['"v=spf1 -all"'])
    world.records("badmx.test", MX=["10 nowhere.badmx.test."])
    world.records("halfbroken.test", MX=["10 sick.halfbroken.test."])
    world.dns.servfail.add("sick.halfbroken.test")

    for domain, error, dsn in [("noaddress.test", DnsPermanentError, "5.1.2"),
                               ("badmx.test", DnsPermanentError, "5.4.4"),
                               ("halfbroken.test", DnsTemporaryError, "4.4.3"),
                               ("bad..name.test", DnsPermanentError, "5.1.2")]:
        with pytest.raises(error) as caught:
            resolver.route(domain)
        assert caught.value.dsn == dsn, domain


# --- in-process: outcome policy and data encoding ---------------------------


@pytest.mark.parametrize("text, expected", [
    ("5.1.1 <bob@example.test>: no such user", "5.1.1"),
    ("4.7.0 greylisted", "4.7.0"),
    ("2.0.0 Ok: queued", "2.0.0"),
    ("5.01.010 padded", "5.1.10"),
    ("Ok: queued", None),
    ("3.1.1 not a class", None),
    ("5.1.1.1 too many parts", None),
    ("2.0.0. Ok, with a full stop", "2.0.0"),
    ("", None),
])
def test_parse_enhanced_status(text, expected):
    assert trouble.parse_enhanced_status(text) == expected


@pytest.mark.parametrize("code, text, expected", [
    (250, "2.0.0 Ok", ("sent", "2.0.0")),
    (250, "Ok", ("sent", "2.0.0")),
    (550, "5.7.1 Rejected by policy", ("bounced", "5.7.1")),
    (550, "No such user", ("bounced", "5.0.0")),
    (451, "Try later", ("deferred", "4.0.0")),
    (450, "5.1.1 class disagrees with the code", ("deferred", "4.1.1")),
    (354, "Go ahead", ("deferred", "4.5.0")),
    (-1, "garbage", ("deferred", "4.5.0")),
])
def test_outcome_for_reply(code, text, expected):
    assert trouble.outcome_for_reply(code, text) == expected


def test_outcome_for_refusal_and_session_replies():
    assert trouble.outcome_for_refusal(250, "Ok") == ("deferred", "4.5.0")  # 250 to DATA
    assert trouble.outcome_for_refusal(554, "5.6.0 No") == ("bounced", "5.6.0")
    assert trouble.outcome_for_session_reply(554, "5.7.1 Go away") == ("deferred", "4.7.1")
    assert trouble.outcome_for_session_reply(220, "ready") == ("sent", "2.0.0")


def test_crlf_lines_and_dot_stuffing():
    assert crlf_lines(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert crlf_lines(b"") == b""
    assert dot_stuff(b".a\r\nb.\r\n..c\r\n") == b"..a\r\nb.\r\n...c\r\n"
