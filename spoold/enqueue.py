"""Putting mail into the queue: the one path used by the CLI, the API and SMTP.

``enqueue()`` checks every address first (AddressError names the bad one and
nothing is stored), checks or composes the message, skips suppressed
recipients (reported in the result), stores the message and one queue row per
recipient in a single transaction, then pokes the runner so an idle daemon
sends within a second.  Applications call it as ``spoold.enqueue(...)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Sequence

from spoold import config as config_mod
from spoold.address import domain_of, parse_address, parse_sender
from spoold.config import Config
from spoold.errors import AddressError, MessageError
from spoold.message import (compose_message, header_recipients, header_sender,
                            prepare_message, strip_bcc)
from spoold.poke import poke
from spoold.store import PRIORITIES, Store, store_for


@dataclass
class EnqueueResult:
    ids: list[int] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)


def _recipients(addresses: Sequence[str]) -> list[str]:
    if not addresses:
        raise AddressError("no recipients")
    unique: dict[str, str] = {}
    for address in addresses:
        normal = parse_address(address)
        unique.setdefault(normal.lower(), normal)
    return list(unique.values())


def _build_message(message: bytes | None, sender: str, recipients: list[str],
                   subject: str | None, body: str | None, domain: str) -> bytes:
    if message is not None:
        if subject is not None or body is not None:
            raise MessageError("give either a whole message or a subject and body, not both")
        return strip_bcc(prepare_message(message, domain))
    if subject is None and body is None:
        raise MessageError("no message: give a whole message or --subject/--body")
    return compose_message(sender, recipients, subject or "", body or "", domain)


def enqueue(message: bytes | None = None, *, sender: str | None = None,
            recipients: Sequence[str] | None = None, subject: str | None = None,
            body: str | None = None, priority: str = "normal", expires_at: float | None = None,
            not_before: float | None = None, config: Config | None = None,
            store: Store | None = None) -> EnqueueResult:
    """Queue one message for each recipient; returns the new queue ids.

    ``message`` is a whole RFC 5322 message; without it, ``subject`` and
    ``body`` make a plain-text one.  Without ``recipients`` they are read from
    the To/Cc/Bcc headers (sendmail -t); without ``sender``, from From.
    """
    config = config or config_mod.load()
    if priority not in PRIORITIES:
        raise MessageError(f"priority {priority!r}: use one of {', '.join(PRIORITIES)}")
    if recipients is None:
        if message is None:
            raise AddressError("no recipients")
        recipients = header_recipients(message)
    wanted = _recipients(recipients)
    if sender is None:
        sender = header_sender(message) if message is not None else None
        if sender is None:
            raise AddressError("no envelope sender: give one, or a From header")
    sender = parse_sender(sender)
    domain = domain_of(sender) if sender else config.helo_name
    data = _build_message(message, sender, wanted, subject, body, domain)
    owned = store is None
    store = store or store_for(config)
    try:
        limit = time.time() + config.runner.max_lifetime
        ids, skipped = store.enqueue(sender, data, [(r, domain_of(r)) for r in wanted],
                                     PRIORITIES[priority],
                                     min(limit, expires_at) if expires_at else limit, not_before)
        result = EnqueueResult(ids=ids, queued=[r for r in wanted if r not in skipped],
                               suppressed=[r for r in wanted if r in skipped])
    finally:
        if owned:
            store.close()
    if result.ids:
        poke(config.runner.run_dir)
    return result
