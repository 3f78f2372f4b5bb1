"""Settings: every one declared once, with its type, default and meaning.

SETTINGS below is the single source of truth.  ``load()`` reads a TOML file
(tomllib) over those defaults and refuses unknown sections or keys, wrong
types and out-of-range values with the file, the key and the reason.
Numbers are bounded both ways (an int at most MAX_INT, a duration finite and
at most MAX_DURATION, ports at most 65535), host names and name server
addresses are checked, so a typo is refused here with its key rather than
failing later in every sender child.  ``render_defaults()`` writes the
documented default file that ships as etc/spoold.toml (a test keeps the two
identical), and ``render_effective()`` backs ``spoold config --show``.

The file is found by, in order: the ``--config`` option, the SPOOLD_CONFIG
environment variable, /etc/spoold/spoold.toml.  A missing default file means
"all defaults"; a missing file that was named explicitly is an error.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from collections.abc import Callable

from spoold.errors import ConfigError

DEFAULT_PATH = Path("/etc/spoold/spoold.toml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_INT = 2**31 - 1  # what a database INTEGER and a LIMIT take everywhere
MAX_DURATION = 10 * 365 * 86400  # ten years: beyond it a timer or a timestamp overflows
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    kind: str  # str | int | bool | duration | list | table
    default: Any
    doc: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    maximum: float | None = None
    check: Callable[[Any], str | None] | None = None
    # table only: validates one entry, returns its value; raises ValueError naming the problem
    entry: Callable[[str, Any], Any] | None = None
    secret: bool = False  # shown as *** by spoold config --show
    # table only: validates an entry's name, returns it as the key (default: a domain name)
    name: Callable[[str], str] | None = None


def _host_name(value: str) -> str | None:
    """An empty value or an LDH host name (it goes into EHLO verbatim)."""
    labels = value.rstrip(".").split(".")
    if value and (len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels)):
        return "must be a host name (letters, digits, hyphens and dots)"
    return None


def _ip_addresses(values: list[str]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"{value!r} is not an IP address"
    return None


def _database_url(value: str) -> str | None:
    if value.startswith("sqlite://") or value.startswith("mysql://"):
        return None
    return "must start with sqlite:// or mysql://"


_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)"
                     r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
TLS_LEVELS = ("none", "may", "encrypt", "verify")


def _domain_key(name: str) -> str:
    """A domain as a table key, lower case; a leading dot means "every subdomain"."""
    bare = name.lower()
    if not _DOMAIN.match(bare.removeprefix(".")):
        raise ValueError(f"{name!r} is not a domain name")
    return bare


def _tls_policy_entry(name: str, value: Any) -> str:
    _domain_key(name)
    if value not in TLS_LEVELS:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(TLS_LEVELS)}")
    return value


def dkim_entry(name: str, value: Any) -> dict[str, str]:
    """One [dkim.domains] entry, validated (also for spoold dkim keygen)."""
    if name.startswith("."):
        raise ValueError(f"{name!r}: a signing domain is one domain, not its subdomains")
    _domain_key(name)
    if not isinstance(value, dict) or set(value) != {"selector", "key_file"}:
        raise ValueError(f"{name}: expected a table with selector and key_file")
    if not all(isinstance(v, str) and v for v in value.values()):
        raise ValueError(f"{name}: selector and key_file must be non-empty strings")
    if not _DOMAIN.match(value["selector"].lower()):
        raise ValueError(f"{name}: selector {value['selector']!r} is not a DNS label")
    return dict(value)


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60,
               "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_rate(value: Any) -> float:
    """Messages per second from a rate such as "20/s", "600/min", "5000/h" or "1e5/d"."""
    match = _RATE.match(value.lower()) if isinstance(value, str) else None
    if not match or match.group(2) not in _RATE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a rate such as \"20/s\", \"600/min\" or "
                         "\"5000/h\"")
    return float(match.group(1)) / _RATE_UNITS[match.group(2)]


def shaping_pattern(name: str) -> str:
    """A [shaping.destinations] name: a recipient domain, or "*." and the domain
    its MX host names end in."""
    bare = name.lower()
    if not _DOMAIN.match(bare.removeprefix("*.")) or bare.startswith("."):
        raise ValueError(f"{name!r} is neither a domain (gmail.com) nor an MX host pattern "
                         "(*.outlook.com)")
    return bare


_RULE_KEYS = {"concurrency", "rate", "burst"}


def shaping_entry(name: str, value: Any) -> dict[str, Any]:
    """One [shaping.destinations] rule: concurrency and/or rate, burst only with a rate."""
    if not isinstance(value, dict) or not value or set(value) - _RULE_KEYS:
        raise ValueError(f"{name}: expected a table of concurrency, rate and burst, e.g. "
                         "{ concurrency = 5, rate = \"600/min\" }")
    if not ({"concurrency", "rate"} & set(value)):
        raise ValueError(f"{name}: give a concurrency, a rate or both")
    for key in ("concurrency", "burst"):
        number = value.get(key, 1)
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"{name}: {key} must be a whole number of at least 1")
    if "burst" in value and "rate" not in value:
        raise ValueError(f"{name}: burst needs a rate")
    if "rate" in value:
        try:
            parse_rate(value["rate"])
        except ValueError as exc:
            raise ValueError(f"{name}: rate {exc}") from None
    return dict(value)


def _dkim_headers(names: list[str]) -> str | None:
    # RFC 6376 5.4.1: fields that relays add or change break a signature over them
    never = {"return-path", "received", "comments", "keywords", "bcc", "resent-bcc",
             "dkim-signature"}
    bad = [name for name in names if name.lower() in never]
    return f"{', '.join(bad)} must not be signed" if bad else None


def _domain_name(value: str) -> str | None:
    if value and not _DOMAIN.match(value.lower()):
        return "must be a domain name such as bounces.example.org"
    return None


def _local_part(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", value):
        return "must be letters, digits, dots, dashes or underscores"
    return None


def _users(value: list[str]) -> str | None:
    for entry in value:
        name, _, hashed = entry.partition(":")
        if not name or not hashed.startswith("$argon2"):
            return (f"{entry[:20]!r}: expected NAME:HASH with a HASH from "
                    "spoold submission hash-password")
    return None


def submission_needs_auth(settings: SimpleNamespace) -> bool:
    """AUTH before MAIL: when asked to, or when listening on a non-loopback address."""
    if settings.require_auth:
        return True
    try:
        return not ipaddress.ip_address(settings.listen_address).is_loopback
    except ValueError:
        return settings.listen_address != "localhost"


def _unsubscribe_url(value: str) -> str | None:
    if not value.startswith(("http://", "https://")) or "{token}" not in value:
        return "must be an http:// or https:// URL containing {token}"
    return None


def _rate_limit(value: str) -> str | None:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        return 'must be a rate like "5 per minute" or "5/minute;20/hour"'
    return None


SETTINGS: tuple[Setting, ...] = (
    Setting("database", "url", "str", "sqlite:///var/lib/spoold/spool.db",
            "Where the queue lives. sqlite://PATH (sqlite:///abs/path or sqlite://path\n"
            "relative to this file), or mysql://user:password@host[:port]/database\n"
            "for MariaDB/MySQL shared by several hosts.", check=_database_url),
    Setting("database", "busy_timeout", "duration", 10,
            "How long a SQLite writer waits for the lock before giving up.", minimum=0),
    Setting("runner", "run_dir", "str", "/run/spoold",
            "Directory for the lockfile (spoold.pid) and the poke socket (poke.sock).\n"
            "One runner per run directory."),
    Setting("runner", "max_children", "int", 100,
            "Most sender children alive at once (Postfix default_process_limit).", minimum=1),
    Setting("runner", "max_use", "int", 100,
            "Jobs a child serves before it exits; 1 = one process per job.", minimum=1),
    Setting("runner", "destination_concurrency", "int", 20,
            "Most children working on one destination domain at once.", minimum=1),
    Setting("runner", "job_size", "int", 20,
            "Most messages handed to a child in one job (one SMTP connection).", minimum=1),
    Setting("runner", "claim_batch", "int", 500,
            "Most queue rows claimed in one database transaction.", minimum=1),
    Setting("runner", "lease", "duration", 600,
            "How long a claimed row stays leased to this runner; renewed while held.\n"
            "Rows of a runner that died come back to the queue when it runs out.", minimum=10),
    Setting("runner", "backoff_min", "duration", 300,
            "Delay before the first retry of a deferred row; doubles per attempt.", minimum=0),
    Setting("runner", "backoff_max", "duration", 4000,
            "Longest delay between two attempts.", minimum=0),
    Setting("runner", "max_lifetime", "duration", "5d",
            "Give up (expire) a row this long after it was enqueued.", minimum=0),
    Setting("runner", "max_agent_failures", "int", 3,
            "Hold a row (state held, the reason in spoold queue) once a delivery agent\n"
            "has failed on it this often: crashed, hung past child_timeout or reported\n"
            "its own error.  Rows that were in a failed job are retried alone, so one\n"
            "poison message does not take its neighbours with it.  0 never holds.",
            minimum=0),
    Setting("runner", "child_timeout", "duration", 3600,
            "Kill a child that has said nothing for this long; its rows are deferred.\n"
            "Must exceed the SMTP timeouts below times the MX hosts tried.", minimum=1),
    Setting("runner", "grace_period", "duration", 30,
            "On SIGTERM, how long in-flight jobs may run before their children are killed.",
            minimum=0),
    Setting("runner", "scan_interval", "duration", 5,
            "Look for due rows at least this often, even without a poke (rows enqueued\n"
            "on another host, deferred rows coming due).", minimum=0.01),
    Setting("runner", "flush_interval", "duration", 0.02,
            "Results are written to the database in batches at least this often.  What\n"
            "is not written yet is journalled on this host only: on a database shared by\n"
            "several hosts, a host lost for good takes it along, and the others deliver\n"
            "those messages again.", minimum=0),
    Setting("smtp", "port", "int", 25,
            "TCP port of the remote MX hosts.", minimum=1, maximum=65535),
    Setting("smtp", "helo_name", "str", "",
            "Name sent in EHLO/HELO; empty means this host's fully qualified name.",
            check=_host_name),
    Setting("smtp", "tls", "str", "may",
            "STARTTLS policy: none, may (use when offered, unverified), encrypt (required,\n"
            "unverified), verify (required; the certificate must chain to a trusted CA and\n"
            "name the MX host).  tls_policy below overrides it per destination.",
            choices=TLS_LEVELS),
    Setting("smtp", "tls_ca_file", "str", "",
            "PEM file of the CA certificates that verify trusts (also for MTA-STS policy\n"
            "servers); empty means the system's.  A relative path is relative to this file."),
    Setting("smtp", "mx_limit", "int", 5,
            "Most MX hosts tried for one destination in one job.", minimum=1),
    Setting("smtp", "connect_timeout", "duration", 30,
            "TCP connection set-up.", minimum=0.1),
    Setting("smtp", "greeting_timeout", "duration", 300,
            "Waiting for the 220 banner (RFC 5321 4.5.3.2.1).", minimum=0.1),
    Setting("smtp", "helo_timeout", "duration", 300,
            "EHLO/HELO and STARTTLS replies.", minimum=0.1),
    Setting("smtp", "mail_timeout", "duration", 300,
            "MAIL FROM reply (RFC 5321 4.5.3.2.2).", minimum=0.1),
    Setting("smtp", "rcpt_timeout", "duration", 300,
            "RCPT TO reply (RFC 5321 4.5.3.2.3).", minimum=0.1),
    Setting("smtp", "data_init_timeout", "duration", 120,
            "DATA command reply (RFC 5321 4.5.3.2.4).", minimum=0.1),
    Setting("smtp", "data_block_timeout", "duration", 180,
            "Sending each block of message data (RFC 5321 4.5.3.2.5).", minimum=0.1),
    Setting("smtp", "data_done_timeout", "duration", 600,
            "Reply to the final dot (RFC 5321 4.5.3.2.6).", minimum=0.1),
    Setting("smtp", "quit_timeout", "duration", 300,
            "RSET and QUIT replies.", minimum=0.1),
    Setting("smtp", "connection_cache_time", "duration", 2,
            "How long a child keeps an idle connection open for the next job to the same "
            "host (Postfix smtp_connection_cache_time_limit); 0 closes it at once.", minimum=0),
    Setting("smtp", "connection_reuse_time", "duration", 300,
            "A connection is not reused once this old (Postfix "
            "smtp_connection_reuse_time_limit).", minimum=0),
    Setting("smtp", "tls_policy", "table", {},
            "STARTTLS policy per destination domain, over smtp.tls and MTA-STS:\n"
            "\"example.org\" = \"verify\" (that domain), \".example.org\" = \"encrypt\" (its\n"
            "subdomains).  Values: none, may, encrypt, verify.", entry=_tls_policy_entry),
    Setting("mta_sts", "enabled", "bool", True,
            "Honour MTA-STS (RFC 8461): look up _mta-sts.DOMAIN (cached), fetch the policy\n"
            "over HTTPS; in enforce mode deliver only to the policy's MX hosts over\n"
            "verified TLS, else defer (4.7.x); testing mode only notes problems in the log.\n"
            "A domain in smtp.tls_policy is not looked up.  Costs a TXT lookup per domain."),
    Setting("mta_sts", "cache_dir", "str", "",
            "Directory where fetched policies are kept for their max_age, shared by the\n"
            "children and kept across restarts (e.g. /var/lib/spoold/mta-sts); empty: each\n"
            "child keeps them in memory only.  A relative path is relative to this file."),
    Setting("mta_sts", "port", "int", 443,
            "TCP port of the policy servers (mta-sts.DOMAIN); tests use another.", minimum=1),
    Setting("mta_sts", "timeout", "duration", 10,
            "Time allowed to fetch one policy.", minimum=0.1),
    Setting("dkim", "headers", "list",
            ["From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe",
             "List-Unsubscribe-Post", "MIME-Version", "Content-Type",
             "Content-Transfer-Encoding"],
            "Header fields signed, those of them that a message has (From always).",
            check=_dkim_headers),
    Setting("dkim", "domains", "table", {},
            "Signing key per From domain (rsa-sha256, or ed25519-sha256 for an Ed25519\n"
            "key; relaxed/relaxed); mail from other domains goes out unsigned.  One entry\n"
            "per domain, as \"spoold dkim keygen DOMAIN SELECTOR\" prints it:\n"
            "[dkim.domains.\"example.org\"] selector = \"s1\", key_file = \"PATH\" (a PEM private\n"
            "key; a relative path is relative to this file).", entry=dkim_entry),
    Setting("shaping", "throttle_pause", "duration", 60,
            "After a throttling reply from a destination (421, 4.7.x, \"too many\n"
            "connections\", a blocklist: see spoold/shaping.py) no runner starts a new\n"
            "connection to it for this long, and its limits are halved.", minimum=1),
    Setting("shaping", "recovery_interval", "duration", 10,
            "After the pause a throttled destination's limits grow back by a tenth of\n"
            "their configured value per interval, until whole again.", minimum=0.1),
    Setting("shaping", "destinations", "table", {},
            "Limits per destination, held together and across every runner sharing the\n"
            "database: concurrency (connections at once) and/or rate (messages per\n"
            "\"s\", \"min\" or \"h\"; burst: messages that may go at once, default one\n"
            "second's worth).  A name is a recipient domain, or *. and a suffix of the\n"
            "MX host names (applies once a runner has looked the domain's MX up once):\n"
            "\"gmail.com\" = { concurrency = 10, rate = \"600/min\" }\n"
            "\"*.outlook.com\" = { concurrency = 5, rate = \"20/s\", burst = 40 }\n"
            "Other destinations: runner.destination_concurrency per runner, no rate.",
            entry=shaping_entry, name=shaping_pattern),
    Setting("dns", "nameservers", "list", [],
            "Resolvers to ask for MX/A/AAAA (IP addresses); empty means those of\n"
            "/etc/resolv.conf.", check=_ip_addresses),
    Setting("dns", "port", "int", 53,
            "UDP/TCP port of those resolvers.", minimum=1, maximum=65535),
    Setting("dns", "timeout", "duration", 10,
            "Total time allowed for one DNS lookup.", minimum=0.1),
    Setting("bounces", "domain", "str", "",
            "Bounce domain: when set, outgoing mail gets a VERP envelope sender\n"
            "LOCAL+<queue id>.<hmac>@DOMAIN that names its queue row, and the bounce\n"
            "receiver takes mail for this domain only.  Empty: envelope senders unchanged.",
            check=_domain_name),
    Setting("bounces", "local_part", "str", "bounces",
            "Local part of the VERP address (and of the plain address for feedback loops).",
            check=_local_part),
    Setting("bounces", "secret", "str", "",
            "Key of the HMAC in VERP addresses (required with a bounce domain): a bounce\n"
            "to a forged address is ignored.  Keep it secret; changing it orphans the\n"
            "bounces of mail already sent.", secret=True),
    Setting("bounces", "listen_address", "str", "127.0.0.1",
            "Address the bounce receiver listens on (point the bounce domain's MX here)."),
    Setting("bounces", "listen_port", "int", 0,
            "Port of the bounce receiver, started by spoold run; 0: no receiver.", minimum=0),
    Setting("bounces", "max_size", "int", 10485760,
            "Largest bounce or complaint message taken, in bytes.", minimum=1024),
    Setting("bounces", "soft_limit", "int", 5,
            "Consecutive soft bounces (mailbox full, expired, ...) that suppress an address\n"
            "once they span soft_span; a delivery resets the count.", minimum=1),
    Setting("bounces", "soft_span", "duration", "3d",
            "Time the soft bounces must spread over, first to last, before they suppress.",
            minimum=0),
    Setting("submission", "listen_address", "str", "127.0.0.1",
            "Address of the SMTP submission listener.  Any address other than a loopback\n"
            "one requires AUTH (over STARTTLS) before MAIL."),
    Setting("submission", "listen_port", "int", 0,
            "Port of the submission listener, started by spoold run; 0: no listener.",
            minimum=0),
    Setting("submission", "require_auth", "bool", False,
            "Require AUTH (PLAIN or LOGIN, over STARTTLS) even on a loopback address."),
    Setting("submission", "users", "list", [],
            "Who may submit with AUTH: \"name:HASH\" entries, HASH from\n"
            "spoold submission hash-password.", check=_users),
    Setting("submission", "tls_cert", "str", "",
            "PEM certificate chain for STARTTLS (needed when AUTH is required)."),
    Setting("submission", "tls_key", "str", "",
            "PEM private key for STARTTLS."),
    Setting("submission", "max_size", "int", 26214400,
            "Largest message taken, in bytes.", minimum=1024),
    Setting("mailout", "sender", "str", "",
            "From of mailouts and campaigns unless they name one: an address or\n"
            "\"Name <address>\"; empty means noreply@ the helo name.  Its address is also\n"
            "the envelope sender."),
    Setting("mailout", "secret", "str", "",
            "Key of the HMAC in unsubscribe links (spoold/unsubscribe.py).  Empty: a random\n"
            "key is made at first use and kept in the database (table secret), which\n"
            "every process using that database then shares.  Changing it breaks the\n"
            "links of mail already sent.", secret=True),
    Setting("mailout", "unsubscribe_url", "str", "http://127.0.0.1:8025/unsubscribe/{token}",
            "The unsubscribe link of each mailout message ({token} is replaced by the\n"
            "recipient's token), served by the web UI (spoold-webui) at /unsubscribe/.\n"
            "The default is the UI's own default address ([webui] bind and port), which\n"
            "only this host reaches: set the URL recipients reach it by, through the\n"
            "TLS proxy in front of it (https://mail.example.org/unsubscribe/{token}).",
            check=_unsubscribe_url),
    Setting("mailout", "unsubscribe_mailto", "str", "",
            "Address for mailto: unsubscribe requests in List-Unsubscribe (subject\n"
            "\"unsubscribe TOKEN\"); empty: the https link only."),
    Setting("mailout", "expand_chunk", "int", 20000,
            "Contacts the runner turns into queue rows per transaction when a mailout\n"
            "starts; each chunk holds up delivery for its length (about 0.1 s).",
            minimum=1),
    Setting("mailout", "interval", "duration", 1,
            "How often the runner looks for mailouts and campaign scenarios that are due.",
            minimum=0.01),
    Setting("log", "format", "str", "auto",
            "kv (key=value lines for people), json (for journald and machines), or auto:\n"
            "json when started by systemd, kv otherwise.", choices=("auto", "kv", "json")),
    Setting("log", "level", "str", "info",
            "Least severe level logged.", choices=("debug", "info", "warning", "error")),
    Setting("log", "file", "str", "",
            "Where spoold run writes its events: a file (relative to this file's directory),\n"
            "appended to and reopened on SIGUSR1 for logrotate.  Empty means stderr (the\n"
            "journal under systemd).  Other commands always log to stderr."),
    Setting("webui", "bind", "str", "127.0.0.1",
            "Address the web UI (spoold-webui) listens on. Anything but loopback exposes\n"
            "it: put a TLS-terminating proxy in front and set secure_cookies."),
    Setting("webui", "port", "int", 8025,
            "TCP port of the web UI.", minimum=0),
    Setting("webui", "secret_key", "str", "",
            "Signs the session cookies and CSRF tokens. Empty: a random key is made on\n"
            "the first start and kept in the database (table secret), so restarts\n"
            "and every UI process on the same database keep sessions. Changing it ends\n"
            "every session.", secret=True),
    Setting("webui", "session_lifetime", "duration", "12h",
            "A login lasts this long after its last request.", minimum=60),
    Setting("webui", "secure_cookies", "bool", False,
            "Send cookies over HTTPS only (set it when a TLS proxy is in front)."),
    Setting("webui", "trusted_proxies", "int", 0,
            "Reverse proxies in front of the UI whose X-Forwarded-For/-Proto to believe\n"
            "(the login rate limit counts per client address).", minimum=0),
    Setting("webui", "login_limit", "str", "5 per minute;30 per hour",
            "Login attempts allowed per client address, as \"N per second|minute|hour|day\"\n"
            "rates separated by \";\"; past it the login answers 429.", check=_rate_limit),
    Setting("webui", "threads", "int", 8,
            "Requests served at once (waitress worker threads).", minimum=1),
    Setting("webui", "page_size", "int", 50,
            "Rows per page in the queue and delivery tables.", minimum=1),
    Setting("webui", "poll_interval", "duration", 2,
            "How often the dashboard asks for fresh counters.", minimum=0.5),
    Setting("webui", "heartbeat_timeout", "duration", 20,
            "A runner whose heartbeat row is older than this is shown as down.", minimum=1),
    Setting("webui", "metrics_public", "bool", False,
            "Serve /metrics without an API token (for a Prometheus on this host)."),
)

_BY_SECTION: dict[str, dict[str, Setting]] = {}
for _s in SETTINGS:
    _BY_SECTION.setdefault(_s.section, {})[_s.key] = _s


class Config(SimpleNamespace):
    """Validated settings as ``config.section.key``; ``config.path`` is the file read."""

    path: Path | None

    def value(self, section: str, key: str) -> Any:
        return getattr(getattr(self, section), key)

    @property
    def helo_name(self) -> str:
        return self.smtp.helo_name or socket.getfqdn()

    @property
    def mailout_sender(self) -> str:
        return self.mailout.sender or f"noreply@{self.helo_name}"

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like "300", "5m", "2h", "5d"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError('expected seconds or a number with unit s, m, h or d (e.g. "5d")')
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError("must be at most ten years")
    return seconds


def _convert(setting: Setting, value: Any) -> Any:
    kind = setting.kind
    if kind == "duration":
        return parse_duration(value)
    if kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    if kind == "bool" and not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {type(value).__name__}")
    if kind == "str" and not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if kind == "list" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError("expected a list of strings")
    if kind == "table":
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {type(value).__name__}")
        key = setting.name or _domain_key
        return {key(name): setting.entry(name, entry) for name, entry in value.items()}
    return value


def _validate(setting: Setting, raw: Any) -> Any:
    value = _convert(setting, raw)
    if setting.minimum is not None and value < setting.minimum:
        raise ValueError(f"must be at least {setting.minimum:g}")
    maximum = setting.maximum if setting.maximum is not None else (
        MAX_INT if setting.kind == "int" else None)
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {maximum:.15g}")
    if setting.choices and value not in setting.choices:
        raise ValueError(f"must be one of {', '.join(setting.choices)}")
    if setting.check and (reason := setting.check(value)):
        raise ValueError(reason)
    return value


def build(data: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a parsed TOML document over the defaults."""
    where = str(path) if path else "<settings>"
    sections: dict[str, dict[str, Any]] = {
        name: {key: s.default for key, s in keys.items()} for name, keys in _BY_SECTION.items()
    }
    for name, table in data.items():
        if name not in _BY_SECTION:
            raise ConfigError(f"{where}: unknown section [{name}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {name} must be a [section] table")
        for key, raw in table.items():
            setting = _BY_SECTION[name].get(key)
            if setting is None:
                raise ConfigError(f"{where}: unknown key {name}.{key}")
            try:
                sections[name][key] = _validate(setting, raw)
            except ValueError as exc:
                raise ConfigError(f"{where}: {name}.{key}: {exc}") from None
    for name, keys in _BY_SECTION.items():
        for key, setting in keys.items():
            sections[name][key] = _validate(setting, sections[name][key])
    runner = sections["runner"]
    if runner["backoff_max"] < runner["backoff_min"]:
        raise ConfigError(f"{where}: runner.backoff_max: must not be below runner.backoff_min")
    if sections["bounces"]["domain"] and not sections["bounces"]["secret"]:
        raise ConfigError(f"{where}: bounces.secret: required with bounces.domain "
                          "(the VERP addresses are signed with it)")
    namespaces = {name: SimpleNamespace(**values) for name, values in sections.items()}
    submission = namespaces["submission"]
    if submission.listen_port and submission_needs_auth(submission) and not (
            submission.tls_cert and submission.tls_key and submission.users):
        raise ConfigError(f"{where}: submission: AUTH is required on {submission.listen_address}"
                          " (not loopback, or require_auth): set tls_cert, tls_key and users")
    return Config(path=path, **namespaces)


def find_path(explicit: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """The config file to read, and whether it was named explicitly."""
    if explicit:
        return Path(explicit), True
    if os.environ.get("SPOOLD_CONFIG"):
        return Path(os.environ["SPOOLD_CONFIG"]), True
    return DEFAULT_PATH, False


def load(explicit: str | os.PathLike | None = None) -> Config:
    path, named = find_path(explicit)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if named:
            raise ConfigError(f"{path}: no such file") from None
        return build({}, None)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return build(data, path.resolve())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def dump(settings: dict[str, dict[str, Any]]) -> str:
    """TOML text for a {section: {key: value}} mapping (for generated config files)."""
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


_HEADER = """\
# spoold.toml: every setting of spoold, with its default.
#
# Generated from spoold/config.py (spoold config --defaults); a setting left
# out keeps the default shown here.  Durations are seconds, or a number with
# a unit: "90s", "5m", "2h", "5d".  SPOOLD_CONFIG or --config names another file.
"""


def _render(values: Callable[[Setting], Any]) -> str:
    """The documented file; a table setting comes after the plain keys of its
    section, as a [section.key] table of its own, so entries can be added to
    it as lines (or as [section.key."name"] sub-tables anywhere in the file)."""
    out = [_HEADER]
    for section, keys in _BY_SECTION.items():
        out.append(f"\n[{section}]\n")
        settings = sorted(keys.values(), key=lambda s: s.kind == "table")
        for setting in settings:
            if setting.kind == "table":
                out.append(f"\n[{section}.{setting.key}]\n")
            for line in setting.doc.splitlines():
                out.append(f"# {line}\n")
            if setting.kind == "table":
                out.extend(f"{_toml_value(name)} = {_toml_value(entry)}\n"
                           for name, entry in values(setting).items())
                out.append("\n")
            else:
                out.append(f"{setting.key} = {_toml_value(values(setting))}\n\n")
    return "".join(out).rstrip("\n") + "\n"


def render_defaults() -> str:
    return _render(lambda s: s.default)


def render_effective(config: Config) -> str:
    return _render(lambda s: _redact(s, config.value(s.section, s.key)))


def _redact(setting: Setting, value: Any) -> Any:
    if setting.section == "database" and setting.key == "url":
        return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", value)
    if setting.secret and value:
        return "***"
    return value
