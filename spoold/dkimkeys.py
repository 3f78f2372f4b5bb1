"""DKIM key pairs: make one, and say what to publish and configure.

``generate()`` backs ``spoold dkim keygen DOMAIN SELECTOR``: it writes a new
private key (PKCS#8 PEM, mode 0600, never over an existing file) -- RSA of
``bits`` bits for rsa-sha256 (RFC 8301: 2048 recommended, 1024 the least a
verifier takes), or Ed25519 for ed25519-sha256 (RFC 8463) -- and returns the
DNS TXT record to publish at ``SELECTOR._domainkey.DOMAIN`` and the config
lines that make the sender sign with it (sender/signing.py).  Nothing here
prints or logs the private key.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from spoold import config as config_mod
from spoold.errors import CannotCreate, UsageError

MIN_BITS, MAX_BITS = 1024, 8192


@dataclass
class KeyPair:
    key_file: Path
    dns_name: str  # SELECTOR._domainkey.DOMAIN
    txt: str  # the record's text: v=DKIM1; k=...; p=...
    config: str  # TOML lines for spoold.toml

    def zone_line(self) -> str:
        """The record as a zone-file line, split into strings of at most 255 octets."""
        chunks = [self.txt[i:i + 255] for i in range(0, len(self.txt), 255)]
        return f'{self.dns_name}. IN TXT ( ' + " ".join(f'"{c}"' for c in chunks) + " )"


def _check_names(domain: str, selector: str) -> None:
    try:
        config_mod.dkim_entry(domain, {"selector": selector, "key_file": "-"})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def generate(domain: str, selector: str, directory: Path, bits: int = 2048,
             use_ed25519: bool = False) -> KeyPair:
    """Write DIRECTORY/DOMAIN.SELECTOR.key and describe its public half.

    :raises UsageError: a bad domain, selector or key size.
    :raises CannotCreate: the file exists or cannot be written.
    """
    domain = domain.lower()
    _check_names(domain, selector)
    if not use_ed25519 and not MIN_BITS <= bits <= MAX_BITS:
        raise UsageError(f"--bits {bits}: an RSA key for DKIM has {MIN_BITS} to {MAX_BITS} bits")
    if use_ed25519:
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        txt = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        txt = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path = (directory / f"{domain}.{selector}.key").absolute()
    _write_private(path, pem)
    config = config_mod.dump({f'dkim.domains."{domain}"': {"selector": selector,
                                                            "key_file": str(path)}})
    return KeyPair(path, f"{selector}._domainkey.{domain}", txt, config)


def _write_private(path: Path, pem: bytes) -> None:
    """Create ``path`` readable by its owner only, refusing to replace a key."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CannotCreate(f"{path}: exists; not overwriting a key (choose another "
                           "selector, or remove the file)") from None
    except OSError as exc:
        raise CannotCreate(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
