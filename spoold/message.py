"""Messages as spoold stores them: checked RFC 5322 bytes with CRLF line ends.

``prepare_message()`` takes whole messages from the CLI, the API or SMTP
submission: it refuses what no MX would accept (no header section, NUL bytes,
lines over 998 octets), converts line ends to CRLF, and adds Date and
Message-ID when missing (as Postfix's cleanup does).  ``compose_message()``
builds a plain-text message from a subject and body, refusing control and
line-break characters in the subject and text that cannot be encoded.
``header_recipients()`` reads To/Cc/Bcc for ``enqueue -t``.
"""

from __future__ import annotations

import email.utils
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from spoold.errors import MessageError

MAX_LINE = 998
_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
_LINE_END = re.compile(rb"\r\n|\r|\n")
# C0 controls but TAB, DEL, and what Python's str.splitlines() breaks lines at.
_HEADER_FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def _lines(data: bytes) -> list[bytes]:
    lines = _LINE_END.split(data)
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _check_header_section(lines: list[bytes]) -> int:
    """Index of the blank line ending the header section (or len(lines))."""
    for number, line in enumerate(lines):
        if line == b"":
            return number
        if line[:1] in (b" ", b"\t") and number > 0:
            continue
        if not _HEADER_LINE.match(line):
            raise MessageError(f"line {number + 1}: not a header field ({line[:40]!r})")
    return len(lines)


def _check_lines(lines: list[bytes]) -> None:
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE:
            raise MessageError(f"line {number}: longer than {MAX_LINE} octets (RFC 5322 2.1.1)")
        if b"\0" in line:
            raise MessageError(f"line {number}: contains a NUL byte")


def _missing_headers(header_lines: list[bytes], domain: str) -> list[bytes]:
    names = {line.split(b":", 1)[0].strip().lower() for line in header_lines if b":" in line}
    added = []
    if b"date" not in names:
        added.append(b"Date: " + email.utils.formatdate(localtime=True).encode())
    if b"message-id" not in names:
        added.append(b"Message-ID: " + email.utils.make_msgid(domain=domain).encode())
    return added


def prepare_message(data: bytes, domain: str = "localhost") -> bytes:
    """Checked, CRLF-normalised message bytes with Date and Message-ID present."""
    if not data.strip():
        raise MessageError("the message is empty")
    lines = _lines(data)
    end = _check_header_section(lines)
    if end == 0:
        raise MessageError("line 1: the message has no header section")
    _check_lines(lines)
    headers = lines[:end] + _missing_headers(lines[:end], domain)
    return b"\r\n".join(headers + lines[end:]) + b"\r\n"


def _check_text(what: str, text: str, header: bool) -> None:
    """Refuse what cannot be encoded, and in a header any control or line-break character.

    The email package lets a *trailing* CR or LF through (it only refuses a
    value that splits into several lines), and prepare_message would turn it
    into the blank line that ends the header section: the rest of spoold's
    headers would land in the body.  Surrogates (undecodable bytes from a
    command line) cannot be encoded at all.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MessageError(f"{what}: character {exc.start + 1} is not text "
                           "(undecodable bytes?)") from None
    if header:
        bad = _HEADER_FORBIDDEN.search(text)
        if bad:
            raise MessageError(f"{what}: character {bad.start() + 1} is a control or line "
                               f"break character ({bad.group()!r})")


def compose_message(sender: str, recipients: list[str], subject: str, body: str,
                    domain: str = "localhost") -> bytes:
    """A plain-text message; MessageError naming the field that cannot be sent."""
    _check_text("subject", subject, header=True)
    _check_text("body", body, header=False)
    msg = EmailMessage(policy=policy.SMTP)
    try:
        msg["From"] = sender or "MAILER-DAEMON"
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject
    except ValueError as exc:
        raise MessageError(f"header value refused: {exc}") from None
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=domain)
    msg.set_content(body)
    return prepare_message(msg.as_bytes(), domain)


def header_recipients(data: bytes) -> list[str]:
    """Addresses from To, Cc and Bcc (sendmail -t)."""
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(data)
    fields = [v for name in ("To", "Cc", "Bcc") for v in headers.get_all(name, [])]
    return [addr for _, addr in email.utils.getaddresses(fields) if addr]


def header_sender(data: bytes) -> str | None:
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(data)
    pairs = email.utils.getaddresses(headers.get_all("From", []))
    return pairs[0][1] if pairs and pairs[0][1] else None


def strip_bcc(data: bytes) -> bytes:
    """The message without its Bcc header lines (and their continuations)."""
    lines = data.split(b"\r\n")
    out, skipping = [], False
    for number, line in enumerate(lines):
        if line == b"":
            out.extend(lines[number:])
            break
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            out.append(line)
    return b"\r\n".join(out)
