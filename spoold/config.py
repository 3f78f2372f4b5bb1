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
    kind: str  # str | int | bool | duration | list
    default: Any
    doc: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    maximum: float | None = None
    check: Callable[[Any], str | None] | None = None


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
    Setting("runner", "flush_interval", "duration", 0.2,
            "Results are written to the database in batches at least this often.", minimum=0),
    Setting("smtp", "port", "int", 25,
            "TCP port of the remote MX hosts.", minimum=1, maximum=65535),
    Setting("smtp", "helo_name", "str", "",
            "Name sent in EHLO/HELO; empty means this host's fully qualified name.",
            check=_host_name),
    Setting("smtp", "tls", "str", "may",
            "STARTTLS policy: none, may (use when offered, unverified), encrypt (required).",
            choices=("none", "may", "encrypt")),
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
    Setting("dns", "nameservers", "list", [],
            "Resolvers to ask for MX/A/AAAA (IP addresses); empty means those of\n"
            "/etc/resolv.conf.", check=_ip_addresses),
    Setting("dns", "port", "int", 53,
            "UDP/TCP port of those resolvers.", minimum=1, maximum=65535),
    Setting("dns", "timeout", "duration", 10,
            "Total time allowed for one DNS lookup.", minimum=0.1),
    Setting("log", "format", "str", "auto",
            "kv (key=value lines for people), json (for journald and machines), or auto:\n"
            "json when started by systemd, kv otherwise.", choices=("auto", "kv", "json")),
    Setting("log", "level", "str", "info",
            "Least severe level logged.", choices=("debug", "info", "warning", "error")),
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
    namespaces = {name: SimpleNamespace(**values) for name, values in sections.items()}
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
    out = [_HEADER]
    for section, keys in _BY_SECTION.items():
        out.append(f"\n[{section}]\n")
        for setting in keys.values():
            for line in setting.doc.splitlines():
                out.append(f"# {line}\n")
            out.append(f"{setting.key} = {_toml_value(values(setting))}\n\n")
    return "".join(out).rstrip("\n") + "\n"


def render_defaults() -> str:
    return _render(lambda s: s.default)


def render_effective(config: Config) -> str:
    return _render(lambda s: _redact(s, config.value(s.section, s.key)))


def _redact(setting: Setting, value: Any) -> Any:
    if setting.section == "database" and setting.key == "url":
        return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", value)
    return value
