"""Bad input, generated (hypothesis): every refusal is specific, nothing crashes, nothing leaks.

- addresses: anything is either a normalised mailbox that is safe on an SMTP
  command line, or an AddressError naming it;
- enqueue/compose: any subject, body and recipients either queue a message
  whose header section holds exactly the headers spoold writes (none
  injected), or raise a SpooldError and leave the store as it was;
- whole messages: prepare_message's output is CRLF text within RFC 5322's
  line limit, or a MessageError;
- settings: any TOML document is a Config the sender children accept, or a
  ConfigError naming the section or key;
- the child protocol, both directions: any line is either a well-typed
  message or a ProtocolError; the runner survives a child writing garbage
  (its rows deferred, written to the store), and a child survives garbage
  job lines (answers with protocol lines and goes on);
- contacts files: any mix of good and bad rows (bad addresses, wrong field
  counts, Latin-1 bytes, NUL and other control characters, 200 KB fields,
  quoted line breaks, with or without a BOM, CRLF or LF) imports exactly the
  good rows and names each bad one by its first line; --strict writes
  nothing when any is bad; unreadable headers (no email column, UTF-16)
  are refused by line 1;
- templates: any source is saved and renders, or is refused with every
  problem's part and line, and nothing is stored; no template or contact
  value adds a header to the rendered message;
- --where filters: any text compiles to SQL made only of the store's own
  words with every value a bound parameter (run on SQLite and MariaDB, and
  checked against Python for simple comparisons), or a FilterError naming
  the token where it stands;
- VERP addresses and unsubscribe tokens: round trips hold, and a changed
  id, MAC, secret or spelling (leading zero, non-ASCII digits) is refused;
- bounce reports: any bytes (and mutations of a DSN, an ARF report, an SES
  notification, a qmail bounce, an auto-reply) are a Report or a
  ReportError;
- the submission listener, over a real socket: garbage commands get a 5xx
  (never a 4xx or a dropped connection), and it keeps taking mail.

Example counts are kept small so that the file runs in seconds.
"""

from __future__ import annotations

import ast
import csv
import email
import email.policy
import fcntl
import io
import json
import math
import os
import re
import signal
import smtplib
import socket
import subprocess
import time
import tomllib
import uuid

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import spoold
from sender import __main__ as child_main
from sender.protocol import (STATUSES, Job, ProtocolError, Result, SenderConfig, decode_config,
                             decode_job, decode_reply, encode_config)
from spoold import config as config_mod
from spoold.address import parse_address
from spoold.errors import AddressError, ConfigError, SpooldError
from spoold.message import MAX_LINE, prepare_message
from spoold.store import store_for

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# Text that stresses every layer: line breaks of every kind, NUL, surrogates
# (what argv decoding leaves of undecodable bytes), non-ASCII, quotes, brackets.
NASTY = st.sampled_from(["\r", "\n", "\r\n", "\0", "\x85", "\u2028", "\x0b", "\udcff", "é",
                         "ü", "\u4e2d", '"', "\\", "<", ">", "@", ",", ":", " ", "\t", ".",
                         "=?utf-8?q?x?=", "Bcc: evil@x.test", "RCPT TO:<evil@x.test>"])
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=8)), max_size=12).map("".join)
LOCAL = st.one_of(
    st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[A-Za-z0-9_-]{1,10}){0,2}",
                  fullmatch=True),
    st.from_regex(r'"([ !#-\[\]-~]|\\[ -~]){0,20}"', fullmatch=True),
    TEXT)
DOMAIN = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,10}){1,3}", fullmatch=True),
    st.lists(st.text(alphabet="abcäöüßéçñ\u4e2d\u0431-", min_size=1, max_size=70),
             min_size=2, max_size=5).map(".".join),
    TEXT)
ADDRESS = st.one_of(st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN),
                    TEXT, st.from_regex(r"[a-z]{70}@[a-z]{200}\.test", fullmatch=True))


@FAST
@given(ADDRESS)
def test_an_address_is_normalised_and_safe_or_refused_by_name(address):
    try:
        normal = parse_address(address)
    except AddressError as exc:
        assert str(exc).startswith(f"bad address {address!r}: "), exc
        return
    assert not re.search(r"[\r\n\0]", normal)
    local, _, domain = normal.rpartition("@")
    assert local and domain.isascii() and domain == domain.lower() and len(normal) <= 254
    assert parse_address(normal) == normal
    # On the wire (smtplib re-parses it: a quoted pair like \\0 may become 0, the same
    # mailbox), never the null path, never a line break, still a mailbox of the domain.
    wire = smtplib.quoteaddr(normal)
    assert wire != "<>" and wire.startswith("<") and wire.endswith(">")
    assert not re.search(r"[\r\n\0]", wire)
    assert parse_address(wire[1:-1]).rpartition("@")[2] == domain


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    directory = tmp_path_factory.mktemp("props")
    path = directory / "spoold.toml"
    path.write_text(config_mod.dump({"database": {"url": f"sqlite://{directory / 'q.db'}"},
                                     "runner": {"run_dir": str(directory / "run")}}))
    config = config_mod.load(path)
    store = store_for(config)
    yield config, store
    store.close()


_COMPOSED = {"from", "to", "subject", "date", "message-id", "content-type",
             "content-transfer-encoding", "mime-version"}


def _header_names(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0].decode().lower() for line in head.split(b"\r\n")
            if line[:1] not in (b" ", b"\t")]


@FAST
@given(subject=TEXT, body=TEXT, recipients=st.lists(ADDRESS, min_size=0, max_size=3))
def test_enqueue_stores_only_its_own_headers_or_nothing(queue, subject, body, recipients):
    config, store = queue
    before = store.state_counts()
    try:
        result = spoold.enqueue(sender="app@spoold.test", recipients=recipients,
                                subject=subject, body=body, config=config, store=store)
    except SpooldError as exc:
        assert str(exc) and "\n" not in str(exc)
        assert store.state_counts() == before, "nothing half-queued"
        return
    assert result.ids and len(result.ids) == len(result.queued)
    rows = {row.id: row for row in store.claim("props", 10**6, time.time() + 60)}
    (message,) = store.bodies([rows[result.ids[0]].message_id]).values()
    store.release("props", list(rows))
    names = _header_names(message)
    assert sorted(names) == sorted(_COMPOSED), names
    assert not re.search(rb"(?<!\r)\n|\r(?!\n)|\0", message)
    assert max(len(line) for line in message.split(b"\r\n")) <= MAX_LINE
    store.delete(result.ids)


@FAST
@given(st.binary(max_size=300) | TEXT.map(lambda t: t.encode("utf-8", "surrogateescape")))
def test_a_whole_message_is_clean_crlf_text_or_refused(data):
    try:
        prepared = prepare_message(data)
    except SpooldError as exc:
        assert type(exc).__name__ == "MessageError" and str(exc)
        return
    assert prepared.endswith(b"\r\n") and b"\0" not in prepared
    assert not re.search(rb"(?<!\r)\n|\r(?!\n)", prepared)
    assert all(len(line) <= MAX_LINE for line in prepared.split(b"\r\n"))
    names = _header_names(prepared)
    assert "date" in names and "message-id" in names


SECTION_KEYS = [(s.section, s.key) for s in config_mod.SETTINGS]
VALUE = st.one_of(st.integers(min_value=-2**70, max_value=2**70), st.floats(), st.booleans(),
                  TEXT, st.lists(TEXT, max_size=3), st.sampled_from(["5m", "2d", "1e9", "-1",
                                                                   "none", "sqlite:///x"]),
                  st.lists(st.sampled_from(["127.0.0.1", "::1", "dns.example"]), max_size=2),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
DOCUMENT = st.dictionaries(
    st.one_of(st.sampled_from(sorted({s for s, _ in SECTION_KEYS})), st.text(max_size=6)),
    st.one_of(st.dictionaries(st.one_of(st.sampled_from([k for _, k in SECTION_KEYS]),
                                        st.text(max_size=6)), VALUE, max_size=4), VALUE),
    max_size=4)


@FAST
@given(DOCUMENT)
def test_a_settings_document_is_usable_or_refused_by_key(document):
    try:
        config = config_mod.build(document)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("<settings>: ")
        named = re.match(r"<settings>: (unknown section \[|unknown key |(\w+)\.(\w+): |"
                         r"(\w+) must be a \[section\] table)", message)
        assert named, message
        return
    from spoold.runner import sender_config

    line = encode_config(sender_config(config))
    assert decode_config(line) == sender_config(config)
    for section, key in SECTION_KEYS:
        value = config.value(section, key)
        assert not (isinstance(value, float) and not math.isfinite(value)), (section, key)


@FAST
@given(st.binary(max_size=200))
def test_settings_files_of_any_bytes_are_read_or_refused(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "spoold.toml"
    path.write_bytes(raw)
    try:
        config_mod.load(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")
    else:
        tomllib.loads(raw.decode())  # only a valid TOML document may be accepted


# -- the child protocol ----------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
RESULTISH = st.fixed_dictionaries({}, optional={
    "id": JSON | st.integers(1, 5), "status": JSON | st.sampled_from(STATUSES),
    "code": JSON | st.sampled_from([250, None]), "dsn": JSON | st.just("2.0.0"),
    "reply": JSON | st.just("250 ok"), "relay": JSON | st.just("mx"),
    "duration": JSON | st.just(0.1), "done": JSON, "error": JSON})
JOBISH = st.fixed_dictionaries({}, optional={
    "job": JSON | st.integers(1, 9), "domain": JSON | st.just("x.test"),
    "messages": JSON | st.lists(st.fixed_dictionaries({}, optional={
        "sender": JSON | st.just("a@x.test"), "data": JSON | st.just("eA=="),
        "recipients": JSON | st.lists(st.fixed_dictionaries({}, optional={
            "id": JSON | st.integers(1, 5), "to": JSON | st.just("b@x.test")}), max_size=2)}),
        max_size=2)})
LINE = st.one_of(st.binary(max_size=100), JSON.map(lambda v: json.dumps(v).encode()),
                 RESULTISH.map(lambda v: json.dumps(v).encode()),
                 JOBISH.map(lambda v: json.dumps(v).encode()),
                 # deep enough to break a recursive parser; three of them still
                 # fit the pipe the test writes before the runner reads it
                 st.integers(1, 20_000).map(lambda n: b"[" * n))


@FAST
@given(LINE)
def test_a_child_line_is_well_typed_or_a_protocol_error(line):
    try:
        reply = decode_reply(line)
    except ProtocolError:
        return
    if isinstance(reply, Result):
        assert type(reply.id) is int and reply.status in STATUSES
        assert reply.code is None or type(reply.code) is int
        assert all(isinstance(v, str) for v in (reply.dsn, reply.reply, reply.relay))
        assert type(reply.duration) in (int, float)
    else:
        assert type(reply) in (int, str)


@FAST
@given(LINE)
def test_a_job_line_is_well_typed_or_a_protocol_error(line):
    try:
        job = decode_job(line)
    except ProtocolError:
        return
    assert type(job.job) is int and isinstance(job.domain, str)
    for message in job.messages:
        assert isinstance(message.sender, str) and isinstance(message.data, bytes)
        assert all(type(r.id) is int and isinstance(r.to, str) for r in message.recipients)


@FAST
@given(LINE)
def test_the_child_survives_garbage_job_lines(line):
    assume(not _is_job(line))  # a real job would be delivered; that is other tests' business
    out = io.BytesIO()
    child = child_main._Child(SenderConfig(dns_nameservers=["127.0.0.1"], dns_port=9,
                                           dns_timeout=0.05), child_main._Output(out))
    child.serve(line)
    answers = [json.loads(raw) for raw in out.getvalue().splitlines()]
    assert "error" in answers[0]
    for answer in answers[1:]:
        assert answer.get("status") == "deferred" or set(answer) == {"done"}


def _is_job(line: bytes) -> bool:
    try:
        decode_job(line)
    except ProtocolError:
        return False
    return True


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(LINE, min_size=1, max_size=3))
def test_the_runner_survives_a_child_writing_garbage(queue, garbage):
    from spoold.journal import ResultJournal
    from spoold.runner import Runner

    config, store = queue
    ids = spoold.enqueue(sender="app@spoold.test", recipients=["a@x.test", "b@x.test"],
                         subject="s", body="b", config=config, store=store).ids
    runner = Runner(config)
    runner.store = store
    os.makedirs(config.runner.run_dir, exist_ok=True)
    runner.journal = ResultJournal(config.runner.run_dir)
    sleeper = subprocess.Popen(["sleep", "60"])
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)  # the garbage, unread, must fit
    try:
        rows = store.claim(runner.owner, 10**6, time.time() + 60)
        child = _fake_child(sleeper.pid, read_end)  # a "child" whose output we write
        runner.pool.children[sleeper.pid] = child
        runner.pool.assign(child, "x.test")
        runner.active["x.test"] += 1
        child.pending = {row.id: row for row in rows}
        os.write(write_end, b"\n".join(garbage) + b"\n")
        os.close(write_end)
        write_end = -1
        runner._on_child_output(child)  # must not raise
        runner._flush()  # and what it decided must go into the store
        assert not child.pending or not child.closed
        counts = store.state_counts()
        assert counts["active"] == len(child.pending)
    finally:
        if write_end >= 0:
            os.close(write_end)
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        runner.journal.close()
        store.release(runner.owner, ids)
        store.delete(ids)


def _fake_child(pid: int, stdout: int):
    from spoold.pool import Child

    return Child(pid, stdin=-1, stdout=stdout, started_at=time.monotonic(),
                 last_heard=time.monotonic())


def test_job_lines_are_never_half_decoded():
    """The cases the generators found first, kept as plain examples."""
    for line in (b"[" * 100_000, b'{"job": 1e999, "domain": "x", "messages": []}',
                 b'{"job": true, "domain": "x", "messages": []}'):
        with pytest.raises(ProtocolError):
            decode_job(line)
    for line in (b'{"done": true}', b'{"id": 1, "status": "sent", "code": 250, "dsn": "2.0.0",'
                 b' "reply": {"a": 1}, "relay": "x", "duration": 0}'):
        with pytest.raises(ProtocolError):
            decode_reply(line)
    assert isinstance(decode_job(b'{"job": 1, "domain": "x", "messages": []}'), Job)


# -- contacts from CSV files -------------------------------------------------------------

CELL = st.lists(st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=12)
                | st.sampled_from(["\t", "\r", "\n", "\r\n", '"', ","]),
                max_size=4).map("".join)  # a name or an attribute may span lines
# A row, as what it is and what spoold must make of it: (kind, cells).
GOOD_ROW = st.tuples(st.just("good"), CELL, st.lists(CELL, min_size=2, max_size=2))
BAD_ROW = st.one_of(
    st.tuples(st.just("address"), st.sampled_from(["no-at-sign", "a@", "@b.test", "a b@c.test",
                                                    "x@-bad-.test", "a@b.test\nBcc: c@d"])),
    st.tuples(st.just("width"), st.integers(1, 3)),  # fields missing or too many
    st.tuples(st.just("latin1"), st.sampled_from(["café", "Müller", "ñ"])),
    st.tuples(st.just("nul"), st.sampled_from(["name", "city", "plan"])),
    st.tuples(st.just("control"), st.sampled_from(["\x0b", "\x1b", "\x7f", "\x08"])),
    st.tuples(st.just("huge"), st.just(200_000)))
ROWS = st.lists(st.one_of(GOOD_ROW, BAD_ROW, st.just(("blank",))), max_size=8)


def _csv_file(rows, bom: bool, newline: str) -> tuple[bytes, dict[int, str], dict[str, tuple]]:
    """The file's bytes, the first line of each bad row (-> its kind), and the good
    rows by address (-> name, attributes)."""
    header = ["email", "name", "city", "plan"]
    out, bad, good, line = [], {}, {}, 2
    for index, row in enumerate(rows):
        email = f"u{index}@good.test"
        kind = row[0]
        cells: list[str] = []
        raw = None
        if kind == "good":
            cells = [email, row[1], *row[2]]
            good[email] = (row[1].strip(), {k: v for k, v in zip(header[2:], row[2]) if v})
        elif kind == "address":
            cells = [row[1], "n", "c", "p"]
        elif kind == "width":
            cells = [email, "n", "c", "p", "extra"][:row[1]] if row[1] < 3 else \
                [email, "n", "c", "p", "x", "y"]
        elif kind == "latin1":
            raw = ",".join([email, row[1], "c", "p"]).encode("latin-1")
        elif kind == "nul":
            cells = [email, "n", "c", "p"]
            cells[header.index(row[1])] = "a\0b"
        elif kind == "control":
            cells = [email, f"Ann{row[1]}Smith", "c", "p"]
        elif kind == "huge":
            cells = [email, "n", "x" * row[1], "p"]
        if kind != "blank":
            buffer = io.StringIO()
            # (csv quotes a field with a line break only if it is in lineterminator)
            quoting = csv.QUOTE_ALL if re.search("[\r\n]", "".join(cells)) else csv.QUOTE_MINIMAL
            csv.writer(buffer, lineterminator=newline, quoting=quoting).writerow(cells)
            raw = raw + newline.encode() if raw is not None else buffer.getvalue().encode()
        else:
            raw = newline.encode()
        if kind not in ("good", "blank"):
            bad[line] = kind
        line += len(re.findall(rb"\r\n|\r|\n", raw))  # as Python's universal newlines
        out.append(raw)
    head = ",".join(header).encode() + newline.encode()
    return (b"\xef\xbb\xbf" if bom else b"") + head + b"".join(out), bad, good


def _fresh_store(directory):
    from spoold.store import open_store

    store = open_store(f"sqlite://{directory / 'contacts.db'}")
    store.upgrade()
    return store


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS, bom=st.booleans(), newline=st.sampled_from(["\r\n", "\n"]),
       strict=st.booleans())
def test_a_contacts_file_imports_its_good_rows_and_names_each_bad_line(
        tmp_path_factory, rows, bom, newline, strict):
    from spoold.contacts_import import import_contacts
    from spoold.errors import ContactsFileError

    directory = tmp_path_factory.mktemp("csv")
    data, bad, good = _csv_file(rows, bom, newline)
    path = directory / "people.csv"
    path.write_bytes(data)
    store = _fresh_store(directory)
    try:
        try:
            report = import_contacts(store, path, "news", strict=strict, show_progress=False)
        except ContactsFileError as exc:
            assert strict and bad, exc
            listed = re.findall(r"^  line (\d+): \S", str(exc), re.M)
            assert sorted(map(int, listed)) == sorted(bad), (str(exc), bad)
            assert store.contact_count() == 0, "--strict wrote something"
            return
        assert not (strict and bad)
        lines = {}
        for entry in report.bad:
            number, reason = re.fullmatch(r"line (\d+): (.+)", entry, re.S).groups()
            assert "\n" not in reason and len(reason) < 300, entry
            lines[int(number)] = reason
        assert sorted(lines) == sorted(bad), (report.bad, bad)
        assert report.inserted == len(good) and report.updated == 0
        stored = {c["email"]: (c["name"], c["attributes"]) for c in store.contacts(limit=100)}
        assert stored == good
    finally:
        store.close()


@pytest.mark.parametrize("data, reason", [
    (b"name,city\r\nAnn,Paris\r\n", "no 'email' column"),
    (b"email,city,city\r\na@b.test,x,y\r\n", "appears twice"),
    (b"email,first name\r\na@b.test,x\r\n", "not a usable attribute name"),
    ("email,name\r\na@b.test,Ann\r\n".encode("utf-16"), "UTF-16"),
    (b"", "empty"),
])
def test_a_contacts_file_that_cannot_be_read_is_refused_by_line_one(tmp_path, data, reason):
    from spoold.contacts_import import import_contacts
    from spoold.errors import ContactsFileError

    path = tmp_path / "people.csv"
    path.write_bytes(data)
    store = _fresh_store(tmp_path)
    try:
        with pytest.raises(ContactsFileError, match=reason):
            import_contacts(store, path, show_progress=False)
        assert store.contact_count() == 0
    finally:
        store.close()


# -- templates ---------------------------------------------------------------------------

PIECE = st.one_of(TEXT, st.sampled_from([
    "{{ name }}", "{{ email }}", "{{ attributes.city }}", "{{ attributes['city'] }}",
    "{{ unsubscribe_url }}", "{{ nope }}", "{{ attributes.nowhere }}", "{% if name %}",
    "{% endif %}", "{% for x in attributes %}{{ x }}{% endfor %}", "{{", "}}", "{%", "%}",
    "{# note #}", "{{ name|upper }}", "{{ name ~ '\r\nBcc: evil@x.test' }}", "\n",
    "{{ ''.__class__ }}", "{{ 1/0 }}"]))
SOURCE = st.lists(PIECE, max_size=6).map("".join)


def _rendered(html: str | None) -> set[str]:
    """The header fields of a rendered message (a multipart one has no encoding of its own)."""
    names = {"from", "to", "subject", "date", "message-id", "list-unsubscribe",
             "list-unsubscribe-post", "mime-version", "content-type"}
    return names if html is not None else names | {"content-transfer-encoding"}


@pytest.fixture(scope="module")
def known_city(queue):
    from spoold.store.contacts import ContactIn

    config, store = queue
    store.upsert_contacts([ContactIn("known@city.test", "K", {"city": "Paris"})])
    return _Quiet((config, store))


class _Quiet(tuple):
    """A fixture's value that hypothesis's reports name in a word."""

    def __repr__(self) -> str:
        return "<config, store>"


def _render(config, subject, text, html, name, attributes, to="ann@x.test") -> bytes:
    from sender.render import render_message
    from spoold.mailout import mailing, personal

    shared = mailing(config, {"sender": "News <news@spoold.test>", "subject": subject,
                              "text": text, "html": html})
    return render_message(shared, personal("s3cret", 1, 2, to, name, attributes), to)


def _headers_of(data: bytes) -> list[str]:
    """The header names of a message, each header line checked to be a field or a fold."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    for line in head:
        assert re.match(rb"[A-Za-z-]+:( |$)|[ \t]", line), line
    return [line.split(b":", 1)[0].decode().lower() for line in head if line[:1] not in b" \t"]


@FAST
@given(subject=SOURCE, text=SOURCE, html=st.none() | SOURCE)
def test_a_template_is_saved_and_renders_or_is_refused_line_by_line(known_city, subject, text,
                                                                      html):
    from sender.render import RENDER_ERRORS
    from spoold.errors import TemplateError
    from spoold.templates import save_template

    config, store = known_city
    name = f"t-{uuid.uuid4().hex[:8]}"
    try:
        save_template(store, name, subject, text, html, create=True)
    except TemplateError as exc:
        first, *problems = str(exc).split("\n")
        assert first == f"template {name!r} refused:" and problems
        for problem in problems:
            part, line = re.match(r"  (subject|text|html), line (\d+): \S", problem).groups()
            source = {"subject": subject, "text": text, "html": html}[part]
            assert 1 <= int(line) <= len(re.findall(r"\r\n|\r|\n", source)) + 1, problem
        assert name not in {t["name"] for t in store.templates()}, "refused, yet stored"
        return
    try:
        data = _render(config, subject, text, html, "Ann", {"city": "Paris"})
    except RENDER_ERRORS:
        return  # 1/0 and the like: that recipient's copy bounces (5.6.0), see render_job
    assert sorted(_headers_of(data)) == sorted(_rendered(html))


@FAST
@given(subject=SOURCE, name=TEXT, city=TEXT, local=st.sampled_from(["ann", "o'brien", "a+b"]))
def test_nothing_in_a_template_or_a_contact_adds_a_header(known_city, subject, name, city,
                                                          local):
    from sender.render import RENDER_ERRORS, check_template

    assume(not check_template(subject, "body {{ name }} {{ attributes.city }}", None))
    config, _ = known_city
    to = f"{local}@x.test"
    try:
        data = _render(config, subject, "body {{ name }} {{ attributes.city }}",
                       "<p>{{ name }}</p>", name, {"city": city}, to)
    except RENDER_ERRORS:
        return
    assert sorted(_headers_of(data)) == sorted(_rendered("html"))
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["To"].addresses[0].addr_spec == to
    assert parsed["From"].addresses[0].addr_spec == "news@spoold.test"
    for value in parsed.values():
        assert "\n" not in str(value) and "\r" not in str(value)


# -- mailout --where filters -------------------------------------------------------------

FILTER_TOKEN = st.one_of(
    st.sampled_from(["email", "name", "domain", "city", "attributes.city", "plan", "age",
                     "attributes.", "and", "or", "not", "AND", "(", ")", "=", "!=", "<", "<=",
                     ">", ">=", "==", "<>", "!", "Paris", "'Paris'", '"Paris"', "''", "18",
                     "-2.5", "'; DROP TABLE contact; --", '"x\' OR 1=1 --"', "?", "$.city",
                     "'unterminated", "c.email", "1e3", "%", "\\"]),
    TEXT)
FILTER = st.one_of(st.lists(FILTER_TOKEN, max_size=9).map(" ".join),
                   st.lists(FILTER_TOKEN, max_size=9).map("".join),
                   st.builds(lambda f, o, v: f"{f} {o} {v}",
                             st.sampled_from(["city", "plan", "name", "age", "email"]),
                             st.sampled_from(["=", "!=", "<", ">="]),
                             st.sampled_from(["Paris", "'New York'", "18", "''", "free"])))
# Everything a compiled filter's SQL may contain: the store's own words, never the user's.
_SQL_WORD = re.compile(r"\s+|\(|\)|,|\?|'{2}|\+ 0|<>|<=|>=|=|<|>|\b(OR|AND|NOT|COALESCE)\b|"
                       r"c\.(email|name|domain|attributes)\b|json_extract|JSON_VALUE")
CONTACTS = [("ann@a.test", "Ann", {"city": "Paris", "plan": "free", "age": "30"}),
            ("bob@b.test", "Bob", {"city": "New York", "age": "17"}),
            ("cy@a.test", "", {"plan": "pro"})]


@pytest.fixture
def contacts_store(store):
    from spoold.store.contacts import ContactIn

    store.upsert_contacts([ContactIn(*c) for c in CONTACTS])
    return _Quiet((store,))


def _match_python(text: str) -> set[str] | None:
    """The contacts ``FIELD = VALUE`` / ``FIELD != VALUE`` selects, or None for other filters."""
    found = re.fullmatch(r"(city|plan|name|email) (=|!=) (Paris|'New York'|''|free)", text)
    if not found:
        return None
    field, op, value = found.groups()
    value = value.strip("'")
    selected = set()
    for email_, name, attributes in CONTACTS:
        have = {"name": name, "email": email_}.get(field, attributes.get(field, ""))
        if (have == value) == (op == "="):
            selected.add(email_)
    return selected


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(FILTER)
def test_a_filter_binds_every_value_or_names_the_bad_token(contacts_store, text):
    from spoold.errors import FilterError
    from spoold.store.filters import compile_filter

    (store,) = contacts_store
    try:
        sql, params = compile_filter(text, store.json_value)
    except FilterError as exc:
        message = str(exc)
        if message == "filter: empty":
            assert not text.strip()
            return
        where = re.fullmatch(r"filter: (?:unexpected (.+)|expected .+, found (the end|.+)) "
                             r"at character (\d+)|filter: expected .+ at character (\d+), "
                             r"found (the end|.+)", message, re.S)
        assert where, message
        token = next(g for g in (where.group(1), where.group(5), where.group(2)) if g)
        position = int(where.group(3) or where.group(4)) - 1
        if token != "the end":
            assert text[position:].startswith(ast.literal_eval(token)), (message, text)
        return
    leftover = _SQL_WORD.sub("", sql)
    assert not leftover, f"{sql!r} holds {leftover!r}, which the user wrote"
    assert sql.count("?") == len(params)
    with store.transaction(write=False) as cur:
        rows = store.execute(cur, f"SELECT c.email FROM contact c WHERE {sql}", params).fetchall()
    expected = _match_python(text)
    if expected is not None:
        assert {r[0] for r in rows} == expected, text


# -- VERP addresses and unsubscribe tokens -----------------------------------------------

IDS = st.integers(min_value=0, max_value=2**63 - 1)
SECRET = st.text(min_size=1, max_size=20).filter(lambda s: "\udcff" not in s)
DIGITS = st.sampled_from(["", "0", "00", "١٢", "+1", "-1", " 1", "1" * 20, "٣"])


@FAST
@given(queue_id=IDS, secret=st.text(st.characters(exclude_categories=["Cs"]), min_size=1,
                                    max_size=20),
       domain=st.from_regex(r"[a-z0-9]{1,10}(\.[a-z]{2,5}){1,2}", fullmatch=True),
       local=st.sampled_from(["bounces", "b.o+unce", "x"]), upper=st.booleans())
def test_a_verp_address_names_its_row_and_nothing_else(queue_id, secret, domain, local, upper):
    from spoold.bounces.verp import verp_id, verp_sender

    address = verp_sender(queue_id, secret, domain, local)
    assert verp_id(address.upper() if upper else address, secret, domain, local) == queue_id
    assert verp_id(f"<{address}>", secret, domain, local) == queue_id
    assert verp_id(address, secret + "x", domain, local) is None, "another secret's address"
    arabic = str(queue_id).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    for other in ((queue_id + 1) % 2**63, f"0{queue_id}", arabic):  # one spelling per row
        forged = address.replace(f"+{queue_id}.", f"+{other}.")
        assert verp_id(forged, secret, domain, local) is None, forged


@FAST
@given(garbage=st.one_of(TEXT, st.builds(lambda d, t: f"bounces+{d}.{t}@b.test", DIGITS,
                                         st.text(alphabet="0123456789abcdefABCDEF",
                                                 max_size=14))))
def test_garbage_is_no_verp_address(garbage):
    from spoold.bounces.verp import verp_id, verp_sender

    found = verp_id(garbage, "s3cret", "b.test")
    if found is not None:  # only a genuine address, in some letter case
        assert garbage.strip().strip("<>").lower() == verp_sender(found, "s3cret",
                                                                  "b.test").lower()


@FAST
@given(contact=IDS, mailout=IDS, secret=SECRET)
def test_an_unsubscribe_token_names_its_contact_and_mailout_only(contact, mailout, secret):
    from spoold.errors import BadToken
    from spoold.unsubscribe import check_token, make_token

    token = make_token(secret, contact, mailout)
    assert check_token(secret, token) == (contact, mailout)
    mac = token.rsplit(".", 1)[1]
    for forged in (f"{(contact + 1) % 2**63}.{mailout}.{mac}", f"{contact}.{mailout + 1}.{mac}",
                   token[:-1] + ("A" if token[-1] != "A" else "B"), f"0{token}",
                   token.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))):
        with pytest.raises(BadToken):
            check_token(secret, forged)
    with pytest.raises(BadToken):
        check_token(secret + "x", token)


@FAST
@given(garbage=st.one_of(TEXT, st.builds(lambda a, b, m: f"{a}.{b}.{m}", DIGITS, DIGITS,
                                         st.text(alphabet="AZaz09_-=+/", max_size=24)),
                         st.binary(max_size=30), st.none(), st.integers()))
def test_garbage_is_no_unsubscribe_token(garbage):
    from spoold.errors import BadToken
    from spoold.unsubscribe import check_token, make_token

    try:
        contact, mailout = check_token("s3cret", garbage)
    except BadToken:
        return
    assert garbage.strip() == make_token("s3cret", contact, mailout)  # only a genuine one


# -- bounce and complaint reports --------------------------------------------------------

_DSN = (b"From: MAILER-DAEMON@mx.x.test\r\nTo: bounces+7.abc@b.test\r\n"
        b"Subject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status;"
        b" boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.x.test"
        b"\r\n\r\nFinal-Recipient: rfc822; ann@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\nRemote-MTA: dns; mx.x.test\r\n\r\n"
        b"--B\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <bounces+7.abc@b.test>\r\n"
        b"To: ann@x.test\r\nSubject: hi\r\n\r\nhi\r\n--B--\r\n")
_ARF = (b"From: fbl@isp.test\r\nSubject: complaint\r\nMIME-Version: 1.0\r\nContent-Type: "
        b"multipart/report; report-type=feedback-report; boundary=\"F\"\r\n\r\n--F\r\n"
        b"Content-Type: text/plain\r\n\r\nA complaint.\r\n--F\r\nContent-Type: "
        b"message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: x/1\r\n"
        b"Version: 1\r\nOriginal-Rcpt-To: <bob@isp.test>\r\n\r\n--F\r\nContent-Type: "
        b"text/rfc822-headers\r\n\r\nFrom: news@spoold.test\r\nTo: bob@isp.test\r\n\r\n--F--\r\n")
_SES = (b"From: no-reply@sns.amazonaws.com\r\nSubject: AWS Notification Message\r\n"
        b"Content-Type: text/plain\r\n\r\n{\"Type\": \"Notification\", \"Message\": \"{\\\"notif"
        b"icationType\\\":\\\"Bounce\\\",\\\"bounce\\\":{\\\"bounceType\\\":\\\"Permanent\\\","
        b"\\\"bouncedRecipients\\\":[{\\\"emailAddress\\\":\\\"cy@x.test\\\",\\\"status\\\":"
        b"\\\"5.1.1\\\",\\\"diagnosticCode\\\":\\\"smtp; 550 unknown\\\"}]}}\"}\r\n")
_PROSE = (b"From: MAILER-DAEMON@old.test\r\nSubject: failure notice\r\n\r\nHi. This is the "
          b"qmail-send program.\r\n\r\n<dee@x.test>:\r\n192.0.2.1 does not like recipient.\r\n"
          b"Remote host said: 550 5.1.1 User unknown\r\nGiving up on 192.0.2.1.\r\n")
_AUTO = (b"From: eve@x.test\r\nAuto-Submitted: auto-replied\r\nSubject: Out of office\r\n\r\n"
         b"Back Monday.\r\n")
EDIT = st.tuples(st.floats(0, 1), st.sampled_from(["insert", "delete", "replace", "cut"]),
                 st.binary(max_size=12) | st.sampled_from([b"\r\n", b"\r\n\r\n", b"--B", b"--F",
                                                           b";", b"=?utf-8?b?", b"\xff", b"\0",
                                                           b"{", b"\"", b"5.", b": "]))


def _mutate(seed: bytes, edits) -> bytes:
    data = bytearray(seed)
    for where, kind, blob in edits:
        at = int(where * len(data))
        if kind == "insert":
            data[at:at] = blob
        elif kind == "delete":
            del data[at:at + len(blob) + 1]
        elif kind == "replace":
            data[at:at + len(blob)] = blob
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400),
                 st.builds(_mutate, st.sampled_from([_DSN, _ARF, _SES, _PROSE, _AUTO]),
                           st.lists(EDIT, max_size=4))))
def test_any_bytes_are_a_report_or_a_report_error(data):
    from spoold.bounces.report import Report, parse_report
    from spoold.errors import ReportError

    try:
        report = parse_report(data)
    except ReportError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(report, Report) and report.bounces
    for bounce in report.bounces:
        assert isinstance(bounce.recipient, str) and not re.search(r"[\r\n]", bounce.recipient)


def test_the_report_seeds_are_read():
    """The seeds above are real reports, so that their mutations reach deep code."""
    from spoold.bounces.report import parse_report

    read = {seed: parse_report(seed) for seed in (_DSN, _ARF, _SES, _PROSE, _AUTO)}
    assert [r.format for r in read.values()] == ["dsn", "arf", "ses", "text", "autoreply"]
    assert read[_DSN].bounces[0].recipient == "ann@x.test"


# -- the SMTP submission listener --------------------------------------------------------

@pytest.fixture(scope="module")
def submission(tmp_path_factory):
    """``python -m spoold.listeners submission`` on a free loopback port."""
    import sys

    from conftest import wait_for

    directory = tmp_path_factory.mktemp("submission")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = directory / "spoold.toml"
    path.write_text(config_mod.dump({"database": {"url": f"sqlite://{directory / 'q.db'}"},
                                     "runner": {"run_dir": str(directory / "run")},
                                     "submission": {"listen_port": port}}))
    store_for(config_mod.load(path)).close()  # the schema, before the listener opens it
    proc = subprocess.Popen([sys.executable, "-m", "spoold.listeners", "submission"],
                            env={**os.environ, "SPOOLD_CONFIG": str(path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    wait_for(listening, 20, "the submission listener")
    yield proc, port
    proc.terminate()
    proc.wait(10)


class _Client:
    """A raw SMTP client that reads every reply whole (multi-line ones included)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.lines = self.sock.makefile("rb")
        self.reply()  # the greeting

    def reply(self) -> int:
        while True:
            line = self.lines.readline(4096)
            assert re.match(rb"[2-5]\d\d[ -]", line), f"not a reply line: {line!r}"
            if line[3:4] == b" ":
                return int(line[:3])

    def send(self, data: bytes) -> int:
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


ARG = st.one_of(TEXT, st.sampled_from(["<a@b.test>", "<>", "<a@b.test> SIZE=abc",
                                       "<a@b.test> BODY=9BIT", f"<{'a' * 600}@b.test>",
                                       "<a@b.test> RCPT TO:<evil@x.test>", "<@x,@y:a@b.test>",
                                       "a@b.test", "<a@@b>", "\0", "<a@b.test\0>"]))
GARBAGE = st.one_of(
    st.builds(lambda verb, arg: f"{verb}{arg}".encode("utf-8", "surrogateescape"),
              st.sampled_from(["MAIL FROM:", "RCPT TO:", "MAIL ", "RCPT ", "XYZZY ", "DATA ",
                               "AUTH PLAIN ", "STARTTLS ", "BDAT 10 ", "EHLO ", "HELO "]), ARG),
    st.binary(max_size=40),
    st.just(b"X" * 2000)).map(lambda line: re.sub(rb"[\r\n]", b"", line))  # one line each

# Replies that are no refusal: the command was a valid one in its place.
_FINE = {250, 251, 252, 220, 235, 334, 354, 221}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(GARBAGE, min_size=1, max_size=6), body=st.binary(max_size=200))
def test_the_submission_listener_refuses_garbage_with_5xx_and_keeps_serving(submission,
                                                                             commands, body):
    proc, port = submission
    client = _Client(port)
    try:
        for line in commands:
            verb = line.split(b" ", 1)[0].upper()
            code = client.send(line + b"\r\n")
            if code == 354:
                code = client.send(body.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
            elif code == 221:
                return
            elif code == 334:  # an AUTH exchange the garbage started: end it
                code = client.send(b"*\r\n")
            # (454: aiosmtpd's answer to STARTTLS without a certificate, RFC 3207)
            assert code // 100 in (2, 3, 5) or (verb, code) == (b"STARTTLS", 454), (line, code)
            if (verb in (b"XYZZY", b"BDAT") or len(line) > 512
                    or (verb in (b"MAIL", b"RCPT") and not line.isascii())):
                assert code >= 500, (line, code)
            assert code not in _FINE or verb in (b"MAIL", b"RCPT", b"DATA", b"EHLO", b"HELO",
                                                   b"STARTTLS", b"AUTH") or not line.strip(), \
                (line, code)
    finally:
        client.close()
    assert proc.poll() is None, "the listener died"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:  # and it still takes mail
        refused = smtp.sendmail("app@spoold.test", ["ok@x.test"],
                                b"Subject: still here\r\n\r\nhello\r\n")
    assert refused == {}
