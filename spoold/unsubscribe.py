"""Unsubscribe tokens: make one per mailout message, check one, act on it.

A token names a contact and a mailout and carries an HMAC-SHA256 of both
under the unsubscribe secret, truncated to 128 bits::

    <contact id>.<mailout id>.<base64url MAC>       e.g. 42.7.Xq3v...

Nobody without the secret can make a valid token for another contact or
mailout (changing an id breaks the MAC) or find one by trying: each guess
has a 2**-128 chance.  A test send (``mailout create --test-to``) uses
contact id 0, which is valid but unsubscribes nobody.

The secret is ``[mailout] secret``; when it is empty, one is made at first
use and kept in the database (``Store.secret("unsubscribe")``), so the
runner that makes links and the web UI that checks them agree as long as
they share the database.

Public API (the web UI's unsubscribe endpoint, RFC 8058 one-click POST or a
GET page, calls ``unsubscribe``):

    make_token(secret, contact_id, mailout_id) -> str
    check_token(secret, token) -> (contact_id, mailout_id)    raises BadToken
    secret_for(config, store) -> str
    unsubscribe(config, store, token) -> Unsubscribed         raises BadToken
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from spoold.config import Config
from spoold.errors import BadToken
from spoold.store import Store

_ID = r"(0|[1-9][0-9]{0,18})"  # one spelling per id: no leading zero, ASCII digits only
_TOKEN = re.compile(rf"{_ID}\.{_ID}\.([A-Za-z0-9_-]{{22}})")


@dataclass
class Unsubscribed:
    contact_id: int
    mailout_id: int
    changed: bool  # False: already unsubscribed (or a test send): nothing was done


def _mac(secret: str, contact_id: int, mailout_id: int) -> str:
    digest = hmac.new(secret.encode(), f"unsubscribe:{contact_id}:{mailout_id}".encode(),
                      hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_token(secret: str, contact_id: int, mailout_id: int) -> str:
    """The token of one contact's copy of one mailout."""
    if not secret:
        raise BadToken("no unsubscribe secret")
    return f"{contact_id}.{mailout_id}.{_mac(secret, contact_id, mailout_id)}"


def check_token(secret: str, token: str) -> tuple[int, int]:
    """(contact id, mailout id) of a genuine token; BadToken for anything else."""
    match = _TOKEN.fullmatch(token.strip()) if isinstance(token, str) else None
    if match is None or not secret:
        raise BadToken("malformed unsubscribe token")
    contact_id, mailout_id = int(match.group(1)), int(match.group(2))
    if not hmac.compare_digest(match.group(3), _mac(secret, contact_id, mailout_id)):
        raise BadToken("unsubscribe token does not verify")
    return contact_id, mailout_id


def secret_for(config: Config, store: Store) -> str:
    """The configured secret, or the one generated and kept in the database."""
    return config.mailout.secret or store.secret("unsubscribe")


def unsubscribe(config: Config, store: Store, token: str) -> Unsubscribed:
    """Check a token and record the unsubscribe (contact, suppression, mailout counter)."""
    contact_id, mailout_id = check_token(secret_for(config, store), token)
    return Unsubscribed(contact_id, mailout_id, store.record_unsubscribe(contact_id, mailout_id))
