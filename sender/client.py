"""SMTP client of the sender child: deliver one job, one connection per MX host.

deliver() is a job's whole delivery.  It takes the targets the job brings,
or asks sender.mx for them, and walks them in order, opening one
connection to each and reusing it for every message of the job (RSET only
after a transaction left open).  A clean connection outlives the job in the
child's SessionCache for a moment, so that the next job to the same
endpoint -- the same domain, or another whose MX of first preference has
that address -- skips connect, greeting and EHLO (Postfix's connection
cache, which also reuses by endpoint); a cached connection the server has
dropped meanwhile is replaced before any recipient is touched.  A recipient ends as soon as a
server gives a final answer -- 2xx sent, 5xx bounced -- and its result is
emitted at once; a 4xx or a network failure leaves it pending for the next
MX host, and whatever is still pending when the hosts run out is deferred
with the last reply it got (Postfix smtp(8)).  What a reply or a failure
means is sender.trouble's business; this module talks SMTP and keeps books.
STARTTLS happens at the level of the job's TlsPolicy (sender.tlspolicy); a
kept connection serves only jobs whose level it satisfies, and every result
carries the TLS version and cipher of the session that gave it.

Session is smtplib.SMTP with a timeout per stage of the dialogue (RFC 5321
section 4.5.3.2), a connect timeout apart from the greeting timeout, and
every network failure turned into a HostFailure that says at which stage the
host was lost.  A stage's timeout bounds the whole stage, not each read: a
socket timeout alone restarts with every byte, so a tarpit answering one
byte a second would hold the child until the runner killed it as hung
(Postfix's smtp_per_request_deadline); an interval timer ends the stage.
"""

from __future__ import annotations

import contextlib
import re
import signal
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sender import lifeline, trouble
from sender.mx import DnsError, MxResolver
from sender.protocol import Done, Job, Message, Recipient, Result, SenderConfig, Target
from sender.tlspolicy import ENCRYPTED, PLAINTEXT, REQUIRES, VERIFIED, TlsPolicy, context_for

# Data is sent in pieces so that data_block_timeout bounds each TCP send, not
# the whole message (RFC 5321 4.5.3.2.5; sendall's timeout covers the total).
_CHUNK = 64 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)

Outcome = Callable[[int, str], tuple[str, str]]  # a reply judge from sender.trouble


def crlf_lines(data: bytes) -> bytes:
    """``data`` with every line end CRLF, ending in CRLF.

    Bare LF and bare CR become CRLF too: sending nothing but CRLF keeps a
    message from smuggling an end of data past a lenient server.
    """
    text = _LINE_END.sub(b"\r\n", data)
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text


def dot_stuff(text: bytes) -> bytes:
    """CRLF ``text`` with a leading "." doubled on every line (RFC 5321 4.5.2)."""
    return _LEADING_DOT.sub(b"..", text)


@dataclass
class Reply:
    """What a server said at one host, or what went wrong instead."""

    dsn: str
    text: str
    relay: str
    code: int | None = None
    tls: str = "none"  # the session's protocol version, when it had TLS
    cipher: str = "none"

    @property
    def status(self) -> str:
        return trouble.status_for_dsn(self.dsn)

    @property
    def accepted(self) -> bool:
        return self.status == trouble.SENT


class HostFailure(Exception):
    """The session with this host is over; ``reply`` is the reason."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class _TlsFallback(Exception):
    """The STARTTLS handshake failed where TLS is optional: reconnect without it."""


@dataclass
class _Outgoing:
    """One message of the job in its wire form, and its recipients not yet answered."""

    message: Message
    pending: list[Recipient] = field(init=False)
    body: bytes = field(init=False)
    size: int = field(init=False)
    eight_bit: bool = field(init=False)

    def __post_init__(self) -> None:
        self.pending = list(self.message.recipients)
        text = crlf_lines(self.message.data)
        self.size = len(text)  # RFC 1870 counts CRLF line ends, not dot-stuffing
        self.body = dot_stuff(text)
        self.eight_bit = not self.message.data.isascii()


class _Ledger:
    """The job's recipients: who is still pending, and the last failure each met."""

    def __init__(self, job: Job, emit: Callable[[Result], None]) -> None:
        self.outgoing = [_Outgoing(message) for message in job.messages]
        self._emit = emit
        self._started = time.monotonic()
        self._last: dict[int, Reply] = {}
        self.tls_policy = ""  # the policy of the host being tried, as the log shows it

    def has_pending(self) -> bool:
        return any(out.pending for out in self.outgoing)

    def record(self, out: _Outgoing, recipients: list[Recipient], reply: Reply) -> None:
        """A final reply ends the recipients now; a temporary one waits for the next host."""
        if reply.status == trouble.DEFERRED:
            self._last.update((recipient.id, reply) for recipient in recipients)
        else:
            self.end(out, recipients, reply)

    def end(self, out: _Outgoing, recipients: list[Recipient], reply: Reply) -> None:
        """Emit the recipients' results with ``reply``, whatever its status."""
        for recipient in recipients:
            out.pending.remove(recipient)
            self._emit(Result(
                id=recipient.id, status=reply.status, code=reply.code, dsn=reply.dsn,
                reply=reply.text, relay=reply.relay,
                duration=round(time.monotonic() - self._started, 3),
                tls=reply.tls, cipher=reply.cipher, tls_policy=self.tls_policy,
            ))

    def host_failed(self, outgoing: list[_Outgoing], reply: Reply) -> None:
        for out in outgoing:
            self.record(out, list(out.pending), reply)

    def give_up(self) -> None:
        """Defer everyone still pending with the last reply they got."""
        for out in self.outgoing:
            for recipient in list(out.pending):
                self.end(out, [recipient], self._last[recipient.id])


class SessionCache:
    """The one connection a child keeps open between jobs, and when it must close.

    Jobs for a destination go to a child that served it, or its endpoint,
    last (the runner's choice), so one kept connection is what they can
    use; it is closed once idle for ``connection_cache_time`` or older than
    ``connection_reuse_time``, and as soon as the child works for another
    endpoint, so that a destination never holds more connections than the
    runner lets children work for it at once (destination_concurrency).
    """

    def __init__(self, config: SenderConfig) -> None:
        self.config = config
        self._session: Session | None = None
        self._idle_since = 0.0

    def prefer(self, targets: list[Target]) -> list[Target]:
        """``targets`` with the kept connection's endpoint first, where MX order allows.

        Only among the targets of the best preference: a kept connection to
        a backup MX must not jump the queue (RFC 5321 5.1).
        """
        self.expire()
        if self._session is None or not targets:
            return targets
        address = self._session.target.address
        best = targets[0].preference
        for index, target in enumerate(targets):
            if target.preference != best:
                break
            if target.address == address:
                return [target, *targets[:index], *targets[index + 1:]]
        return targets

    def take(self, target: Target, level: str = "none") -> Session | None:
        """The kept connection if it goes to ``target``'s endpoint with the TLS
        ``level`` asks for; any other is closed.

        A verified certificate names one host: under ``verify`` the kept
        connection must also have been opened to ``target``'s host name.
        """
        self.expire()
        session, self._session = self._session, None
        if session is not None and (session.target.address != target.address
                                    or session.security < REQUIRES[level]
                                    or (level == "verify" and session.target.host != target.host)):
            session.goodbye()
            return None
        return session

    def endpoint(self) -> str | None:
        """"address:port" of the kept connection, if there is one."""
        if self._session is None:
            return None
        return f"{self._session.target.address}:{self._session.config.port}"

    def keep(self, session: Session) -> None:
        if self.config.connection_cache_time <= 0:
            session.goodbye()
            return
        self.close()
        self._session, self._idle_since = session, time.monotonic()

    def deadline(self) -> float | None:
        """When the kept connection must be closed (monotonic), if one is kept."""
        if self._session is None:
            return None
        return min(self._idle_since + self.config.connection_cache_time,
                   self._session.opened_at + self.config.connection_reuse_time)

    def expire(self) -> None:
        deadline = self.deadline()
        if deadline is not None and time.monotonic() >= deadline:
            self.close()

    def close(self) -> None:
        if self._session is not None:
            self._session.goodbye()
            self._session = None


def deliver(job: Job, config: SenderConfig, resolver: MxResolver,
            emit: Callable[[Result], None], cache: SessionCache,
            policy: TlsPolicy | None = None) -> Done:
    """Deliver every message of ``job``, calling ``emit`` once per recipient.

    Results come as soon as they are final; deferrals come last, once every
    MX host has been tried.  ``duration`` is the time from the start of the
    job (DNS lookup included) to the recipient's outcome.  ``policy`` is the
    destination's TLS policy (sender.tlspolicy), smtp.tls when not given;
    an MX host it does not allow (MTA-STS enforce) is skipped like a host
    that refused the mail for now (4.7.0).  The returned Done carries the
    route if this job looked it up, and the kept endpoint.
    """
    policy = policy or TlsPolicy(config.tls, "smtp.tls")
    ledger = _Ledger(job, emit)
    done = Done(job.job)
    targets = job.targets
    if not targets:
        try:
            route = resolver.route(job.domain)
        except DnsError as exc:
            targets = []
            ledger.host_failed(ledger.outgoing, Reply(exc.dsn, exc.text, relay="none"))
        else:
            targets, done.targets, done.ttl = route.targets, route.targets, route.ttl
    for target in cache.prefer(targets):
        if not ledger.has_pending():
            break
        ledger.tls_policy = policy.describe(target.host)
        if not policy.allows(target.host):
            ledger.host_failed(ledger.outgoing, Reply(
                trouble.MTA_STS_MX_MISMATCH,
                f"MX host {target.host} does not match the MTA-STS policy of {job.domain}",
                f"{target.host}[{target.address}]:{config.port}"))
            continue
        _try_host(target, config, ledger, cache, policy.level)
    ledger.give_up()
    done.kept = cache.endpoint()
    return done


def _try_host(target: Target, config: SenderConfig, ledger: _Ledger,
              cache: SessionCache, level: str) -> None:
    """Offer every pending message to one host over one connection, kept or new."""
    kept = cache.take(target, level)
    if kept is not None and _offer(kept, ledger, cache, reused=True):
        return
    try:
        session = _open_session(target, config, level)
    except HostFailure as exc:
        ledger.host_failed([out for out in ledger.outgoing if out.pending], exc.reply)
        return
    _offer(session, ledger, cache, reused=False)


def _offer(session: Session, ledger: _Ledger, cache: SessionCache, reused: bool) -> bool:
    """Send the pending messages over ``session``; keep it in ``cache`` if left clean.

    Returns False, having recorded nothing, when a ``reused`` connection
    turns out dead before the server answered anything: the server closed
    it while it was kept, which says nothing about the host or the mail.
    """
    todo = [out for out in ledger.outgoing if out.pending]
    answers = session.answers
    unfinished = False
    for index, out in enumerate(todo):
        try:
            if unfinished:
                session.reset()
            unfinished = _transfer(session, out, ledger)
        except HostFailure as exc:
            session.goodbye()
            if reused and session.answers == answers:
                return False
            ledger.host_failed(todo[index:], exc.reply)
            return True
    if unfinished:
        session.goodbye()
    else:
        cache.keep(session)
    return True


def _open_session(target: Target, config: SenderConfig, level: str) -> Session:
    try:
        return Session.open(target, config, level)
    except _TlsFallback:
        return Session.open(target, config, "none")


def _transfer(session: Session, out: _Outgoing, ledger: _Ledger) -> bool:
    """One mail transaction: MAIL FROM, RCPT TO per pending recipient, DATA.

    Returns whether the transaction was left open (MAIL accepted, no final
    dot), the only case that needs an RSET before the next one: the reply to
    the dot ends a transaction by itself (RFC 5321 4.1.4), so a clean run of
    messages costs no RSET round trip.
    """
    config = session.config
    limit = session.size_limit()
    if limit and out.size > limit:
        ledger.end(out, list(out.pending), Reply(
            trouble.MESSAGE_TOO_BIG,
            f"message size {out.size} exceeds size limit {limit} of server {session.relay}",
            session.relay))
        return False
    if session.has_extn("pipelining"):
        mail, rcpts, data = session.pipelined_envelope(out)
    else:
        mail, rcpts, data = session.envelope(out)
    if not mail.accepted:
        ledger.record(out, list(out.pending), mail)
        return True
    accepted = []
    for recipient, reply in zip(list(out.pending), rcpts):
        if reply.accepted:
            accepted.append(recipient)
        else:
            ledger.record(out, [recipient], reply)
    if data is None or data.code != 354:
        if data is not None:
            ledger.record(out, accepted, data)
        return True
    if not accepted:
        # A server that said 354 though it took no recipient: end the empty
        # transaction with a bare dot rather than send the message to nobody.
        session.command("ending an empty transaction", config.data_done_timeout, session.end_data)
        return False
    session.send_body(out.body)
    with lifeline.final_dot():  # a child told to stop now still reads the reply
        try:
            reply = session.command("sending end of data -- message may be sent more than once",
                                    config.data_done_timeout, session.end_data)
        except HostFailure as exc:
            if exc.reply.code is None:
                # No reply to the final dot: the server may have taken the message
                # (RFC 1047), so it is deferred now rather than offered to the next
                # host in the same breath.
                ledger.end(out, accepted, exc.reply)
            raise
        ledger.record(out, accepted, reply)
    return False


def _one_line(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").replace("\n", " ")


def _stage_over(signum: int, frame: Any) -> None:
    raise TimeoutError("stage deadline passed")


def use_stage_deadlines() -> None:
    """Let each stage's timeout be a deadline (SIGALRM): for the sender child only.

    The child is single-threaded and has no other use for SIGALRM; a process
    that merely imports this module (a test, a tool) keeps its own handler,
    and its stages are bounded by the socket timeout alone.
    """
    global _deadlines
    signal.signal(signal.SIGALRM, _stage_over)
    _deadlines = True


def _arm_deadline(seconds: float) -> bool:
    """Raise TimeoutError in whatever the stage blocks on once ``seconds`` have passed.

    Returns whether a timer was set, for the caller to clear it
    (``signal.setitimer`` with 0) when the stage is over.
    """
    if _deadlines:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    return _deadlines


_deadlines = False  # see use_stage_deadlines


def _timed_out(exc: OSError) -> bool:
    # smtplib re-raises a read timeout as SMTPServerDisconnected inside its
    # except clause, so the timeout survives as the context.
    return isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)


class Session(smtplib.SMTP):
    """An SMTP session with one MX address, past EHLO (and STARTTLS) once open."""

    def __init__(self, target: Target, config: SenderConfig) -> None:
        super().__init__(local_hostname=config.helo_name, timeout=config.connect_timeout)
        self._host = target.host  # smtplib sends it as the TLS server name (SNI)
        self.target = target
        self.config = config
        self.relay = f"{target.host}[{target.address}]:{config.port}"
        self.opened_at = time.monotonic()
        self.answers = 0  # replies other than 421: proof that the connection is alive
        self.security = PLAINTEXT  # or ENCRYPTED, VERIFIED once STARTTLS succeeded
        self.tls = self.cipher = "none"

    @classmethod
    def open(cls, target: Target, config: SenderConfig, tls: str) -> Session:
        """Connect, read the greeting, EHLO, and STARTTLS as ``tls`` (a level
        of sender.tlspolicy) says.

        :raises HostFailure: the host cannot be used.
        :raises _TlsFallback: with ``tls`` "may", the TLS handshake failed.
        """
        session = cls(target, config)
        try:
            session._greet()
            session._hello()
            if tls != "none":
                session._secure(tls)
        except HostFailure:
            session.goodbye()
            raise
        return session

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        try:
            sock = super()._get_socket(host, port, timeout)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if isinstance(exc, TimeoutError):
                reason = "Connection timed out"
            raise HostFailure(Reply(
                trouble.CONNECT_FAILED, f"connect to {self.relay}: {reason}", self.relay)) from exc
        # Every write is a whole command group or message block already, so
        # Nagle's algorithm only holds back the small ones (the final dot,
        # a pipelined envelope) for the server's delayed ACK: 40 ms a message.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.config.greeting_timeout)
        return sock

    def _greet(self) -> None:
        reply = self.command("receiving the initial server greeting", self.config.greeting_timeout,
                             self.connect, self.target.address, self.config.port,
                             outcome=trouble.outcome_for_session_reply)
        if not reply.accepted:
            raise HostFailure(reply)

    def _hello(self) -> None:
        timeout = self.config.helo_timeout
        reply = self.command("performing the EHLO handshake", timeout, self.ehlo)
        if reply.status == trouble.BOUNCED:
            reply = self.command("performing the HELO handshake", timeout, self.helo)
        if not reply.accepted:
            raise HostFailure(reply)

    def _secure(self, level: str) -> None:
        """STARTTLS and EHLO again; at level "may", failing is no failure."""
        required = REQUIRES[level] > PLAINTEXT
        if not self.has_extn("starttls"):
            if required:
                raise HostFailure(Reply(
                    trouble.TLS_UNAVAILABLE,
                    f"TLS is required, but was not offered by host {self.relay}", self.relay))
            return
        self.sock.settimeout(self.config.helo_timeout)
        try:
            self.starttls(context=context_for(level, self.config.tls_ca_file))
        except smtplib.SMTPResponseException as exc:
            if required:
                raise HostFailure(Reply(
                    trouble.TLS_UNAVAILABLE,
                    f"TLS is required, but host {self.relay} refused to start TLS: "
                    f"{exc.smtp_code} {_one_line(exc.smtp_error)}",
                    self.relay, exc.smtp_code)) from exc
            return  # opportunistic: carry on in plaintext on this connection
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise HostFailure(Reply(
                trouble.TLS_FAILED,
                f"Server certificate not verified: {self.relay}: {exc.verify_message}",
                self.relay)) from exc
        except OSError as exc:
            self.close()
            if required:
                raise HostFailure(Reply(trouble.TLS_FAILED,
                                        f"Cannot start TLS with {self.relay}: {exc}",
                                        self.relay)) from exc
            raise _TlsFallback(str(exc)) from exc
        self.security = VERIFIED if level == "verify" else ENCRYPTED
        self.tls, self.cipher = self.sock.version() or "none", self.sock.cipher()[0]
        self._hello()

    def command(self, stage: str, timeout: float, call: Callable[..., tuple[int, bytes]],
                *args: Any, outcome: Outcome = trouble.outcome_for_reply) -> Reply:
        """Run one command of the dialogue under its timeout and judge its reply.

        :raises HostFailure: as _talk, or the server answered 421 (RFC 5321
            3.8: it is closing the session).
        """
        code, raw = self._talk(stage, timeout, call, *args)
        if code > 0 and code != 421:
            self.answers += 1
        text = _one_line(raw)
        _, dsn = outcome(code, text)
        if code > 0:
            reply = Reply(dsn, f"{code} {text}", self.relay, code, self.tls, self.cipher)
        else:
            reply = Reply(dsn, f"malformed reply from {self.relay}: {text}", self.relay,
                          None, self.tls, self.cipher)
        if code == 421:
            raise HostFailure(reply)
        return reply

    def _talk(self, stage: str, timeout: float, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` within ``timeout`` seconds for the whole of ``stage``.

        :raises HostFailure: the connection broke or timed out during
            ``stage`` (Postfix wording: "lost connection with H[A] while
            <stage>").
        """
        if self.sock is not None:
            self.sock.settimeout(timeout)
        armed = _arm_deadline(timeout)
        try:
            return call(*args)
        except OSError as exc:  # smtplib.SMTPException is an OSError
            self.close()
            raise HostFailure(self._broken(stage, exc)) from exc
        finally:
            if armed:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def _broken(self, stage: str, exc: OSError) -> Reply:
        peer = f"{self.target.host}[{self.target.address}]"
        if _timed_out(exc):
            text = f"conversation with {peer} timed out while {stage}"
        else:
            text = f"lost connection with {peer} while {stage}"
        return Reply(trouble.CONNECTION_LOST, text, self.relay, None, self.tls, self.cipher)

    def size_limit(self) -> int:
        """The server's SIZE limit; 0 for none ("SIZE" or "SIZE 0", RFC 1870)."""
        value = self.esmtp_features.get("size", "")
        return int(value) if value.isdigit() else 0

    def mail_options(self, out: _Outgoing) -> list[str]:
        options = []
        if self.has_extn("size"):
            options.append(f"SIZE={out.size}")
        if out.eight_bit and self.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        return options

    def envelope(self, out: _Outgoing) -> tuple[Reply, list[Reply], Reply | None]:
        """MAIL, RCPT per pending recipient and DATA, one round trip each.

        Stops early as a server would have it: no RCPT after a refused MAIL,
        no DATA when no recipient was accepted (then ``data`` is None).
        """
        config = self.config
        mail = self.command("sending MAIL FROM", config.mail_timeout, self.mail,
                            out.message.sender, self.mail_options(out))
        if not mail.accepted:
            return mail, [], None
        rcpts = [self.command("sending RCPT TO", config.rcpt_timeout, self.rcpt, r.to)
                 for r in out.pending]
        if not any(r.accepted for r in rcpts):
            return mail, rcpts, None
        data = self.command("sending DATA command", config.data_init_timeout, self.docmd,
                            "DATA", outcome=trouble.outcome_for_refusal)
        return mail, rcpts, data

    def pipelined_envelope(self, out: _Outgoing) -> tuple[Reply, list[Reply], Reply | None]:
        """MAIL, every RCPT and DATA in one write, then their replies (RFC 2920).

        One round trip instead of two plus one per recipient: what decides
        throughput to a distant MX.  The server answers every command in
        order; DATA is refused by the server itself when nothing was accepted.
        """
        config = self.config
        # <address> as smtplib.quoteaddr writes it, without its parse: the
        # addresses were checked when they were queued (spoold.address).
        commands = ["MAIL FROM:<" + out.message.sender + ">"
                    + "".join(" " + option for option in self.mail_options(out))]
        commands += ["RCPT TO:<" + r.to + ">" for r in out.pending]
        commands.append("DATA")
        wire = "".join(f"{command}\r\n" for command in commands)
        if any(c in command for command in commands for c in "\r\n\0"):
            raise ValueError("line break or NUL in an envelope address")
        self._talk("sending MAIL FROM", config.mail_timeout, self.send, wire.encode("ascii"))
        mail = self.command("sending MAIL FROM", config.mail_timeout, self.getreply)
        rcpts = [self.command("sending RCPT TO", config.rcpt_timeout, self.getreply)
                 for _ in out.pending]
        data = self.command("sending DATA command", config.data_init_timeout, self.getreply,
                            outcome=trouble.outcome_for_refusal)
        return mail, rcpts, data

    def send_body(self, body: bytes) -> None:
        for start in range(0, len(body), _CHUNK):
            self._talk("sending message body", self.config.data_block_timeout,
                       self.send, body[start:start + _CHUNK])

    def end_data(self) -> tuple[int, bytes]:
        self.send(b".\r\n")
        return self.getreply()

    def reset(self) -> None:
        """RSET between two messages; a refusal ends the session, not the mail."""
        reply = self.command("sending RSET", self.config.quit_timeout, self.rset,
                             outcome=trouble.outcome_for_session_reply)
        if not reply.accepted:
            raise HostFailure(reply)

    def goodbye(self) -> None:
        """QUIT if the connection is still up; nothing depends on the answer."""
        if self.sock is not None:
            self.sock.settimeout(self.config.quit_timeout)
            with contextlib.suppress(OSError):
                self.quit()
        self.close()
