"""VERP: an envelope sender that names the queue row its bounces are about.

With ``[bounces] domain`` set, every message leaves with the envelope sender
``LOCAL+<queue id>.<tag>@DOMAIN`` (Variable Envelope Return Path), one per
recipient row, so an asynchronous bounce or a complaint that quotes the
Return-Path says which row failed, whatever the reporting system wrote about
the recipient.  ``tag`` is the first 12 hex digits of HMAC-SHA256(secret,
queue id): a report sent to a made-up address is recognised as such and
changes nothing.  Hex survives systems that lower-case addresses.

The From header is untouched: only the envelope (MAIL FROM) changes.  All
mail gets a VERP sender when a bounce domain is configured, not only mailout
mail: every queue row is one recipient, and every bounce of it is worth
reading.

Public: verp_sender, verp_id, envelope_sender.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from types import SimpleNamespace

_TAG_LENGTH = 12


def _tag(queue_id: int, secret: str) -> str:
    digest = hmac.new(secret.encode(), str(queue_id).encode(), hashlib.sha256).hexdigest()
    return digest[:_TAG_LENGTH]


def verp_sender(queue_id: int, secret: str, domain: str, local_part: str = "bounces") -> str:
    """The VERP envelope sender for one queue row."""
    return f"{local_part}+{queue_id}.{_tag(queue_id, secret)}@{domain}"


def verp_id(address: str, secret: str, domain: str, local_part: str = "bounces") -> int | None:
    """The queue id a VERP address names, or None if it is not one of ours (or forged)."""
    # One spelling per row: ASCII digits without a leading zero.
    match = re.fullmatch(rf"(?i){re.escape(local_part)}\+(0|[1-9][0-9]{{0,18}})\.([0-9a-f]+)@"
                         rf"{re.escape(domain)}", address.strip().strip("<>"))
    if not match:
        return None
    queue_id = int(match.group(1))
    if not hmac.compare_digest(match.group(2).lower(), _tag(queue_id, secret)):
        return None
    return queue_id


def envelope_sender(sender: str, queue_id: int, bounces: SimpleNamespace) -> str:
    """The MAIL FROM for a row: VERP when ``bounces.domain`` is set, else ``sender``.

    ``bounces`` is the [bounces] section of the configuration.  A null sender
    (a bounce of our own) stays null: bounces must never bounce.
    """
    if not bounces.domain or not sender:
        return sender
    return verp_sender(queue_id, bounces.secret, bounces.domain, bounces.local_part)
