"""STARTTLS policy per destination: which TLS a job's MX hosts must offer.

Policies.for_domain() decides once per job, first match wins:

1. smtp.tls_policy (SenderConfig.tls_policy): the domain itself, else the
   nearest ".parent" entry -- the operator's word beats what DNS says;
2. MTA-STS (sender.mtasts), when enabled: an ``enforce`` policy means
   "verify", and only MX hosts that match its patterns may be used; a
   ``testing`` policy changes nothing but notes, in the delivery log, the
   MX hosts that enforce would refuse;
3. smtp.tls (SenderConfig.tls) for everyone else.

Levels, as Postfix's smtp_tls_security_level: ``none`` never STARTTLS;
``may`` STARTTLS when offered, certificate unchecked, plaintext if the
handshake fails; ``encrypt`` STARTTLS required, certificate unchecked;
``verify`` STARTTLS required and the certificate must chain to a trusted CA
(SenderConfig.tls_ca_file, else the system's) and name the MX host as found
in DNS.  context_for() gives the ssl context of each level, made once per
child.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass

from sender.mtasts import MtaSts, mx_matches
from sender.mx import MxResolver
from sender.protocol import SenderConfig

# How much a session's TLS proves, and how much each level asks of one: a
# kept connection is reused only for a job whose level it satisfies.
PLAINTEXT, ENCRYPTED, VERIFIED = 0, 1, 2
REQUIRES = {"none": PLAINTEXT, "may": PLAINTEXT, "encrypt": ENCRYPTED, "verify": VERIFIED}


@dataclass(frozen=True)
class TlsPolicy:
    """The TLS a job's MX hosts must offer, where that came from, and which hosts qualify."""

    level: str  # none | may | encrypt | verify
    source: str  # smtp.tls | smtp.tls_policy | mta-sts, for the delivery log
    mx: tuple[str, ...] = ()  # MTA-STS: the policy's MX patterns
    enforce: bool = False  # MTA-STS enforce: hosts outside ``mx`` are refused
    problem: str = ""  # MTA-STS discovery or fetch trouble, for the log

    def allows(self, host: str) -> bool:
        return not self.enforce or mx_matches(host, self.mx)

    def describe(self, host: str) -> str:
        """One short text for the delivery log of a delivery through ``host``."""
        text = f"{self.level} ({self.source})"
        if self.mx and not self.enforce and not mx_matches(host, self.mx):
            text += f"; MTA-STS testing: MX host {host} is not in the policy"
        if self.problem:
            text += f"; MTA-STS {self.problem}"
        return text


class Policies:
    """The per-destination policy of one child (see module doc)."""

    def __init__(self, config: SenderConfig, resolver: MxResolver) -> None:
        self._table = config.tls_policy
        self._default = TlsPolicy(config.tls, "smtp.tls")
        self._sts = MtaSts(config, resolver) if config.mta_sts else None

    def for_domain(self, domain: str) -> TlsPolicy:
        level = self._from_table(domain.lower())
        if level is not None:
            return TlsPolicy(level, "smtp.tls_policy")
        if self._sts is None:
            return self._default
        policy, problem = self._sts.lookup(domain.lower())
        if policy is not None and policy.mode == "enforce":
            return TlsPolicy("verify", "mta-sts", policy.mx, enforce=True, problem=problem)
        if policy is not None and policy.mode == "testing":
            return TlsPolicy(self._default.level, "smtp.tls; mta-sts testing", policy.mx,
                             problem=problem)
        if problem:
            return TlsPolicy(self._default.level, self._default.source, problem=problem)
        return self._default

    def _from_table(self, domain: str) -> str | None:
        if not self._table:
            return None
        level = self._table.get(domain)
        parent = domain
        while level is None and "." in parent:
            parent = parent.partition(".")[2]
            level = self._table.get("." + parent)
        return level


@functools.cache
def context_for(level: str, ca_file: str) -> ssl.SSLContext:
    """The client context of a level: verifying for ``verify``, else encrypting only."""
    if level == "verify":
        return ssl.create_default_context(cafile=ca_file or None)
    # Opportunistic TLS (RFC 7435): encrypt, authenticate nobody.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
