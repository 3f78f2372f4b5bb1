"""Parsing bounce and complaint messages into one reading per failed recipient.

NAME
    report - what a DSN, an ARF report or a non-standard bounce says

DESCRIPTION
    ``parse_report(data)`` reads one message with the stdlib email package and
    returns a ``Report``: its format and one ``Bounce`` per recipient it is
    about, each with the recipient, the DSN action, the RFC 3463 status, the
    SMTP reply code, the diagnostic text, the remote MTA, and the ``Verdict``
    of spoold.bounces.classify.  The formats, tried in this order:

    arf        RFC 5965 multipart/report with a message/feedback-report part
               (Feedback-Type, Original-Rcpt-To), and Microsoft's JMRP
               complaint (an enclosed message with X-HmXmrOriginalRecipient)
    dsn        RFC 3464 message/delivery-status: per-recipient Final-Recipient
               (or Original-Recipient, X-Actual-Recipient), Action, Status,
               Diagnostic-Code, Remote-MTA.  Recipients delivered, relayed or
               expanded are left out; "delayed" ones are kept (action delayed).
    ses        Amazon SES / SNS JSON notifications (Bounce, Complaint, Delivery)
    autoreply  RFC 3834 auto-replies (Auto-Submitted: auto-replied, "Out of
               office" subjects): a reading with verdict none, not a failure
    text       everything else: the prose of qmail, Exim, Exchange, ... read
               by spoold.bounces.plaintext

    ``Report.return_path`` is the envelope sender of the enclosed original
    message when one is enclosed (where a VERP address survives a bounce that
    was not sent to it, like a forwarded complaint).

DIAGNOSTICS
    ReportError when the message names no recipient in any of these forms.

Public: Report, Bounce, parse_report.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import re
from dataclasses import dataclass, field
from typing import Any
from email.message import Message

from spoold.bounces import plaintext
from spoold.bounces.classify import HARD, NONE, SOFT, Verdict, classify, classify_feedback
from spoold.errors import ReportError

_NOT_FAILED = ("delivered", "relayed", "expanded")
_BOUNCE_SUBJECT = re.compile(r"deliver|fail|return|error|bounce|undeliv|reject|problem|"
                             r"notif|warning", re.I)
_AUTOREPLY_SUBJECT = re.compile(r"^\s*(auto(matic|matische)?[ -]?(reply|response|antwort)|"
                                r"out of (the )?office|away\b|vacation|abwesen|absence)", re.I)


@dataclass
class Bounce:
    recipient: str
    verdict: Verdict
    status: str = ""  # RFC 3463 enhanced status code, "" when none is known
    code: int | None = None  # SMTP reply code, when the report gives one
    diagnostic: str = ""
    action: str = "failed"  # failed | delayed | complaint | autoreply | delivered
    remote_mta: str = ""
    feedback_type: str = ""


@dataclass
class Report:
    format: str  # arf | dsn | ses | autoreply | text
    bounces: list[Bounce] = field(default_factory=list)
    return_path: str = ""
    reporting_mta: str = ""


class _TextHeaders(email.policy.Compat32):
    """compat32, except that a header holding 8-bit bytes reads as text (UTF-8, or
    U+FFFD where it is not), as every other header does, not as a Header object."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_POLICY = _TextHeaders()


def _address(value: str | None) -> str:
    """The address in "rfc822; <bob@x>", "<bob@x>" or "bob@x"; "" when none."""
    if not value:
        return ""
    value = value.split(";", 1)[-1] if ";" in value else value
    match = plaintext.ADDRESS.search(value)
    if match:
        return match.group(0)
    raw = value.strip().strip("<>").strip()  # an address the pattern does not know
    return raw if re.fullmatch(r"[^\s@<>]+@[^\s@<>]+\.[^\s@<>]+", raw) else ""


def _unfold(value: str | None) -> str:
    return " ".join(str(value or "").split())


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list) and all(isinstance(p, Message) for p in payload):
        blocks = list(payload)
        if len(blocks) > 1 or (blocks and not blocks[0].get_payload()):
            return blocks
        text = blocks[0].as_string() if blocks else ""
    else:
        raw = part.get_payload(decode=True) or b""
        text = raw.decode("utf-8", errors="replace")
    chunks = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip())
    return [email.message_from_string(chunk.strip() + "\n", policy=_POLICY)
            for chunk in chunks if chunk.strip()]


def _enclosed(msg: Message) -> Message | None:
    """The original message (or its headers) enclosed in a report."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global") and part.is_multipart():
            return part.get_payload(0)
        if ctype in ("text/rfc822-headers", "message/rfc822-headers",
                     "message/global-headers"):
            raw = part.get_payload(decode=True) or b""
            return email.message_from_bytes(raw, policy=_POLICY)
    return None


def _return_path(msg: Message) -> str:
    original = _enclosed(msg)
    if original is None:
        return ""
    return _address(original.get("Return-Path")) or ""


# -- DSN (RFC 3464) -----------------------------------------------------------

def _dsn_status(block: Message, diagnostic: str) -> str:
    """The remote server's own code from the diagnostic when it agrees in class
    with the Status field (it is usually the more precise), else the field."""
    given = plaintext.status_of(_unfold(block.get("Status")))
    said = plaintext.reply_status(diagnostic)
    if said and (not given or said[0] == given[0]):
        return said
    return given or said


def _dsn_bounce(block: Message, recipient: str, text: plaintext.Failure | None) -> Bounce:
    raw = _unfold(block.get("Diagnostic-Code"))
    diagnostic = re.sub(r"^\s*(smtp|x-[\w-]+|unix|x400)\s*;\s*", "", raw, flags=re.I)
    if not re.search(r"[A-Za-z]{3}", diagnostic) and text is not None:
        diagnostic = text.diagnostic  # no Diagnostic-Code: the prose about this recipient
    status = _dsn_status(block, diagnostic)
    action = _unfold(block.get("Action")).lower().split(" ")[0]
    if not action:
        action = "delayed" if status.startswith("4") else "failed"
    if action in _NOT_FAILED:
        return Bounce(recipient, Verdict(NONE, "delivered"), status, action=action)
    prose = text.diagnostic if text is not None else ""
    verdict = classify(status, diagnostic, prose)
    if verdict.kind == HARD and raw.lower().startswith("x-unix"):
        verdict = Verdict(SOFT, "mailererror")  # a local delivery program's complaint
    return Bounce(recipient=recipient, verdict=verdict, status=status,
                  code=plaintext.code_of(diagnostic) or (text.code if text else None),
                  diagnostic=diagnostic, action=action,
                  remote_mta=_address_or_host(block.get("Remote-MTA")))


def _recipient_of(block: Message) -> str:
    return (_address(block.get("Final-Recipient")) or _address(block.get("X-Actual-Recipient"))
            or _address(block.get("Original-Recipient")))


def _address_or_host(value: str | None) -> str:
    value = _unfold(value)
    return value.split(";", 1)[-1].strip() if ";" in value else value


def _dsn(msg: Message, blocks: list[Message]) -> Report:
    """Per-recipient blocks, helped by the prose: a block whose Final-Recipient is
    no address takes the next address the prose names."""
    text = plaintext.report_text(msg)
    failures = plaintext.find_failures(text, _own_addresses(msg))
    by_address = {f.recipient.lower(): f for f in failures}
    unnamed = iter(failures)
    bounces = []
    for block in blocks:
        if not any(block.get(f) for f in ("Final-Recipient", "Original-Recipient",
                                          "X-Actual-Recipient")):
            continue
        recipient = _recipient_of(block)
        if not recipient:
            failure = next(unnamed, None)
            if failure is None:
                continue
            recipient = failure.recipient
        bounces.append(_dsn_bounce(block, recipient, by_address.get(recipient.lower())))
    if not bounces:  # status blocks without recipients: the prose names them
        bounces = _text(msg).bounces
    reporting = next((_address_or_host(b.get("Reporting-MTA")) for b in blocks
                      if b.get("Reporting-MTA")), "")
    return Report("dsn", bounces, _return_path(msg), reporting)


_DSN_FIELD = re.compile(r"^(final-recipient|original-recipient|x-actual-recipient|action|status|"
                        r"diagnostic-code|remote-mta|reporting-mta|last-attempt-date|"
                        r"arrival-date|received-from-mta|will-retry-until)\s*:", re.I)


def _dsn_in_text(msg: Message) -> list[Message]:
    """DSN fields written into a text part (a "Technical report", broken MIME)."""
    blocks: list[list[str]] = []
    names: set[str] = set()
    current: list[str] | None = None
    for line in plaintext.own_text(msg).splitlines():
        match = _DSN_FIELD.match(line.strip())
        if match:
            name = match.group(1).lower()
            if current is None or name in names:
                current, names = [], set()
                blocks.append(current)
            names.add(name)
            current.append(line.strip())
        elif current is not None and line[:1] in (" ", "\t") and line.strip():
            current[-1] += " " + line.strip()
        else:
            current = None
    parsed = [email.message_from_string("\n".join(b) + "\n", policy=_POLICY)
              for b in blocks]
    if any(_recipient_of(b) and (b.get("Status") or b.get("Action")) for b in parsed):
        return parsed
    return []


# -- ARF (RFC 5965) and complaint reports ---------------------------------------

def _arf(msg: Message, part: Message) -> Report:
    fields = Message()
    for block in _field_blocks(part):
        for name, value in block.items():
            fields[name] = value
    feedback_type = _unfold(fields.get("Feedback-Type")).lower() or "abuse"
    recipients = [_address(v) for v in fields.get_all("Original-Rcpt-To", []) +
                  fields.get_all("Removal-Recipient", [])]
    original = _enclosed(msg)
    if not any(recipients) and original is not None:
        recipients = [a for _, a in email.utils.getaddresses(original.get_all("To", []))]
    verdict = classify_feedback(feedback_type)
    bounces = [Bounce(r, verdict, action="complaint", feedback_type=feedback_type)
               for r in dict.fromkeys(r for r in recipients if r)]
    return Report("arf", bounces, _return_path(msg),
                  _address_or_host(fields.get("Reporting-MTA")))


def _jmrp(msg: Message) -> Report | None:
    """Microsoft's complaint report: the complained-of message, its recipient in a header."""
    original = _enclosed(msg)
    if original is None or not original.get("X-HmXmrOriginalRecipient"):
        return None
    recipient = _address(original.get("X-HmXmrOriginalRecipient"))
    return Report("arf", [Bounce(recipient, classify_feedback("abuse"), action="complaint",
                                 feedback_type="abuse")], _return_path(msg))


# -- Amazon SES notifications -----------------------------------------------------

def _ses_document(msg: Message) -> dict | None:
    text = re.sub(r"\n[ \t]", "", plaintext.own_text(msg)).strip()  # unfold long lines
    start = text.find("{")
    if start < 0 or ("notificationType" not in text and "eventType" not in text):
        return None
    try:
        document, _ = json.JSONDecoder().raw_decode(text[start:])
        if isinstance(_field(document, "Message", str, None), str):  # in an SNS envelope
            document = json.loads(document["Message"])
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _field(document: Any, key: str, kind: type, default: Any) -> Any:
    """``document[key]`` if the document is an object and the value a ``kind``, else
    ``default``: a notification of another shape reads as one that lacks the field."""
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, kind) else default


def _ses(document: dict) -> Report:
    kind = (_field(document, "notificationType", str, "")
            or _field(document, "eventType", str, "")).lower()
    bounces = []
    if kind == "bounce":
        bounce = _field(document, "bounce", dict, {})
        permanent = bounce.get("bounceType") == "Permanent"
        for item in _field(bounce, "bouncedRecipients", list, []):
            diagnostic = _field(item, "diagnosticCode", str, "")
            status = plaintext.status_of(_field(item, "status", str, "")) or \
                plaintext.status_of(diagnostic) or ("5.0.0" if permanent else "4.0.0")
            bounces.append(Bounce(_address(_field(item, "emailAddress", str, "")),
                                  classify(status, diagnostic), status,
                                  plaintext.code_of(diagnostic), diagnostic,
                                  _field(item, "action", str, "failed")))
    elif kind == "complaint":
        complaint = _field(document, "complaint", dict, {})
        feedback = _field(complaint, "complaintFeedbackType", str, "abuse")
        verdict = classify_feedback(feedback)
        bounces = [Bounce(_address(_field(item, "emailAddress", str, "")), verdict,
                          action="complaint", feedback_type=feedback)
                   for item in _field(complaint, "complainedRecipients", list, [])]
    elif kind == "delivery":
        delivery = _field(document, "delivery", dict, {})
        reply = _field(delivery, "smtpResponse", str, "")
        bounces = [Bounce(_address(r), Verdict(NONE, "delivered"),
                          plaintext.reply_status(reply) or "2.0.0", diagnostic=reply,
                          action="delivered")
                   for r in _field(delivery, "recipients", list, []) if isinstance(r, str)]
    return Report("ses", [b for b in bounces if b.recipient])


# -- auto-replies and prose ------------------------------------------------------------

def _autoreply(msg: Message) -> Report | None:
    """An RFC 3834 auto-reply from a person's mailbox (not a mailer daemon's bounce,
    which Exim also marks auto-replied)."""
    subject = _unfold(msg.get("Subject"))
    marked = (_unfold(msg.get("Auto-Submitted")).lower().startswith("auto-replied") or
              _AUTOREPLY_SUBJECT.match(subject) or msg.get("X-Autoreply") or
              msg.get("X-Autorespond"))
    sender = _address(msg.get("From"))
    if not marked or not sender or plaintext.is_daemon(sender) or _BOUNCE_SUBJECT.search(subject):
        return None
    return Report("autoreply", [Bounce(sender, Verdict(NONE, "vacation"), action="autoreply")])


def _own_addresses(msg: Message) -> set[str]:
    fields = [msg.get_all(name, []) for name in ("From", "To", "Reply-To", "Sender",
                                                 "Return-Path", "Delivered-To")]
    return {a.lower() for _, a in email.utils.getaddresses([v for f in fields for v in f]) if a}


def _text(msg: Message) -> Report:
    text = plaintext.report_text(msg)
    own = _own_addresses(msg)
    failures = plaintext.find_failures(text, own) or plaintext.find_failures(
        text, {_address(msg.get("From")).lower()})  # mail the sender sent itself
    if not failures:  # a report that does not name the address: the original's To
        words = " ".join(text.split())
        failures = [plaintext.Failure(r, words, plaintext.reply_status(words),
                                      plaintext.code_of(words))
                    for r in _original_recipients(msg) if r.lower() not in own] or \
            _unnamed_failure(words)
    bounces = []
    for failure in failures:
        words = failure.diagnostic
        if len(failures) == 1 and not failure.code and not failure.status:
            words = " ".join(text.split())  # one recipient: the whole report is about it
        status = failure.status or (f"{failure.code // 100}.0.0" if failure.code else "")
        bounces.append(Bounce(failure.recipient, classify(status, words), status, failure.code,
                              failure.diagnostic))
    return Report("text", bounces, _return_path(msg))


def _unnamed_failure(words: str) -> list[plaintext.Failure]:
    """A failure report that names no address at all (the VERP address then
    tells whose it is), when its words or codes say what failed."""
    status, code = plaintext.reply_status(words), plaintext.code_of(words)
    if status or code or classify("", words).reason != "undefined":
        return [plaintext.Failure("", words, status, code)]
    return []


def _original_recipients(msg: Message) -> list[str]:
    """To and Cc of the enclosed original, or of header lines quoted in the text."""
    original = _enclosed(msg)
    if original is not None:
        fields = original.get_all("To", []) + original.get_all("Cc", [])
    else:
        fields = re.findall(r"(?im)^\s*(?:to|cc)\s*:\s*(.+)$", plaintext.own_text(msg))
    return list(dict.fromkeys(a for _, a in email.utils.getaddresses(fields) if "@" in a))


def parse_report(data: bytes) -> Report:
    """Read one bounce, complaint or auto-reply message."""
    msg = email.message_from_bytes(data, policy=_POLICY)
    report = None
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            report = _arf(msg, part)
            break
        if part.get_content_type() in ("message/delivery-status",
                                       "message/global-delivery-status"):
            report = _dsn(msg, _field_blocks(part))
            break
    if report is None:
        report = _jmrp(msg) or _autoreply(msg)
    if report is None:
        document = _ses_document(msg)
        blocks = [] if document else _dsn_in_text(msg)
        report = _ses(document) if document else _dsn(msg, blocks) if blocks else _text(msg)
    if not report.bounces:
        raise ReportError(f"{report.format} report names no failed recipient")
    return report
