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
  job lines (answers with protocol lines and goes on).

Example counts are kept small so that the file runs in seconds.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import smtplib
import subprocess
import time
import tomllib

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
