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
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field


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
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    return obj


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
            job=int(obj["job"]),
            domain=str(obj["domain"]),
            messages=[
                Message(
                    sender=str(m["sender"]),
                    data=base64.b64decode(m["data"], validate=True),
                    recipients=[Recipient(int(r["id"]), str(r["to"])) for r in m["recipients"]],
                )
                for m in obj["messages"]
            ],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad job line: {exc!r}") from None


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
        if not isinstance(obj["done"], int):
            raise ProtocolError("bad done line")
        return obj["done"]
    if "error" in obj:
        return str(obj["error"])
    try:
        result = Result(**obj)
    except TypeError as exc:
        raise ProtocolError(f"bad result line: {exc}") from None
    if result.status not in STATUSES or not isinstance(result.id, int):
        raise ProtocolError(f"bad result line: status {result.status!r}")
    return result
