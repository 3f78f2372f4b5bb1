"""Delivery-error policy: what an SMTP reply, a DNS or a network failure means.

The one place that decides whether a recipient is sent, deferred or bounced,
and with which RFC 3463 enhanced status code (dsn), like Postfix's
smtp_trouble.c.  The client (sender.client) and the resolver (sender.mx) only
say what happened; what a bounce means for the address (suppress it or not)
is the runner's business (spoold.bounces.classify).

Every outcome is a dsn: its class says the status (2 sent, 4 deferred,
5 bounced), so status_for_dsn() is the whole mapping.  Pure functions, no I/O.

Public: status_for_dsn, parse_enhanced_status, reply_dsn, outcome_for_reply,
outcome_for_refusal, outcome_for_session_reply, and the dsn constants below
for failures where no server gave a reply.
"""

from __future__ import annotations

import re

SENT = "sent"
DEFERRED = "deferred"
BOUNCED = "bounced"

# Failures with no server reply to take a dsn from.
DNS_TEMPORARY = "4.4.3"      # timeout, SERVFAIL, no name server answering
DNS_NO_DOMAIN = "5.1.2"      # NXDOMAIN, or a domain with no MX and no address
DNS_NULL_MX = "5.1.10"       # RFC 7505: the domain accepts no mail at all
DNS_NO_MX_HOST = "5.4.4"     # MX records whose host names have no address
CONNECT_FAILED = "4.4.1"     # refused, unreachable, timed out while connecting
CONNECTION_LOST = "4.4.2"    # lost or timed out after the connection was up
TLS_UNAVAILABLE = "4.7.4"    # tls encrypt or verify, but STARTTLS not offered or refused
TLS_FAILED = "4.7.5"         # tls encrypt or verify: the handshake or the certificate failed
MTA_STS_MX_MISMATCH = "4.7.0"  # MTA-STS enforce: the MX host is not one the policy names
DKIM_KEY_UNUSABLE = "4.3.5"  # the From domain's DKIM key file cannot be used
MESSAGE_TOO_BIG = "5.3.4"    # larger than the server's advertised SIZE
PROTOCOL_ERROR = "4.5.0"     # a reply the dialogue does not allow
AGENT_ERROR = "4.3.0"        # the sender child itself failed

_STATUS = {"2": SENT, "4": DEFERRED, "5": BOUNCED}

# RFC 3463: class "." subject "." detail, at the start of the reply text.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)")

def status_for_dsn(dsn: str) -> str:
    """``sent``, ``deferred`` or ``bounced``, from the dsn's class digit."""
    return _STATUS[dsn[0]]


def parse_enhanced_status(text: str) -> str | None:
    """The enhanced status code at the start of a reply's text, normalised.

    ``text`` is the reply without its three-digit code ("5.1.1 <bob@...>: no
    such user").  Leading zeros are dropped ("5.01.001" -> "5.1.1"); None
    when the text does not start with one.
    """
    match = _ENHANCED.match(text.lstrip())
    if not match:
        return None
    klass, subject, detail = match.groups()
    return f"{klass}.{int(subject)}.{int(detail)}"


def reply_dsn(code: int, text: str) -> str:
    """The dsn of a 2xx/4xx/5xx reply: the server's own, else x.0.0.

    The class always comes from the reply code: a "450 5.1.1" is a temporary
    failure whatever its text claims (RFC 3463 section 2 wants them equal).
    """
    klass = str(code // 100)
    enhanced = parse_enhanced_status(text)
    if enhanced is None:
        return f"{klass}.0.0"
    return klass + enhanced[1:]


def outcome_for_reply(code: int, text: str) -> tuple[str, str]:
    """(status, dsn) for the reply to a command that succeeds with 2xx."""
    if code // 100 == 2:
        return SENT, reply_dsn(code, text)
    return outcome_for_refusal(code, text)


def outcome_for_refusal(code: int, text: str) -> tuple[str, str]:
    """(status, dsn) for a reply that is not the success the command waits for.

    5xx bounces and 4xx defers (the client then tries the next MX host).  Any
    other reply -- a 2xx where DATA wants 354, a 1xx or 3xx, an unparsable
    line (code -1) -- breaks the protocol, and a broken server must not
    bounce mail: deferred, 4.5.0.
    """
    if code // 100 in (4, 5):
        dsn = reply_dsn(code, text)
        return status_for_dsn(dsn), dsn
    return DEFERRED, PROTOCOL_ERROR


def outcome_for_session_reply(code: int, text: str) -> tuple[str, str]:
    """(status, dsn) for a reply about the session, not the mail: the greeting, RSET.

    A 5xx greeting says "not from you, not here", not "no such recipient",
    and a refused RSET says nothing about the next message: the client moves
    on to the next MX and, if none takes the mail, it is deferred (Postfix
    smtp_skip_5xx_greeting).  So 5xx counts as 4xx here.
    """
    status, dsn = outcome_for_reply(code, text)
    if status == BOUNCED:
        return DEFERRED, "4" + dsn[1:]
    return status, dsn

