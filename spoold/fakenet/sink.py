"""Scriptable SMTP sinks on loopback: real aiosmtpd servers that behave as told.

NAME
    SinkPool, Sink, Behaviour - many SMTP servers in one event-loop thread

DESCRIPTION
    ``SinkPool`` runs one asyncio loop in a background thread and starts
    aiosmtpd ``SMTP`` servers on it, one per (address, port), so a demo or a
    benchmark can run dozens.  Each ``Sink`` follows its ``Behaviour``, which
    a test may replace while the sink runs: accept; 421 greeting; greylist
    (450 for each recipient's first N tries); a fixed reply to MAIL, RCPT,
    DATA or the final dot (any text: a 4xx/5xx, garbage without a code, an
    over-long line); a delay before each reply; dropping the connection after
    the data without answering; STARTTLS with a given certificate (an
    ssl.SSLContext, e.g. from fakenet.pki).  Sinks count what a test checks:
    messages received (with Message-ID and the TLS version they came over),
    connections in total, at once and at the peak, and RCPT attempts per
    address.

FAULTS
    For the reliability tests and bench/chaos.py a Behaviour can also:

    drop_at       close the connection without a reply on "mail", "rcpt",
                  "data" (the DATA command) or "body" (after the 354 and the
                  first line of the message)
    drop_after_data  take the message (it counts as received) and close
                  without a reply to the final dot: the RFC 1047 case in
                  which the client cannot know and may send it again
    tarpit_at     at "greeting", "mail", "rcpt", "data" or "dot", answer with
                  an endless multi-line reply, one byte every tarpit_pace
                  seconds (each byte resets a per-read timeout)
    broken_starttls  offer STARTTLS, say 220, then answer the handshake with
                  bytes that are not TLS and close

    And a message can carry its own fault in a header, FAULT_HEADER
    ("X-Fakenet-Fault"), acted on at the final dot whatever the behaviour:
    "kill" sends SIGKILL to the client process on the other end of the
    connection (a delivery agent that crashes on one message every time),
    "stop" sends it SIGSTOP (one that hangs), "hang" never answers.  Only
    tests put that header in a message; spoold knows nothing of it.
"""

from __future__ import annotations

import asyncio
import collections
import email.parser
import email.policy
import itertools
import os
import signal
import ssl
import threading
import time
from dataclasses import dataclass, field

import psutil
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

FAULT_HEADER = "X-Fakenet-Fault"
_PEER_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
_TARPIT_LINE = b"250-tarpit: this reply never ends\r\n"


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
    # Faults (see FAULTS above).
    data_command_reply: str | None = None  # reply to the DATA command instead of 354
    drop_at: str | None = None  # mail | rcpt | data | body
    drop_after_data: bool = False  # keep the message, close without a reply to the dot
    tarpit_at: str | None = None  # greeting | mail | rcpt | data | dot
    tarpit_pace: float = 1.0  # seconds between two bytes of a tarpit reply
    broken_starttls: bool = False


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message_id: str | None
    peer: str
    at: float = field(default_factory=time.time)
    tls: str | None = None  # the TLS version of the session ("TLSv1.3"), None: plaintext


def _headers(data: bytes) -> email.message.Message:
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)


def _message_id(data: bytes) -> str | None:
    value = _headers(data).get("Message-ID")
    return value.strip() if value else None


def _tls_version(session: Session) -> str | None:
    if session.ssl is None:
        return None
    return session.ssl["ssl_object"].version()


async def _tarpit(server: SMTP) -> None:
    """Dribble an endless reply, one byte at a time, until the client goes away."""
    for byte in itertools.cycle(_TARPIT_LINE):
        transport = server.transport
        if transport is None or transport.is_closing():
            return
        transport.write(bytes([byte]))
        await asyncio.sleep(server.sink.behaviour.tarpit_pace)


def _client_pid(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The process on the other end of a loopback connection (we run as its host)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.raddr and tuple(conn.laddr) == tuple(peer) \
                and tuple(conn.raddr) == tuple(local):
            return conn.pid
    return None


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
        if self.behaviour.broken_starttls:
            responses.insert(len(responses) - 1, "250-STARTTLS")
        return responses

    async def _fault(self, server: SMTP, stage: str) -> bool:
        """Apply a drop or tarpit fault set for ``stage``; True if the reply is taken over."""
        behaviour = self.behaviour
        if behaviour.drop_at == stage:
            server.transport.close()
            return True
        if behaviour.tarpit_at == stage:
            await _tarpit(server)
            return True
        return False

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        behaviour = self.behaviour
        await asyncio.sleep(behaviour.delay)
        if await self._fault(server, "mail"):
            return "250 2.1.0 unheard"
        if behaviour.mail_reply:
            return behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        behaviour = self.behaviour
        await asyncio.sleep(behaviour.delay)
        if await self._fault(server, "rcpt"):
            return "250 2.1.5 unheard"
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
        data = bytes(envelope.original_content or envelope.content or b"")
        await self._message_fault(server, session, data)
        if behaviour.drop_in_data or await self._fault(server, "dot"):
            server.transport.close()
            return "250 2.0.0 unheard"
        if behaviour.data_reply:
            return behaviour.data_reply
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), data,
                                          _message_id(data), str(session.peer),
                                          tls=_tls_version(session)))
            queued = len(self.messages)
        if behaviour.drop_after_data:
            server.transport.close()
        return f"250 2.0.0 Ok: queued as {queued}"

    async def _message_fault(self, server: SMTP, session: Session, data: bytes) -> None:
        """Act on the message's own FAULT_HEADER: return only if it names none."""
        fault = (_headers(data).get(FAULT_HEADER) or "").strip().lower()
        if fault in _PEER_SIGNALS:
            local = server.transport.get_extra_info("sockname")
            pid = await asyncio.to_thread(_client_pid, session.peer, local)
            if pid is not None and pid != os.getpid():
                os.kill(pid, _PEER_SIGNALS[fault])
        if fault in ("kill", "stop", "hang"):
            await asyncio.Event().wait()  # never answer; the client goes first


class _CountingSMTP(SMTP):
    """aiosmtpd's server, plus connection counting and a scripted greeting."""

    def __init__(self, sink: Sink):
        super().__init__(sink, hostname=f"sink-{sink.host}", decode_data=False,
                         data_size_limit=50 * 1024 * 1024, enable_SMTPUTF8=True,
                         ident="spoold fakenet sink", tls_context=sink.behaviour.tls_context)
        self.sink = sink
        self.greeting_tarpit: asyncio.Task[None] | None = None

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
        if self.sink.behaviour.tarpit_at == "greeting":
            self.transport = transport
            self.greeting_tarpit = self.loop.create_task(_tarpit(self))
            return
        super().connection_made(transport)

    async def smtp_DATA(self, arg: str) -> None:
        behaviour = self.sink.behaviour
        if self.envelope is None or not self.envelope.rcpt_tos:
            await super().smtp_DATA(arg)  # aiosmtpd's own refusal
        elif await self.sink._fault(self, "data"):
            return
        elif behaviour.data_command_reply:
            await self.push(behaviour.data_command_reply)
        elif behaviour.drop_at == "body":
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")
            self.transport.close()
        else:
            await super().smtp_DATA(arg)

    @syntax("STARTTLS")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if not self.sink.behaviour.broken_starttls:
            await super().smtp_STARTTLS(arg)  # aiosmtpd's own: TLS with tls_context, or 454
            return
        await self.push("220 2.0.0 Ready to start TLS")
        self.transport.write(b"this is not a TLS handshake\r\n")
        self.transport.close()

    def eof_received(self) -> bool | None:
        if self.greeting_tarpit is not None:
            self.greeting_tarpit.cancel()
            return False
        return super().eof_received()

    def connection_lost(self, error: Exception | None) -> None:
        with self.sink.lock:
            self.sink.concurrent -= 1
        if self.greeting_tarpit is not None:
            self.greeting_tarpit.cancel()  # aiosmtpd's own session never started
            return
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
