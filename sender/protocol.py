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
                       "recipients": [{"id": 41, "to": "bob@example.org"}]}],
         "targets": [["mx.example.org", "192.0.2.7", 10]]}

    ``targets`` (optional) is the domain's route as an earlier job found it,
    still within its DNS TTL: MX host, address and preference in the order
    to try them.  A child given targets skips the DNS lookup.

    A mailout's messages carry no data: the child renders each one
    (sender/render.py) from the job's "mailings" (one per mailout in the
    job, given once) and the message's "personal" fields::

        {"job": 8, "domain": "example.org",
         "mailings": {"3": {"sender": "News <news@example.com>", "subject": "...",
                            "text": "...", "html": null,
                            "unsubscribe_url": "https://.../{token}",
                            "unsubscribe_mailto": "unsubscribe@example.com"}},
         "messages": [{"sender": "news@example.com", "data": "", "mailing": "3",
                       "personal": {"contact": {"email": "...", "name": "...",
                                                "attributes": {...}},
                                    "token": "..."},
                       "recipients": [{"id": 42, "to": "bob@example.org"}]}]}

    EOF on stdin means "exit now": the child finishes nothing further.

Child -> runner (stdout)
    One result line per recipient, as soon as its outcome is known::

        {"id": 41, "status": "sent", "code": 250, "dsn": "2.0.0",
         "reply": "250 2.0.0 Ok: queued as 1234", "relay": "mx.example.org[127.0.0.2]:25",
         "duration": 0.043, "tls": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384",
         "tls_policy": "may"}

    ``status`` is ``sent``, ``deferred`` or ``bounced``; ``code`` is the SMTP
    reply code or null when no server answered (DNS failure, connection
    refused); ``dsn`` is the RFC 3463 enhanced status code, the server's own
    when it sent one, else one derived from the failure.  ``tls`` and
    ``cipher`` describe the session that gave the outcome ("none" without
    TLS or without a session); ``tls_policy`` names the STARTTLS policy that
    applied and its source, and in MTA-STS testing mode what enforce would
    have refused.  Fields after ``duration`` may be left out.  After the last
    result of a job the child writes the done line and reads the next job::

        {"done": 7, "targets": [["mx.example.org", "192.0.2.7", 10]], "ttl": 60,
         "kept": "192.0.2.7:25"}

    ``targets`` and ``ttl`` (seconds) are present when the child looked the
    route up itself, for the runner to hand to later jobs; ``kept`` names the
    endpoint of the connection the child keeps open for a next job, if any.
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
    tls: str = "may"  # none | may | encrypt | verify
    tls_policy: dict[str, str] = field(default_factory=dict)  # domain or .parent -> level
    tls_ca_file: str = ""  # CA certificates for verify and MTA-STS; "" = the system's
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
    mta_sts: bool = False  # the runner passes mta_sts.enabled
    mta_sts_cache_dir: str = ""
    mta_sts_port: int = 443
    mta_sts_timeout: float = 10.0
    # From domain -> {"selector": ..., "key_file": absolute path}; key files, never keys
    dkim_domains: dict[str, dict[str, str]] = field(default_factory=dict)
    dkim_headers: list[str] = field(default_factory=list)
    # A file descriptor the child appends each result line to before it writes
    # the line on stdout (the runner's RUN_DIR/children.journal: spoold/journal.py);
    # -1 for none.
    journal_fd: int = -1


JOURNAL_FD = 3  # the fd a child of spoold run finds its journal at (sender.zygote)
ZYGOTE_SPAWN = b"spawn"  # the runner's request to sender.zygote: see there
ZYGOTE_BATCH = 100  # children per request at most: 201 descriptors, within SCM_MAX_FD (253)


@dataclass(frozen=True)
class Target:
    """One address of one MX host, in the order it should be tried."""

    host: str
    address: str
    preference: int = 0


@dataclass
class Recipient:
    id: int
    to: str


@dataclass
class Mailing:
    """What every message of one mailout shares; the child renders each copy from it."""

    sender: str  # the From header: an address, or "Name <address>"
    subject: str  # Jinja2 template source, like text and html
    text: str
    html: str | None
    unsubscribe_url: str  # "{token}" stands for the recipient's token
    unsubscribe_mailto: str  # an address, or "" for none


@dataclass
class Personal:
    """One mailout recipient's side of the rendering."""

    contact: dict  # email, name, attributes
    token: str  # unsubscribe token (spoold.unsubscribe)


@dataclass
class Message:
    sender: str
    data: bytes
    recipients: list[Recipient]
    mailing: str | None = None  # key into Job.mailings: rendered by the child
    personal: Personal | None = None


@dataclass
class Job:
    job: int
    domain: str
    messages: list[Message]
    mailings: dict[str, Mailing] = field(default_factory=dict)
    targets: list[Target] | None = None  # a route still fresh: no DNS lookup needed


@dataclass
class Done:
    """The end of a job, with what the child learned that later jobs can use."""

    job: int
    targets: list[Target] | None = None  # the route it looked up, if it did
    ttl: float = 0.0  # how long that route stays valid, in seconds
    kept: str | None = None  # "address:port" of the connection it keeps open


@dataclass
class Result:
    id: int
    status: str  # sent | deferred | bounced
    code: int | None
    dsn: str
    reply: str
    relay: str
    duration: float
    tls: str = "none"  # protocol version of the session, e.g. "TLSv1.3", or "none"
    cipher: str = "none"  # cipher suite of the session, or "none"
    tls_policy: str = ""  # the policy that applied and where from, e.g. "verify (mta-sts)"


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
_RESULT_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "tls": str, "cipher": str, "tls_policy": str}


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


def _encode_targets(targets: list[Target]) -> list[list]:
    return [[t.host, t.address, t.preference] for t in targets]


def _decode_targets(value: object) -> list[Target] | None:
    if value is None:
        return None
    targets = []
    for target in _typed(value, list, "targets"):
        if not isinstance(target, list) or len(target) != 3:
            raise ProtocolError("targets: expected [host, address, preference] lists")
        host, address, preference = target
        targets.append(Target(_typed(host, str, "target host"),
                              _typed(address, str, "target address"),
                              _typed(preference, int, "target preference")))
    return targets


def _encode_message(m: Message) -> dict:
    out = {
        "sender": m.sender,
        "data": base64.b64encode(m.data).decode("ascii"),
        "recipients": [{"id": r.id, "to": r.to} for r in m.recipients],
    }
    if m.mailing is not None:
        out["mailing"] = m.mailing
        out["personal"] = asdict(m.personal)
    return out


def encode_job(job: Job) -> bytes:
    obj = {"job": job.job, "domain": job.domain,
           "messages": [_encode_message(m) for m in job.messages]}
    if job.mailings:
        obj["mailings"] = {key: asdict(mailing) for key, mailing in job.mailings.items()}
    if job.targets:
        obj["targets"] = _encode_targets(job.targets)
    return _line(obj)


def _decode_message(m: dict) -> Message:
    personal = _typed(m.get("personal"), (dict, type(None)), "personal")
    return Message(
        sender=_typed(m["sender"], str, "sender"),
        data=base64.b64decode(_typed(m["data"], str, "data"), validate=True),
        recipients=[Recipient(_typed(r["id"], int, "recipient id"),
                              _typed(r["to"], str, "recipient"))
                    for r in _typed(m["recipients"], list, "recipients")],
        mailing=_typed(m.get("mailing"), (str, type(None)), "mailing"),
        personal=None if personal is None else Personal(
            _typed(personal["contact"], dict, "contact"),
            _typed(personal["token"], str, "token")),
    )


def decode_job(line: bytes) -> Job:
    obj = _load(line)
    try:
        job = Job(
            job=_typed(obj["job"], int, "job"),
            domain=_typed(obj["domain"], str, "domain"),
            messages=[_decode_message(_typed(m, dict, "message"))
                      for m in _typed(obj["messages"], list, "messages")],
            mailings={str(k): Mailing(**_typed(v, dict, "mailing"))
                      for k, v in _typed(obj.get("mailings", {}), dict, "mailings").items()},
            targets=_decode_targets(obj.get("targets")),
        )
    except ProtocolError as exc:
        raise ProtocolError(f"bad job line: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad job line: {exc!r}"[:200]) from None
    for message in job.messages:
        if message.mailing is not None and (message.mailing not in job.mailings
                                            or message.personal is None):
            raise ProtocolError(f"bad job line: message for mailing {message.mailing!r} "
                                "without its mailing or personal fields")
    return job


def encode_result(result: Result) -> bytes:
    return _line(vars(result))  # its fields are plain values: no deep copy needed


def encode_done(done: Done) -> bytes:
    obj: dict = {"done": done.job}
    if done.targets:
        obj.update(targets=_encode_targets(done.targets), ttl=done.ttl)
    if done.kept:
        obj["kept"] = done.kept
    return _line(obj)


def encode_error(reason: str) -> bytes:
    return _line({"error": reason})


def decode_reply(line: bytes) -> Result | Done | str:
    """Decode one child line: a Result, a Done or an error (str)."""
    obj = _load(line)
    if "done" in obj:
        try:
            kept = _typed(obj.get("kept"), (str, type(None)), "kept")
            return Done(_typed(obj["done"], int, "job id"), _decode_targets(obj.get("targets")),
                        float(_typed(obj.get("ttl", 0.0), (int, float), "ttl")), kept)
        except ProtocolError as exc:
            raise ProtocolError(f"bad done line: {exc}"[:200]) from None
    if "error" in obj:
        return str(obj["error"])
    if not _RESULT_FIELDS.keys() <= obj.keys() <= _RESULT_FIELDS.keys() | _RESULT_OPTIONAL.keys():
        raise ProtocolError(f"bad result line: fields {sorted(obj)!r}"[:200])
    for name, value in obj.items():
        _typed(value, {**_RESULT_FIELDS, **_RESULT_OPTIONAL}[name], f"bad result line: {name}")
    if obj["status"] not in STATUSES:
        raise ProtocolError(f"bad result line: status {obj['status']!r}"[:200])
    return Result(**obj)
