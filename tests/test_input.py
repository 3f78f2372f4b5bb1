"""Addresses and messages from users: clear errors, nothing smuggled through."""

from __future__ import annotations

import pytest

from spoold.address import parse_address, parse_sender
from spoold.errors import AddressError, MessageError
from spoold.message import compose_message, header_recipients, prepare_message, strip_bcc


@pytest.mark.parametrize("given, normal", [
    ("Bob@Example.COM", "Bob@example.com"),
    ("<bob@example.com>", "bob@example.com"),
    ('"john smith"@example.com', '"john smith"@example.com'),
    ("a@bücher.example", "a@xn--bcher-kva.example"),
    ("o'hara+tag@sub.example.org", "o'hara+tag@sub.example.org"),
])
def test_good_addresses_are_normalised(given, normal):
    assert parse_address(given) == normal


@pytest.mark.parametrize("given, reason", [
    ("no-at-sign", "has no @domain"),
    ("@example.com", "empty local part"),
    ("a@b", "invalid domain"),
    ("a\r\nRCPT TO:<x@evil.example>@example.com", "line break"),
    ("a\0b@example.com", "NUL"),
    ("a..b@example.com", "need quoting"),
    ("x" * 65 + "@example.com", "longer than 64"),
    ("a@" + "x" * 250 + ".com", "invalid domain"),
    ("ü@example.com", "SMTPUTF8"),
    ("a@[192.0.2.1]", "address literals"),
])
def test_bad_addresses_are_refused_by_name(given, reason):
    with pytest.raises(AddressError) as err:
        parse_address(given)
    assert reason in str(err.value) and repr(given) in str(err.value)


def test_null_sender_is_allowed_only_as_sender():
    assert parse_sender("<>") == ""
    with pytest.raises(AddressError):
        parse_address("<>")


def test_prepare_message_normalises_line_ends_and_adds_missing_headers():
    data = prepare_message(b"From: a@example.org\nSubject: x\n\nline\n.dot\n")
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"\nDate: " in head.replace(b"\r\n", b"\n") and b"Message-ID: <" in head
    assert body == b"line\r\n.dot\r\n" and b"\n" not in data.replace(b"\r\n", b"")


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"just text\n\nbody\n", "line 1: not a header field"),
    (b"\nbody only\n", "no header section"),
    (b"Subject: x\n\n" + b"y" * 999 + b"\n", "line 3: longer than 998"),
    (b"Subject: x\n\nnul\0here\n", "line 3: contains a NUL"),
])
def test_unusable_messages_are_refused_with_the_line(data, reason):
    with pytest.raises(MessageError, match=reason):
        prepare_message(data)


@pytest.mark.parametrize("subject", ["hi\r\nBcc: c@evil.example", "hi\n", "hi\r", "hi\x0b",
                                     "hi\u2028Bcc: c@evil.example"])
def test_composed_subject_cannot_inject_headers(subject):
    # A trailing line break used to pass the email package's own check and end
    # the header section early, pushing spoold's MIME headers into the body.
    with pytest.raises(MessageError, match=r"subject: character .* line break"):
        compose_message("a@example.org", ["b@example.org"], subject, "x")


def test_undecodable_text_is_refused_by_field():
    with pytest.raises(MessageError, match="body: character 2 is not text"):
        compose_message("a@example.org", ["b@example.org"], "s", "x\udcff")
    with pytest.raises(AddressError, match="not text"):
        parse_address("\udcff@example.org")


def test_header_recipients_and_bcc_removal():
    data = prepare_message(b"From: a@example.org\nTo: B <b@example.org>\nCc: c@example.org\n"
                           b"Bcc: d@example.org,\n e@example.org\n\nbody\n")
    assert header_recipients(data) == ["b@example.org", "c@example.org", "d@example.org",
                                       "e@example.org"]
    stripped = strip_bcc(data)
    assert b"d@example.org" not in stripped and b"e@example.org" not in stripped
    assert stripped.endswith(b"\r\n\r\nbody\r\n")
