"""Passwords and API tokens: asking for, hashing and checking them, nothing stored.

Used for the web UI's users and for the submission listener's
``[submission] users`` alike.  Passwords are hashed with Argon2id
(argon2-cffi, its RFC 9106 low-memory profile), salted per hash; ``verify``
also tells when a hash was made with weaker parameters than today's, so the
UI can rehash at the next login.
API tokens are 256 random bits; being unguessable they need no slow hash,
and are stored and looked up as their SHA-256 digest.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import secrets
import sys

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from spoold.errors import SpooldError

MIN_LENGTH = 8
TOKEN_PREFIX = "spoold_"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user named does not exist, so that a failed
    login takes as long whether or not the name is known."""
    return _hasher.hash(secrets.token_hex(16))


class PasswordError(SpooldError):
    """A new password is unacceptable (too short, or the two entries differ)."""

    exit_status = 65  # EX_DATAERR


def check_new(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"the password must have at least {MIN_LENGTH} characters")
    return password


def read_new(from_stdin: bool) -> str:
    """A new password: one line of stdin, or asked twice on the terminal (never
    an argument, which would show in ps and the shell history)."""
    if from_stdin:
        return check_new(sys.stdin.readline().rstrip("\r\n"))
    if not sys.stdin.isatty():
        raise PasswordError("no terminal to ask for the password on: use --password-stdin")
    first = check_new(getpass.getpass("Password: "))
    if getpass.getpass("Again: ") != first:
        raise PasswordError("the two passwords differ")
    return first


def hash_password(password: str) -> str:
    return _hasher.hash(check_new(password))


def verify(password_hash: str | None, password: str) -> tuple[bool, bool]:
    """(whether ``password`` matches, whether the hash should be made again)."""
    try:
        _hasher.verify(password_hash or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False, False
    if password_hash is None:
        return False, False
    return True, _hasher.check_needs_rehash(password_hash)


def new_token() -> tuple[str, str]:
    """A fresh API token and the digest to store for it."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
