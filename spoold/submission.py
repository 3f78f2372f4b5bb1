"""The SMTP submission listener: applications hand spoold whole messages over SMTP.

NAME
    spoold submission listener - enqueue mail submitted over SMTP

DESCRIPTION
    An aiosmtpd server, run by ``spoold run`` as a supervised child process
    (spoold/listeners.py) when ``[submission] listen_port`` is set.  Each
    message is enqueued exactly as ``spoold enqueue`` does (spoold.enqueue:
    the envelope sender and recipients, the message checked by
    spoold.message), one queue row per recipient, and the runner is poked.

    It listens on 127.0.0.1 by default.  On any other address, or with
    ``require_auth``, a client must AUTH (PLAIN or LOGIN, offered only after
    STARTTLS) before MAIL: ``530 5.7.0 Authentication required``.  So it is
    never an open relay.  Users are ``name:HASH`` entries of ``[submission]
    users``; ``spoold submission hash-password`` makes a HASH (Argon2id, as the
    web UI's users: spoold/passwords.py).
    Keeping them in the settings file (mode 0600) keeps the listener free of
    one more table and the web UI's accounts out of SMTP.

DIAGNOSTICS
    553 5.1.7 for a malformed sender, 553 5.1.3 for a malformed recipient;
    554 5.6.0 with spoold.message's reason for a malformed message (nothing
    queued); 451 4.3.0 when the database is unavailable (the client keeps
    the message: nothing is lost); 250 2.0.0 with the queue ids.  Events:
    submitted (ids, from, size), submission_refused, database_unavailable.

CONFIGURATION PARAMETERS
    [submission] listen_address (127.0.0.1), listen_port (0: off),
    require_auth (false), users ([]), tls_cert, tls_key, max_size (25 MiB).
"""

from __future__ import annotations

import asyncio
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from spoold import passwords
from spoold.address import parse_address
from spoold.config import Config, submission_needs_auth
from spoold.enqueue import enqueue
from spoold.errors import AddressError, ConfigError, MessageError, StoreError
from spoold.log import get_logger
from spoold.store import Store, store_for

class Users:
    """The aiosmtpd authenticator over ``[submission] users``."""

    def __init__(self, entries: list[str]):
        self.hashes = dict(entry.split(":", 1) for entry in entries)

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        name = auth_data.login.decode("utf-8", "replace")
        ok, _ = passwords.verify(self.hashes.get(name),
                                 auth_data.password.decode("utf-8", "replace"))
        return AuthResult(success=ok, handled=False, auth_data=name if ok else None)


class SubmissionHandler:
    """aiosmtpd handler; the store lives in one worker thread of its own."""

    def __init__(self, config: Config):
        self.config = config
        self.log = get_logger(listener="submission")
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="submission-store")
        self.store: Store | None = None

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        try:
            envelope.mail_from = parse_address(address)  # (aiosmtpd refuses a null one)
        except AddressError as exc:
            return f"553 5.1.7 {exc}"
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        try:
            envelope.rcpt_tos.append(parse_address(address))
        except AddressError as exc:
            return f"553 5.1.3 {exc}"
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = bytes(envelope.original_content or envelope.content or b"")
        loop = asyncio.get_running_loop()
        try:
            ids = await loop.run_in_executor(self.worker, self.take, envelope.mail_from or "",
                                             list(envelope.rcpt_tos), data)
        except (MessageError, AddressError) as exc:
            self.log.warning("submission_refused", error=str(exc), peer=str(session.peer))
            return f"554 5.6.0 {exc}"
        except StoreError as exc:
            self.log.error("database_unavailable", error=str(exc))
            return "451 4.3.0 Database unavailable, try again later"
        return f"250 2.0.0 Ok: queued as {' '.join(map(str, ids)) or 'nothing (suppressed)'}"

    def take(self, sender: str, recipients: list[str], data: bytes) -> list[int]:
        if self.store is None:
            self.store = store_for(self.config)
        try:
            result = enqueue(data, sender=sender, recipients=recipients, config=self.config,
                             store=self.store)
        except StoreError:
            self.store.close()
            self.store = None
            raise
        self.log.info("submitted", ids=result.ids, sender=sender or "<>", size=len(data),
                      suppressed=result.suppressed)
        return result.ids


def _tls_context(config: Config) -> ssl.SSLContext | None:
    settings = config.submission
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.base_dir / settings.tls_cert,
                                config.base_dir / settings.tls_key if settings.tls_key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"submission.tls_cert: {exc}") from None
    return context


def listener(config: Config) -> tuple[SubmissionHandler, dict[str, Any], str, int]:
    """The handler, SMTP options, address and port of the submission listener."""
    settings = config.submission
    required = submission_needs_auth(settings)  # then config.build made sure of TLS and users
    context = _tls_context(config)
    options: dict[str, Any] = {
        "data_size_limit": settings.max_size, "tls_context": context,
        "require_starttls": required, "auth_required": required, "auth_require_tls": True,
        "authenticator": Users(settings.users) if settings.users else None,
    }
    return SubmissionHandler(config), options, settings.listen_address, settings.listen_port
