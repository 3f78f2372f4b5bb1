"""Reading bounces that are not RFC 3464 DSNs: the texts mail systems write.

qmail, Exim, old Sendmail, Exchange, Lotus Notes, Yahoo, Gmail, OpenSMTPD,
mailing-list software and many more send their own prose instead of a
message/delivery-status part, but they share a shape: some words of regret,
then each failed address with the remote server's reply near it, then a copy
of the original message.  This module reads that shape, not any one
system's wording:

- the report text is the message's own text parts (HTML reduced to text),
  without enclosed messages and cut where a copy of the original message
  begins (a "----- Original message -----" style line or a block of header
  lines);
- the failed recipients are the addresses in that text, minus the bounce's
  own From/To (the original sender, the mailer daemon) and addresses quoted
  on header lines ("To: ..."), in order of first appearance;
- each recipient's diagnostic is its own line when that line already carries
  an SMTP reply ("550 <bob@x>... User unknown", "bob@x: 550 5.1.1 ..."), else
  the text from the address to the next recipient, ending early at a blank
  line once a reply code has been seen.

Public: own_text, report_text, find_failures, is_daemon, status_of, reply_status, code_of, ENHANCED,
SMTP_CODE, ADDRESS.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from email.message import Message

ADDRESS = re.compile(
    r"(?<![\w.+=/?&%#-])[A-Za-z0-9!#$%&'*+^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])")
# RFC 3463 codes, not the tail of an IP address or a version number.
ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d]|\.\d)")
SMTP_CODE = re.compile(r"(?<![\d.\-/#])(?<!\w:)([245]\d\d)(?=[ \-:]\S|$)", re.M)

# A line announcing the copy of the original message.
_CUT_PHRASES = re.compile(
    r"original message|copy of (the|your) (original )?(message|mail)|below this line|"
    r"unsent message|returned message|message headers? follow|original (mail|headers)|"
    r"headers of the original|rfc ?822 (headers|message)|message (text|content) follows|"
    r"this is the (message|mail)|your message (reads|follows)|message as received|"
    r"included below|header of (the )?original", re.I)
_RULE = re.compile(r"^\s*([-=*_#>]{2,}|\[|\()|:\s*$")
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):[ \t]")
# Fields that begin a copied message (not a MIME part header inside broken MIME).
_TELLING_HEADERS = {"received", "return-path", "message-id", "dkim-signature", "x-received",
                    "arc-seal", "delivered-to", "date"}
# Lines that quote the original message's header fields inside the prose.
_QUOTED_FIELD = re.compile(r"^\s*(from|to|cc|bcc|sender|reply-to|return-path|errors-to|"
                           r"message-id|subject|sent|date|in-reply-to|references)\s*:", re.I)
_ALIAS_OF = re.compile(r"generated from\s*<?$", re.I)
_DAEMONS = re.compile(r"^(mailer-daemon|postmaster|noreply|no-reply|abuse|root|daemon)@", re.I)


@dataclass
class Failure:
    recipient: str
    diagnostic: str
    status: str = ""  # the first enhanced status code in the diagnostic
    code: int | None = None  # the first SMTP reply code in the diagnostic


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _html_text(markup: str) -> str:
    markup = re.sub(r"(?is)<(script|style).*?</\1>", " ", markup)
    markup = re.sub(r"(?i)<br\s*/?>|</(p|div|tr|li|h\d)>", "\n", markup)
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


def _text_parts(msg: Message) -> list[Message]:
    """The message's own text parts, not those of enclosed messages."""
    if msg.is_multipart():
        found = []
        for part in msg.get_payload():
            if part.get_content_maintype() == "message" or \
                    part.get_content_type() == "text/rfc822-headers":
                continue
            found.extend(_text_parts(part))
        return found
    # A multipart whose boundary could not be parsed holds its parts as text.
    return [msg] if msg.get_content_maintype() in ("text", "multipart") else []


def _cut_original(text: str) -> str:
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if _CUT_PHRASES.search(line) and _RULE.search(line) and len(line.strip()) < 100:
            return "\n".join(lines[:number])
        if _starts_header_block(lines, number):
            return "\n".join(lines[:number])
    return text


def _starts_header_block(lines: list[str], start: int) -> bool:
    names = []
    for line in lines[start:start + 6]:
        if line[:1] in (" ", "\t") and names:
            continue
        match = _HEADER_LINE.match(line)
        if not match:
            break
        names.append(match.group(1).lower())
    return len(names) >= 3 and bool(_TELLING_HEADERS & set(names))


def own_text(msg: Message) -> str:
    """The message's own text (HTML as text when there is no plain text), whole."""
    parts = _text_parts(msg)
    plain = [p for p in parts if p.get_content_subtype() != "html"]
    texts = [_decoded(p) for p in plain] or [_html_text(_decoded(p)) for p in parts]
    return "\n".join(texts).replace("\r\n", "\n")


def report_text(msg: Message) -> str:
    """The human-readable report: the own text, cut before the copy of the original."""
    return _cut_original(own_text(msg))


def is_daemon(address: str) -> bool:
    return bool(_DAEMONS.match(address))


def _candidates(text: str, exclude: set[str]) -> list[tuple[str, int]]:
    """(address, offset of its first appearance) for each candidate recipient."""
    seen: dict[str, int] = {}
    offset = 0
    for line in text.splitlines(keepends=True):
        if not _QUOTED_FIELD.match(line):
            for match in ADDRESS.finditer(line):
                if _ALIAS_OF.search(line, 0, match.start()):
                    continue  # Exim's "(generated from alias@x)": not a recipient
                address = match.group(0).strip(".")
                key = address.lower()
                if key not in exclude and key not in seen:
                    seen[key] = offset + match.start()
        offset += len(line)
    return sorted(((text[o:o + len(a)], o) for a, o in seen.items()), key=lambda x: x[1])


def _line_at(text: str, offset: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    return start, len(text) if end < 0 else end


def _own_line(text: str, offset: int, limit: int) -> str | None:
    """The address's line and its indented continuations, when it carries a reply."""
    start, end = _line_at(text, offset)
    if not SMTP_CODE.search(text[start:end]):
        return None
    while end < limit:
        nxt_start, nxt_end = end + 1, _line_at(text, end + 1)[1]
        line = text[nxt_start:nxt_end]
        if not line[:1].isspace() or not line.strip():
            break
        end = nxt_end
    return text[offset:end]


def _span(text: str, offset: int, limit: int) -> str:
    """From the start of the address's line (">>> RCPT To:<bob@x>" says which
    command was refused) to the end of what concerns it."""
    start = _line_at(text, offset)[0]
    own = _own_line(text, offset, limit)
    if own is not None:
        return text[start:offset] + own
    span = text[start:limit]
    seen_code = False
    for match in re.finditer(r"\n[ \t]*\n", span):
        if seen_code:
            return span[:match.start()]
        seen_code = bool(SMTP_CODE.search(span[:match.start()]) or
                         ENHANCED.search(span[:match.start()]))
    return span


def status_of(text: str) -> str:
    """The first enhanced status code in the text, normalised ("5.01.1" -> "5.1.1")."""
    match = ENHANCED.search(text)
    if not match:
        return ""
    klass, subject, detail = match.groups()
    return f"{klass}.{int(subject)}.{int(detail)}"


_REPLY_STATUS = re.compile(r"(?<![\d.])[245]\d\d[ -]['\"]?([245]\.\d{1,3}\.\d{1,3})(?![\d]|\.\d)")


def reply_status(text: str) -> str:
    """The status a remote server gave with its reply code ("550 5.1.1"; the last
    failure when a reply quotes another or a transcript follows), else the first
    status in the text."""
    replies = _REPLY_STATUS.findall(text)
    failures = [r for r in replies if r[0] in "45"]
    return status_of((failures or replies)[-1]) if replies else status_of(text)


def code_of(text: str) -> int | None:
    match = SMTP_CODE.search(text)
    return int(match.group(1)) if match else None


def find_failures(text: str, exclude: set[str]) -> list[Failure]:
    """Each failed recipient named in a report text, with its diagnostic."""
    found = _candidates(text, {a.lower() for a in exclude})
    ordinary = [(a, o) for a, o in found if not _DAEMONS.match(a)]
    found = ordinary or found  # a postmaster is the recipient only when no one else is
    failures = []
    for index, (address, offset) in enumerate(found):
        limit = found[index + 1][1] if index + 1 < len(found) else len(text)
        limit = max(limit, _line_at(text, offset)[1]) if limit <= offset else limit
        diagnostic = " ".join(_span(text, offset, limit).split())
        failures.append(Failure(address, diagnostic, reply_status(diagnostic),
                                code_of(diagnostic)))
    return failures
