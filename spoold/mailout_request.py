"""A mailout as a person or a program asks for it, checked and created: the one path.

``spoold mailout create``, the web UI's send page and the API's POST
/api/v1/mailouts all fill a ``MailoutRequest`` with the values as typed
(times, rate, From, test addresses are text) and call ``create_mailout``:
the same parsing, the same defaults, the same checks (Store.create_mailout),
the same poke of the runner.  The campaign commands and pages parse their
times and From with the same ``parse_time`` and ``parse_from``.

TIME is ISO 8601 (2026-12-01T09:00, 2026-12-01 09:00:00+01:00, ...Z); a time
without an offset is local time on the machine parsing it (its TZ).  Also
"now" and +DURATION (+90s, +15m, +2h, +1d).  A rate is N/h, N/m, N/s or a bare
N (per hour).

Errors are SpooldError subclasses naming the field by its label: the CLI's
flags (``--send-at``) or the form's names (``send at``), as the caller says.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from spoold.address import parse_address
from spoold.config import Config, parse_duration
from spoold.errors import AddressError, SpooldError
from spoold.poke import poke
from spoold.store import PRIORITIES, Store
from spoold.store.mailouts import SELECTIONS, MailoutSpec

# Priorities a mailout may have (high is for transactional mail only).
MAILOUT_PRIORITIES = ("bulk", "normal")
# How errors name each field unless the caller says otherwise.
LABELS = {"send_at": "send at", "expires_at": "expires at", "rate": "rate",
          "sender": "from", "test_to": "test to"}

_RATE = re.compile(r"^\s*(\d+)\s*(?:/\s*([smh]))?\s*$")
_PER_HOUR = {"s": 3600, "m": 60, "h": 1, None: 1}


@dataclass
class MailoutRequest:
    """What to send to whom and when, every value as typed; None: the default."""

    template: str
    selection: str  # list | contacts | all | where
    list_name: str | None = None
    contacts: Sequence[str] = ()
    where: str | None = None
    send_at: str | None = None  # TIME; default now
    expires_at: str | None = None  # TIME; default send_at + runner.max_lifetime
    rate: str | None = None  # N/h; default as fast as delivery goes
    priority: str = "bulk"
    sender: str | None = None  # From; default [mailout] sender
    test_to: Sequence[str] = field(default_factory=list)  # test mode: only these addresses
    test_contact: str | None = None  # test mode: whose fields (default: the first contact)


def parse_time(text: str, what: str) -> float:
    """Epoch seconds from ISO 8601 (naive: local time), "now" or "+DURATION"."""
    text = text.strip()
    try:
        if text == "now":
            return time.time()
        if text.startswith("+"):
            return time.time() + parse_duration(text[1:])
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise SpooldError(f"{what} {text!r}: use ISO 8601 (2026-12-01T09:00, "
                          "2026-12-01 09:00+01:00), now, or +DURATION (+90s, +2h)") from None


def parse_rate(text: str, what: str = "rate") -> int:
    """Rows per hour from "N/h", "N/m", "N/s" or a bare N (per hour)."""
    match = _RATE.match(text)
    if match is None or int(match.group(1)) < 1:
        raise SpooldError(f"{what} {text!r}: use N/h, N/m or N/s with N >= 1")
    return int(match.group(1)) * _PER_HOUR[match.group(2)]


def parse_from(given: str | None, config: Config, what: str = "--from") -> str:
    """The From value ("address" or "Name <address>"), fit for a header and an envelope."""
    text = given or config.mailout_sender
    try:
        if re.search(r"[\x00-\x1f\x7f]", text):
            raise AddressError(f"{text!r}: contains a control character")
        name, address = email.utils.parseaddr(text)
        normal = parse_address(address)
    except AddressError as exc:
        raise AddressError(f"sender: {exc}" + ("" if given else
                                               f" (set [mailout] sender, or give {what})")) \
            from None
    return email.utils.formataddr((name, normal)) if name else normal


def mailout_spec(config: Config, request: MailoutRequest,
                 labels: Mapping[str, str] = LABELS) -> MailoutSpec:
    """The request parsed, with its defaults, as Store.create_mailout takes it."""
    if not request.template:
        raise SpooldError("choose a template")
    if request.selection not in SELECTIONS:
        raise SpooldError(f"choose the recipients: one of {', '.join(SELECTIONS)}")
    if request.priority not in MAILOUT_PRIORITIES:
        raise SpooldError(f"priority {request.priority!r}: use one of "
                          f"{', '.join(MAILOUT_PRIORITIES)}")
    chosen = {"list": {"list_name": request.list_name},
              "contacts": {"contacts": [a.strip() for a in request.contacts if a.strip()]},
              "where": {"where": request.where}, "all": {}}[request.selection]
    if request.selection != "all" and not next(iter(chosen.values())):
        raise SpooldError(f"recipients by {request.selection}: say which")
    send_at = parse_time(request.send_at, labels["send_at"]) if request.send_at else time.time()
    expires_at = (parse_time(request.expires_at, labels["expires_at"]) if request.expires_at
                  else send_at + config.runner.max_lifetime)
    return MailoutSpec(
        template=request.template, sender=parse_from(request.sender, config, labels["sender"]),
        selection=request.selection, send_at=send_at, expires_at=expires_at,
        rate=parse_rate(request.rate, labels["rate"]) if request.rate else None,
        priority=PRIORITIES[request.priority],
        test_to=[parse_address(a.strip()) for a in request.test_to if a.strip()],
        test_contact=request.test_contact or None, **chosen)


def create_mailout(config: Config, store: Store, request: MailoutRequest,
                   labels: Mapping[str, str] = LABELS) -> tuple[int, MailoutSpec]:
    """Check and store the mailout, then poke the runner; (its id, what was stored)."""
    spec = mailout_spec(config, request, labels)
    mailout_id = store.create_mailout(spec)
    poke(config.runner.run_dir)
    return mailout_id, spec
