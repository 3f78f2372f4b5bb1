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


def _encode_targets(targets: list[Target]) -> list[list]:
    return [[t.host, t.address, t.preference] for t in targets]


def _decode_targets(value: object) -> list[Target] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise TypeError("targets is not a list")
    return [Target(str(host), str(address), int(preference))
            for host, address, preference in value]


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
    personal = m.get("personal")
    return Message(
        sender=str(m["sender"]),
        data=base64.b64decode(m["data"], validate=True),
        recipients=[Recipient(int(r["id"]), str(r["to"])) for r in m["recipients"]],
        mailing=None if m.get("mailing") is None else str(m["mailing"]),
        personal=None if personal is None else Personal(dict(personal["contact"]),
                                                        str(personal["token"])),
    )


def decode_job(line: bytes) -> Job:
    obj = _load(line)
    try:
        job = Job(
            job=int(obj["job"]),
            domain=str(obj["domain"]),
            messages=[_decode_message(m) for m in obj["messages"]],
            mailings={str(k): Mailing(**v) for k, v in obj.get("mailings", {}).items()},
            targets=_decode_targets(obj.get("targets")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"bad job line: {exc!r}") from None
    for message in job.messages:
        if message.mailing is not None and (message.mailing not in job.mailings
                                            or message.personal is None):
            raise ProtocolError(f"bad job line: message for mailing {message.mailing!r} "
                                "without its mailing or personal fields")
    return job


def encode_result(result: Result) -> bytes:
    return _line(asdict(result))


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
            if not isinstance(obj["done"], int):
                raise TypeError("job id is not an integer")
            kept = obj.get("kept")
            return Done(obj["done"], _decode_targets(obj.get("targets")),
                        float(obj.get("ttl", 0.0)), None if kept is None else str(kept))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"bad done line: {exc}") from None
    if "error" in obj:
        return str(obj["error"])
    try:
        result = Result(**obj)
    except TypeError as exc:
        raise ProtocolError(f"bad result line: {exc}") from None
    if result.status not in STATUSES or not isinstance(result.id, int):
        raise ProtocolError(f"bad result line: status {result.status!r}")
    return result
