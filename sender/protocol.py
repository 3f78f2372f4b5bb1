"""The runner <-> sender child protocol: line-delimited JSON over pipes.

The runner starts ``python -m sender`` with a pipe on its stdin and one on its
stdout (stderr is inherited, so a crashing child's traceback reaches the
runner's log).  Every message is one JSON object on one line, UTF-8, ``\\n``
terminated.  Message bodies travel base64-encoded, so any 8-bit content
survives the trip.

Runner -> child (stdin)
    The first line is the sender configuration::

        {"config": {"helo_name": "...", "port": 25, ...}}   (see SenderConfig)

    Every later line is one job: one destination domain, one or more messages,
    each with one or more recipients in that domain::

        {"job": 7, "domain": "example.org",
         "messages": [{"sender": "a@example.com", "data": "<base64 bytes>",
                       "recipients": [{"id": 41, "to": "bob@example.org"}]}]}

    EOF on stdin means "exit now": the child finishes nothing further.

Child -> runner (stdout)
    One result line per recipient, as soon as its outcome is known::

        {"id": 41, "status": "sent", "code": 250, "dsn": "2.0.0",
         "reply": "250 2.0.0 Ok: queued as 1234", "relay": "mx.example.org[127.0.0.2]:25",
         "duration": 0.043}

    ``status`` is ``sent``, ``deferred`` or ``bounced``; ``code`` is the SMTP
    reply code or null when no server answered (DNS failure, connection
    refused); ``dsn`` is the RFC 3463 enhanced status code, the server's own
    when it sent one, else one derived from the failure.  After the last
    result of a job the child writes ``{"done": 7}`` and reads the next job.
    A line the child cannot parse is answered with ``{"error": "..."}``;
    any id of that job it could read is then answered as deferred.

A recipient that the runner sent but got no result for (the child died, hung
or wrote garbage) is deferred by the runner with dsn 4.3.0.

Decoding is strict in both directions: every field must have its type (an id
is an integer, not true; a reply is a string, not an object), so a garbage
line becomes a ProtocolError where it is read, never a bad value that fails
later (in the store, or in the result journal the runner replays).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from typing import Any


class ProtocolError(ValueError):
    """A line on the child pipe is not a valid protocol message."""


@dataclass
class SenderConfig:
    helo_name: str = "localhost"
    port: int = 25
    dns_nameservers: list[str] = field(default_factory=list)
    dns_port: int = 53
    dns_timeout: float = 10.0
    tls: str = "may"  # none | may | encrypt
    mx_limit: int = 5
    connect_timeout: float = 30.0
    greeting_timeout: float = 300.0
    helo_timeout: float = 300.0
    mail_timeout: float = 300.0
    rcpt_timeout: float = 300.0
    data_init_timeout: float = 120.0
    data_block_timeout: float = 180.0
    data_done_timeout: float = 600.0
    quit_timeout: float = 300.0
    connection_cache_time: float = 2.0
    connection_reuse_time: float = 300.0
    # A file descriptor the child appends each result line to before it writes
    # the line on stdout (the runner's RUN_DIR/children.journal: spoold/journal.py);
    # -1 for none.
    journal_fd: int = -1


@dataclass
class Recipient:
    id: int
    to: str


@dataclass
class Message:
    sender: str
    data: bytes
    recipients: list[Recipient]


@dataclass
class Job:
    job: int
    domain: str
    messages: list[Message]


@dataclass
class Result:
    id: int
    status: str  # sent | deferred | bounced
    code: int | None
    dsn: str
    reply: str
    relay: str
    duration: float


STATUSES = ("sent", "deferred", "bounced")


def _line(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _load(line: bytes) -> dict:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {type(exc).__name__}: {exc}"[:200]) from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    return obj


def _typed(value: object, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is of ``kind`` (a bool is no integer here), else ProtocolError."""
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ProtocolError(f"{what}: expected {_names(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ProtocolError(f"{what}: expected {_names(kind)}, got {type(value).__name__}")
    return value


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


_RESULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": int, "status": str, "code": (int, type(None)), "dsn": str, "reply": str,
    "relay": str, "duration": (int, float)}


def encode_config(config: SenderConfig) -> bytes:
    return _line({"config": asdict(config)})


def decode_config(line: bytes) -> SenderConfig:
    obj = _load(line)
    if not isinstance(obj.get("config"), dict):
        raise ProtocolError("first line is not a config line")
    try:
        return SenderConfig(**obj["config"])
    except TypeError as exc:
        raise ProtocolError(f"bad config line: {exc}") from None


def encode_job(job: Job) -> bytes:
    return _line({
        "job": job.job,
        "domain": job.domain,
        "messages": [
            {
                "sender": m.sender,
                "data": base64.b64encode(m.data).decode("ascii"),
                "recipients": [{"id": r.id, "to": r.to} for r in m.recipients],
            }
            for m in job.messages
        ],
    })


def decode_job(line: bytes) -> Job:
    obj = _load(line)
    try:
        return Job(
            job=_typed(obj["job"], int, "job"),
            domain=_typed(obj["domain"], str, "domain"),
            messages=[
                Message(
                    sender=_typed(m["sender"], str, "sender"),
                    data=base64.b64decode(_typed(m["data"], str, "data"), validate=True),
                    recipients=[Recipient(_typed(r["id"], int, "recipient id"),
                                          _typed(r["to"], str, "recipient"))
                                for r in _typed(m["recipients"], list, "recipients")],
                )
                for m in _typed(obj["messages"], list, "messages")
            ],
        )
    except ProtocolError as exc:
        raise ProtocolError(f"bad job line: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad job line: {exc!r}"[:200]) from None


def encode_result(result: Result) -> bytes:
    return _line(asdict(result))


def encode_done(job_id: int) -> bytes:
    return _line({"done": job_id})


def encode_error(reason: str) -> bytes:
    return _line({"error": reason})


def decode_reply(line: bytes) -> Result | int | str:
    """Decode one child line: a Result, a finished job id (int) or an error (str)."""
    obj = _load(line)
    if "done" in obj:
        return _typed(obj["done"], int, "bad done line")
    if "error" in obj:
        return str(obj["error"])
    if obj.keys() != _RESULT_FIELDS.keys():
        raise ProtocolError(f"bad result line: fields {sorted(obj)!r}"[:200])
    for name, kind in _RESULT_FIELDS.items():
        _typed(obj[name], kind, f"bad result line: {name}")
    if obj["status"] not in STATUSES:
        raise ProtocolError(f"bad result line: status {obj['status']!r}"[:200])
    return Result(**obj)
