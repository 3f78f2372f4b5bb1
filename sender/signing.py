"""DKIM signing (RFC 6376) of outgoing messages, with dkimpy.

Signer.sign() takes the final bytes of one message -- whatever made them: a
message submitted whole, or one rendered in the child -- and returns them
with a DKIM-Signature header field in front, made with the key of the From
header's domain (SenderConfig.dkim_domains): rsa-sha256 for an RSA key,
ed25519-sha256 for an Ed25519 one, relaxed/relaxed canonicalization, signing
those of SenderConfig.dkim_headers that the message has (From always).  A
message from a domain without a key, or without a From address to take a
domain from, is returned unchanged: it goes out unsigned.

A child reads each key file once, at the first message from its domain, and
keeps the key in the form dkimpy takes.  A key file that cannot be used
raises KeyUnusable, every time, without reading the file again; its text
names the file and the reason and never holds key material (nor does any
other text this module makes).

Cost: dkimpy does RSA in pure Python; signing is most of the child's CPU per
message when it is on (README, "DKIM").  Nothing here runs when no domain
has a key: the child does not even import this module then.
"""

from __future__ import annotations

import base64
import email.utils
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from sender.protocol import SenderConfig

MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers must reject smaller keys


class KeyUnusable(Exception):
    """The key file of a signing domain cannot be used (text: file and reason only)."""


@dataclass(frozen=True)
class _Key:
    selector: bytes
    algorithm: bytes  # b"rsa-sha256" | b"ed25519-sha256"
    private: bytes  # as dkimpy.DKIM.sign() takes it for that algorithm


def load_key(path: str, selector: str) -> _Key:
    """The signing key in ``path`` (PEM; PKCS#1 or PKCS#8; RSA or Ed25519).

    :raises KeyUnusable: unreadable, not a PEM private key, encrypted, too
        short, of another type, or Ed25519 without PyNaCl.
    """
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise KeyUnusable(f"DKIM key file {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise KeyUnusable(f"DKIM key file {path}: encrypted keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyUnusable(f"DKIM key file {path}: not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyUnusable(f"DKIM key file {path}: RSA key of {key.key_size} bits, "
                              f"at least {MIN_RSA_BITS} needed")
        # dkimpy reads PKCS#1 ("BEGIN RSA PRIVATE KEY") only
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        return _Key(selector.encode(), b"rsa-sha256", private)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        if getattr(dkim, "nacl", None) is None:
            raise KeyUnusable(f"DKIM key file {path}: ed25519-sha256 signing needs PyNaCl "
                              "(pip install pynacl)")
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        return _Key(selector.encode(), b"ed25519-sha256", base64.b64encode(raw))
    raise KeyUnusable(f"DKIM key file {path}: neither an RSA nor an Ed25519 key")


def _from_domain(headers: list) -> str | None:
    """The domain of the first From header's first address, lower case."""
    for name, value in headers:
        if name.lower() == b"from":
            text = value.decode("utf-8", "replace").replace("\r\n", "")
            addresses = email.utils.getaddresses([text])
            address = addresses[0][1] if addresses else ""
            domain = address.rpartition("@")[2].strip().lower()
            return domain or None
    return None


class Signer:
    """The DKIM keys of one child, and the signing of one message with them."""

    def __init__(self, config: SenderConfig) -> None:
        self._domains = config.dkim_domains
        names = [name.lower().encode() for name in config.dkim_headers]
        self._headers = [b"from"] + [name for name in dict.fromkeys(names) if name != b"from"]
        self._keys: dict[str, _Key | KeyUnusable] = {}

    def _key(self, domain: str) -> _Key | None:
        key = self._keys.get(domain)
        if key is None:
            entry = self._domains.get(domain)
            if entry is None:
                return None
            try:
                key = load_key(entry["key_file"], entry["selector"])
            except KeyUnusable as exc:
                key = exc
            self._keys[domain] = key
        if isinstance(key, KeyUnusable):
            raise KeyUnusable(str(key))
        return key

    def sign(self, data: bytes) -> bytes:
        """``data`` with a DKIM-Signature field first, or unchanged (see module doc).

        :raises KeyUnusable: the From domain has a key file that cannot be used.
        """
        try:
            message = dkim.DKIM(data)
        except dkim.DKIMException:
            return data  # no header section dkimpy can read: nothing to sign
        domain = _from_domain(message.headers)
        key = self._key(domain) if domain else None
        if key is None:
            return data
        present = {name.lower() for name, _ in message.headers}
        include = [name for name in self._headers if name in present]
        signature = message.sign(key.selector, domain.encode(), key.private,
                                 signature_algorithm=key.algorithm,
                                 canonicalize=(b"relaxed", b"relaxed"),
                                 include_headers=include)
        return signature + data
