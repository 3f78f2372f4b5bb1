"""NAME
    sender - spoold delivery agent: one destination domain per job, over SMTP

SUMMARY
    python -m sender     (started by "spoold run"; not meant for people)

DESCRIPTION
    The queue runner has sender.zygote fork this child, with pipes on stdin
    and stdout, and speaks the line protocol of sender.protocol.  The first line on stdin is
    the configuration; every later line is a job: one destination domain,
    one or more messages, each with its recipients in that domain.

    A mailout's messages come as a template plus each recipient's fields;
    the child renders them first (sender.render: Jinja2, sandboxed), one
    message per recipient, and bounces (5.6.0) a copy that cannot be
    rendered.  Then it DKIM-signs the final bytes of each message whose
    From domain has a key (sender.signing), decides the destination's TLS
    policy (sender.tlspolicy: smtp.tls_policy, MTA-STS, smtp.tls), looks up
    the domain's MX hosts (sender.mx), then offers the messages to them in
    order over one SMTP connection per host (sender.client): EHLO, STARTTLS
    per that policy, then MAIL FROM,
    RCPT TO and DATA per message (pipelined where the server offers it),
    RSET only after a transaction left open.  The last clean connection
    stays open for connection_cache_time seconds, for the next job to the
    same endpoint, then QUIT (Postfix's connection cache).  It writes one
    result line per recipient as soon as its outcome is final -- sent,
    bounced, or deferred once every MX host has been tried -- and then
    {"done": <job>, ...} with the route it looked up and the endpoint of the
    connection it keeps (sender.protocol).  A job that brings its targets
    (a route an earlier job found, still fresh) needs no DNS lookup.  Every
    line is flushed at once: the runner records results as they come.
    What counts as sent, deferred or bounced is decided in one place,
    sender.trouble.

    The child holds no database connection and imports nothing of spoold:
    everything a job needs is on its line.  It serves jobs until EOF on
    stdin, then exits 0; after each job it also exits if its parent is gone
    (its parent process id changed).  It ignores SIGINT and SIGHUP, which
    are meant for the runner.  SIGTERM, which it also gets when its parent
    dies (PR_SET_PDEATHSIG), ends it at once, except between a final dot
    and the result lines for the reply: there it reads the reply first (for
    a few seconds at most), journals the results and exits before anything
    else (sender.lifeline).  The runner stops it with SIGKILL, and defers
    (4.3.0) any recipient it sent but got no result for.

DIAGNOSTICS
    Problems go to stderr, which the runner shares, and to stdout as
    protocol lines:

    - A config line that cannot be read: {"error": ...}, exit status 78.
    - A job line that cannot be read: {"error": ...}; if the line still
      shows a job id, every recipient id it shows is answered deferred
      (4.3.0), then {"done": <job>}.  The child keeps serving.
    - A From domain's DKIM key file that cannot be used: that message's
      recipients deferred with 4.3.5 and the file and reason (never the
      key); the rest of the job goes on.
    - An unexpected exception while delivering a job: its traceback on
      stderr, every recipient of the job not yet answered deferred with
      4.3.0 and the error text, then {"done": <job>}.  The child keeps
      serving.
    - The runner closed stdout: exit 0 at once.

CONFIGURATION
    The config line carries SenderConfig (sender.protocol), filled by the
    runner from the [smtp] and [dns] sections of spoold.toml:

    helo_name ("localhost"; empty: this host's fully qualified name)
        Name sent in EHLO/HELO.
    port (25)
        TCP port of every MX host.
    tls ("may")
        none: never STARTTLS.  may: STARTTLS when offered, certificate not
        verified; if the handshake fails, the same host again without TLS.
        encrypt: STARTTLS required, else the host is skipped (4.7.4/4.7.5).
        verify: as encrypt, and the certificate must chain to tls_ca_file
        (or the system's CAs) and name the MX host (else 4.7.5).
    tls_policy ({}), tls_ca_file ("")
        Levels per destination domain (".parent" for its subdomains) over
        tls and MTA-STS; the CA certificates verify trusts.
    mta_sts (false), mta_sts_cache_dir (""), mta_sts_port (443),
    mta_sts_timeout (10)
        MTA-STS (RFC 8461, sender.mtasts): enforce means verify, and MX
        hosts the policy does not name are skipped (4.7.0).
    dkim_domains ({}), dkim_headers ([])
        Per From domain a selector and key file; the header fields signed.
    mx_limit (5)
        Most MX hosts tried for one domain in one job.
    dns_nameservers ([]: those of /etc/resolv.conf), dns_port (53)
        Where MX, A and AAAA lookups go.
    dns_timeout (10)
        Total seconds allowed for one lookup.
    connect_timeout (30), greeting_timeout (300), helo_timeout (300),
    mail_timeout (300), rcpt_timeout (300), data_init_timeout (120),
    data_block_timeout (180), data_done_timeout (600), quit_timeout (300)
        Seconds allowed for each stage of the SMTP dialogue (RFC 5321
        4.5.3.2); helo_timeout also covers STARTTLS, quit_timeout RSET.
    connection_cache_time (2), connection_reuse_time (300)
        Seconds an idle connection is kept for the next job, and the age
        after which a connection is no longer reused.

SEE ALSO
    sender.protocol (the pipe protocol), sender.trouble (outcome policy),
    Postfix smtp(8), the model for this program.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import BinaryIO
from collections.abc import Callable

from sender import lifeline, protocol, trouble
from sender.protocol import Done, Job, ProtocolError, Result, SenderConfig

EX_CONFIG = 78


class _Output:
    """stdout as protocol lines, each flushed as soon as it is written."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.journal_fd = -1

    def line(self, data: bytes) -> None:
        try:
            self._stream.write(data)
            self._stream.flush()
        except BrokenPipeError:
            # The runner is gone.  Point stdout at /dev/null so that Python's
            # flush at exit does not complain about the pipe a second time.
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
            if not lifeline.stopping():  # else the journal still takes the results
                raise SystemExit(0) from None

    def result(self, result: Result) -> None:
        """A result line, first into the runner's journal if it gave one: should the
        runner die before reading the pipe, its next life still learns the outcome."""
        line = protocol.encode_result(result)
        if self.journal_fd >= 0:
            os.write(self.journal_fd, line)
        self.line(line)


def _deferred(recipient_id: int, text: str, dsn: str = trouble.AGENT_ERROR) -> Result:
    return Result(id=recipient_id, status=trouble.DEFERRED, code=None, dsn=dsn,
                  reply=text, relay="none", duration=0.0)


def _readable_ids(line: bytes) -> tuple[int | None, list[int]]:
    """The job id and recipient ids that a malformed job line still shows."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None, []
    if not isinstance(obj, dict) or not isinstance(obj.get("job"), int):
        return None, []
    ids = []
    messages = obj.get("messages")
    for message in messages if isinstance(messages, list) else []:
        recipients = message.get("recipients") if isinstance(message, dict) else None
        for recipient in recipients if isinstance(recipients, list) else []:
            if isinstance(recipient, dict) and isinstance(recipient.get("id"), int):
                ids.append(recipient["id"])
    return obj["job"], ids


class _Input:
    """stdin as lines, with a limit on each wait: kept connections close on time."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def readline(self, timeout: float | None) -> bytes | None:
        """The next line (what is left, then b"" at EOF); None if ``timeout`` passed first."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end + 1])
                del self._buffer[:end + 1]
                return line
            if not select.select([self._fd], [], [], timeout)[0]:
                return None
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            self._buffer += chunk


class _Child:
    """The job loop: one config, one resolver cache and one kept connection for every job."""

    def __init__(self, config: SenderConfig, output: _Output) -> None:
        self.config = config
        self.output = output
        self._resolver = None
        self._sessions = None
        self._policies = None
        self._signer = None

    def serve(self, line: bytes) -> None:
        """Answer one job line: results, then done (or an error line)."""
        try:
            job = protocol.decode_job(line)
        except ProtocolError as exc:
            self._refuse(line, str(exc))
            return
        self.output.line(protocol.encode_done(self._deliver(job)))

    def _refuse(self, line: bytes, reason: str) -> None:
        self.output.line(protocol.encode_error(reason))
        job_id, recipient_ids = _readable_ids(line)
        if job_id is None:
            return
        for recipient_id in recipient_ids:
            self.output.result(_deferred(recipient_id, f"malformed job line: {reason}"))
        self.output.line(protocol.encode_done(Done(job_id)))

    def _deliver(self, job: Job) -> Done:
        answered: set[int] = set()

        def emit(result: Result) -> None:
            answered.add(result.id)
            self.output.result(result)

        try:
            if job.mailings:
                job = self._render(job, emit)
            # Imported at the first job: dnspython and smtplib are most of the
            # child's start-up time, and a child told to stop needs neither.
            from sender import client, mx, tlspolicy

            if self._resolver is None:
                client.use_stage_deadlines()
                self._resolver = mx.MxResolver(self.config)
                self._sessions = client.SessionCache(self.config)
                self._policies = tlspolicy.Policies(self.config, self._resolver)
                if self.config.dkim_domains:
                    from sender import signing

                    self._signer = signing.Signer(self.config)
            if self._signer is not None:
                self._sign(job, emit)
            if not job.messages:
                return Done(job.job)
            return client.deliver(job, self.config, self._resolver, emit, self._sessions,
                                  self._policies.for_domain(job.domain))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            text = f"delivery agent error: {type(exc).__name__}: {exc}"
            for message in job.messages:
                for recipient in message.recipients:
                    if recipient.id not in answered:
                        answered.add(recipient.id)
                        self.output.result(_deferred(recipient.id, text))
            return Done(job.job)

    def _sign(self, job: Job, emit) -> None:
        """DKIM-sign the final bytes of each message; one whose key is
        unusable is deferred (4.3.5) and taken out of the job."""
        from sender.signing import KeyUnusable

        kept = []
        for message in job.messages:
            try:
                message.data = self._signer.sign(message.data)
            except KeyUnusable as exc:
                for recipient in message.recipients:
                    emit(_deferred(recipient.id, str(exc), trouble.DKIM_KEY_UNUSABLE))
                continue
            kept.append(message)
        job.messages = kept

    @staticmethod
    def _render(job: Job, emit: Callable[[Result], None]) -> Job:
        """Render the job's mailout messages; a copy that cannot be rendered bounces."""
        from sender import render

        job, failed = render.render_job(job)
        for recipient_id, reason in failed:
            emit(Result(id=recipient_id, status=trouble.BOUNCED, code=None,
                        dsn=render.RENDER_FAILED, reply=reason, relay="none", duration=0.0))
        return job

    def wait_limit(self) -> float | None:
        """How long to wait for the next job before the kept connection must close."""
        deadline = self._sessions.deadline() if self._sessions else None
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def close_expired(self) -> None:
        if self._sessions:
            self._sessions.expire()

    def close(self) -> None:
        if self._sessions:
            self._sessions.close()


def main(parent: int | None = None) -> int:
    """Serve jobs for ``parent`` (by default the parent process): die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parent = os.getppid() if parent is None else parent
    stdin = _Input(sys.stdin.fileno())
    output = _Output(sys.stdout.buffer)
    first = stdin.readline(None)
    if not first:
        return 0
    try:
        config = protocol.decode_config(first)
    except ProtocolError as exc:
        output.line(protocol.encode_error(str(exc)))
        return EX_CONFIG
    lifeline.arm(parent, journal=config.journal_fd >= 0)
    config.helo_name = config.helo_name or socket.getfqdn()
    output.journal_fd = config.journal_fd
    child = _Child(config, output)
    while True:
        line = stdin.readline(child.wait_limit())
        if line is None:
            child.close_expired()
            continue
        if not line:
            break
        child.serve(line)
        if os.getppid() != parent:
            break
    child.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
