"""Scriptable SMTP sinks on loopback: real aiosmtpd servers that behave as told.

NAME
    SinkPool, Sink, Behaviour - many SMTP servers in one event-loop thread

DESCRIPTION
    ``SinkPool`` runs one asyncio loop in a background thread and starts
    aiosmtpd ``SMTP`` servers on it, one per (address, port), so a demo or a
    benchmark can run dozens.  Each ``Sink`` follows its ``Behaviour``, which
    a test may replace while the sink runs: accept; 421 greeting; greylist
    (450 for each recipient's first N tries); a fixed reply to MAIL, RCPT or
    the final dot; a delay before each reply; dropping the connection after
    the data without answering; STARTTLS with a given certificate (an
    ssl.SSLContext, e.g. from fakenet.pki).  Sinks count what a test checks:
    messages received (with Message-ID and the TLS version they came over),
    connections in total, at once and at the peak, and RCPT attempts per
    address.
"""

from __future__ import annotations

import asyncio
import collections
import email.parser
import email.policy
import ssl
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Behaviour:
    greeting: str | None = None  # e.g. "421 4.3.2 Try later": say this and close
    tempfail_first: int = 0  # 450 at RCPT for each address's first N tries
    mail_reply: str | None = None
    rcpt_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # per address, over the above
    data_reply: str | None = None  # reply to the final dot instead of 250
    delay: float = 0.0  # seconds before each reply to MAIL, RCPT and the final dot
    drop_in_data: bool = False  # take the data, then close without a reply
    pipelining: bool = True  # advertise PIPELINING (RFC 2920), as real MX hosts do
    tls_context: ssl.SSLContext | None = None  # offer STARTTLS with this server context


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message_id: str | None
    peer: str
    at: float = field(default_factory=time.time)
    tls: str | None = None  # the TLS version of the session ("TLSv1.3"), None: plaintext


def _message_id(data: bytes) -> str | None:
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    value = headers.get("Message-ID")
    return value.strip() if value else None


def _tls_version(session: Session) -> str | None:
    if session.ssl is None:
        return None
    return session.ssl["ssl_object"].version()


class Sink:
    """One listening SMTP server and what it has seen."""

    def __init__(self, host: str, port: int, behaviour: Behaviour):
        self.host = host
        self.port = port
        self.behaviour = behaviour
        self.lock = threading.Lock()
        self.server: asyncio.base_events.Server | None = None
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.messages: list[Received] = []
            self.sessions = 0
            self.concurrent = 0
            self.max_concurrent = 0
            self.rcpt_attempts: collections.Counter[str] = collections.Counter()

    def message_ids(self) -> list[str | None]:
        with self.lock:
            return [m.message_id for m in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.host}: {len(self.messages)} of {count} messages")
            time.sleep(0.02)

    # -- aiosmtpd handler hooks -------------------------------------------

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.behaviour.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        behaviour = self.behaviour
        await asyncio.sleep(behaviour.delay)
        if behaviour.mail_reply:
            return behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        behaviour = self.behaviour
        await asyncio.sleep(behaviour.delay)
        with self.lock:
            self.rcpt_attempts[address] += 1
            tries = self.rcpt_attempts[address]
        reply = behaviour.rcpt_replies.get(address, behaviour.rcpt_reply)
        if reply:
            return reply
        if tries <= behaviour.tempfail_first:
            return "450 4.2.0 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        behaviour = self.behaviour
        await asyncio.sleep(behaviour.delay)
        if behaviour.drop_in_data:
            server.transport.close()
            return "250 2.0.0 unheard"
        if behaviour.data_reply:
            return behaviour.data_reply
        data = bytes(envelope.original_content or envelope.content or b"")
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), data,
                                          _message_id(data), str(session.peer),
                                          tls=_tls_version(session)))
        return f"250 2.0.0 Ok: queued as {len(self.messages)}"


class _CountingSMTP(SMTP):
    """aiosmtpd's server, plus connection counting and a scripted greeting."""

    def __init__(self, sink: Sink):
        super().__init__(sink, hostname=f"sink-{sink.host}", decode_data=False,
                         data_size_limit=50 * 1024 * 1024, enable_SMTPUTF8=True,
                         ident="spoold fakenet sink", tls_context=sink.behaviour.tls_context)
        self.sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        with self.sink.lock:
            self.sink.sessions += 1
            self.sink.concurrent += 1
            self.sink.max_concurrent = max(self.sink.max_concurrent, self.sink.concurrent)
        greeting = self.sink.behaviour.greeting
        if greeting:
            transport.write(greeting.encode() + b"\r\n")
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self.sink.lock:
            self.sink.concurrent -= 1
        if self._handler_coroutine is not None or self.transport is not None:
            super().connection_lost(error)


class SinkPool:
    """The event-loop thread all sinks run on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="fakenet-sinks")
        self.sinks: list[Sink] = []

    def start(self) -> SinkPool:
        self.thread.start()
        return self

    def add(self, host: str, port: int, behaviour: Behaviour | None = None) -> Sink:
        sink = Sink(host, port, behaviour or Behaviour())

        async def listen() -> asyncio.base_events.Server:
            return await self.loop.create_server(lambda: _CountingSMTP(sink), host, port,
                                                 reuse_address=True)

        sink.server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        self.sinks.append(sink)
        return sink

    def stop(self) -> None:
        async def close_all() -> None:
            for sink in self.sinks:
                sink.server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> SinkPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
