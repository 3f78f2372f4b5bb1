"""E-mail address validation and normalisation for everything that enqueues.

``parse_address()`` accepts an RFC 5321 mailbox (dot-atom or quoted local
part, a host name domain; IDN domains are converted to their A-label form) and
returns it normalised: the local part as given, the domain lower-cased ASCII.
Anything else raises AddressError naming the address and what is wrong with
it, so no caller ever stores half an address or one that could smuggle a line
break into a header or an SMTP command.
"""

from __future__ import annotations

import functools
import re

import idna

from spoold.errors import AddressError

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*$")
_QUOTED = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _problem(address: str) -> str | None:
    if any(c in address for c in "\r\n\0"):
        return "contains a line break or NUL"
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return "is not text (undecodable bytes?)"
    if "@" not in address:
        return "has no @domain"
    local = address.rpartition("@")[0]
    if not local:
        return "has an empty local part"
    if len(local.encode("utf-8")) > 64:
        return "local part longer than 64 octets"
    if not (_DOT_ATOM.match(local) or _QUOTED.match(local)):
        if not local.isascii():
            return "non-ASCII local part (SMTPUTF8 is not supported)"
        return "local part has characters that need quoting"
    return None


@functools.lru_cache(maxsize=4096)  # a contact import meets the same few domains a million times
def domain_to_ascii(domain: str) -> str:
    """Lower-case A-label form of a domain, or AddressError."""
    if not domain:
        raise AddressError("empty domain")
    if domain.startswith("[") and domain.endswith("]"):
        raise AddressError(f"{domain}: address literals are not supported")
    name = domain.rstrip(".")
    if name.isascii() and "xn--" not in name.lower():
        # Nothing for IDNA to map or check: the label rules below are the whole test
        # (and idna's UTS 46 tables cost more than the rest of an enqueue).
        ascii_domain = name.lower()
    else:
        try:
            ascii_domain = idna.encode(name, uts46=True).decode("ascii").lower()
        except idna.IDNAError as exc:
            raise AddressError(f"{domain}: invalid domain ({exc})") from None
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or len(labels) < 2 or not all(_LABEL.match(lbl) for lbl in labels):
        raise AddressError(f"{domain}: invalid domain")
    return ascii_domain


def parse_address(address: str) -> str:
    """The normalised form of one mailbox, or AddressError naming it."""
    if not isinstance(address, str):
        raise AddressError(f"{address!r}: not a string")
    stripped = address.strip()
    if stripped.startswith("<") and stripped.endswith(">"):
        stripped = stripped[1:-1]
    problem = _problem(stripped)
    if problem:
        raise AddressError(f"bad address {address!r}: {problem}")
    local, _, domain = stripped.rpartition("@")
    try:
        ascii_domain = domain_to_ascii(domain)
    except AddressError as exc:
        raise AddressError(f"bad address {address!r}: {exc}") from None
    normal = f"{local}@{ascii_domain}"
    if len(normal) > 254:
        raise AddressError(f"bad address {address!r}: longer than 254 octets")
    return normal


def parse_sender(address: str) -> str:
    """Like parse_address, but the null reverse-path ("" or "<>") is allowed."""
    if address.strip() in ("", "<>"):
        return ""
    return parse_address(address)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]
