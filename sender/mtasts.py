"""MTA-STS (RFC 8461): a destination domain's published TLS policy for its MX hosts.

MtaSts.lookup(domain) follows RFC 8461 section 5.1.  It asks for the
``_mta-sts.<domain>`` TXT record (through the child's MxResolver: the
configured name servers, cached like MX answers); a valid record gives the
policy id.  A policy cached under that id (in memory, and in
SenderConfig.mta_sts_cache_dir when set, one JSON file per domain shared by
every child) is used until its max_age runs out.  Otherwise the policy is
fetched from ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` with
urllib3: the policy host is resolved through the same name servers (never
the system resolver), its certificate must chain to the configured CA file
(or the system's) and name it; no redirects, text/plain, at most 64 KiB.

When discovery or fetch fails, a cached unexpired policy still applies (even
under another id, or with the TXT record gone); without one the domain has no
policy, and the normal TLS policy applies (RFC 8461 section 5.1).  A failed
TXT lookup or fetch is not retried for RETRY_FAILED seconds, so a broken
name or policy server costs one timeout per child per few minutes, not one
per job; an absent TXT record is remembered as long as an MX answer.

Policies carry their mode (enforce, testing, none) and MX patterns;
mx_matches() is the RFC's matching of an MX host name against them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import urllib3

from sender.mx import DnsError, MxResolver
from sender.protocol import SenderConfig

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3
MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2: one year
RETRY_FAILED = 300.0
WELL_KNOWN = "/.well-known/mta-sts.txt"

_TXT_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_MODES = ("enforce", "testing", "none")


class PolicyError(Exception):
    """The policy could not be fetched or is malformed; the text says why."""


@dataclass(frozen=True)
class StsPolicy:
    domain: str
    id: str
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]
    max_age: int
    fetched_at: float  # epoch seconds

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.max_age

    def allows(self, host: str) -> bool:
        return mx_matches(host, self.mx)


def mx_matches(host: str, patterns: tuple[str, ...]) -> bool:
    """RFC 8461 4.1: an exact name, or "*.example.com" for one more leftmost label."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            label, _, parent = host.partition(".")
            if label and parent == pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def parse_txt(records: list[str]) -> str | None:
    """The policy id of the one "v=STSv1" record among ``records``, else None."""
    candidates = [r for r in records if r.startswith("v=STSv1")]
    if len(candidates) != 1:
        return None  # none, or several: RFC 8461 3.1 says treat as no record
    fields = dict(part.strip().partition("=")[::2] for part in candidates[0].split(";")
                  if part.strip())
    record_id = fields.get("id", "").strip()
    return record_id if fields.get("v") == "STSv1" and _TXT_ID.match(record_id) else None


def parse_policy(text: str, domain: str, record_id: str, now: float) -> StsPolicy:
    """A policy file (RFC 8461 3.2) as StsPolicy; :raises PolicyError: malformed."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("policy has no \"version: STSv1\" line")
    mode = fields.get("mode", [""])[0]
    if mode not in _MODES:
        raise PolicyError(f"policy mode {mode!r} is not enforce, testing or none")
    max_age = fields.get("max_age", [""])[0]
    if not max_age.isdigit() or int(max_age) > MAX_AGE_LIMIT:
        raise PolicyError(f"policy max_age {max_age!r} is not 0 to {MAX_AGE_LIMIT}")
    mx = tuple(pattern.lower().rstrip(".") for pattern in fields.get("mx", []))
    if mode != "none" and not mx:
        raise PolicyError("policy names no mx")
    return StsPolicy(domain, record_id, mode, mx, int(max_age), now)


class MtaSts:
    """MTA-STS policies of one child: discovery, fetch, memory and disk cache."""

    def __init__(self, config: SenderConfig, resolver: MxResolver) -> None:
        self._resolver = resolver
        self._port = config.mta_sts_port
        self._timeout = config.mta_sts_timeout
        self._ca_file = config.tls_ca_file or None
        self._cache_dir = Path(config.mta_sts_cache_dir) if config.mta_sts_cache_dir else None
        self._memory: dict[str, StsPolicy] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}

    def lookup(self, domain: str) -> tuple[StsPolicy | None, str]:
        """The policy that applies to ``domain`` now (None: none), and what
        went wrong on the way ("" if nothing), for the delivery log."""
        now = time.time()
        cached = self._cached(domain, now)
        failed = self._failed.get((domain, ""))
        if failed is not None and failed[0] > time.monotonic():
            return cached, failed[1]
        try:
            record_id = parse_txt(self._resolver.txt(f"_mta-sts.{domain}"))
        except DnsError as exc:
            return cached, self._failure(domain, "", f"TXT lookup failed: {exc.text}")
        if record_id is None or (cached is not None and cached.id == record_id):
            return cached, ""
        failed = self._failed.get((domain, record_id))
        if failed is not None and failed[0] > time.monotonic():
            return cached, failed[1]
        try:
            policy = parse_policy(self._fetch(domain), domain, record_id, now)
        except PolicyError as exc:
            return cached, self._failure(domain, record_id, f"policy fetch failed: {exc}")
        self._remember(policy)
        return policy, ""

    def _failure(self, domain: str, record_id: str, problem: str) -> str:
        """Remember a failed TXT lookup ("" id) or fetch, not to retry it at every job."""
        self._failed[(domain, record_id)] = (time.monotonic() + RETRY_FAILED, problem)
        return problem

    def _cached(self, domain: str, now: float) -> StsPolicy | None:
        policy = self._memory.get(domain) or self._read_disk(domain)
        if policy is None or policy.expires_at <= now:
            return None
        self._memory[domain] = policy
        return policy

    def _remember(self, policy: StsPolicy) -> None:
        self._memory[policy.domain] = policy
        if self._cache_dir is None:
            return
        try:
            self._cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self._cache_dir, delete=False,
                                             suffix=".tmp") as out:
                json.dump(asdict(policy), out)
            os.replace(out.name, self._cache_dir / f"{policy.domain}.json")
        except OSError as exc:
            # The policy still holds in memory; the next child fetches it again.
            print(f"mta-sts: cannot write the policy cache: {exc}", file=sys.stderr)

    def _read_disk(self, domain: str) -> StsPolicy | None:
        if self._cache_dir is None:
            return None
        with contextlib.suppress(OSError, ValueError, TypeError):
            data = json.loads((self._cache_dir / f"{domain}.json").read_text())
            return StsPolicy(**{**data, "mx": tuple(data["mx"])})
        return None

    def _fetch(self, domain: str) -> str:
        """The policy text from mta-sts.<domain>, over verified HTTPS."""
        host = f"mta-sts.{domain}"
        try:
            addresses = self._resolver.addresses(host)
        except DnsError as exc:
            raise PolicyError(exc.text) from None
        problem = ""
        for address in addresses:
            try:
                return self._get(host, address)
            except urllib3.exceptions.HTTPError as exc:
                problem = f"https://{host}{WELL_KNOWN} ({address}): {_reason(exc)}"
        raise PolicyError(problem)

    def _get(self, host: str, address: str) -> str:
        pool = urllib3.HTTPSConnectionPool(
            address, port=self._port, cert_reqs="CERT_REQUIRED", ca_certs=self._ca_file,
            server_hostname=host, assert_hostname=host, retries=False,
            timeout=urllib3.Timeout(total=self._timeout))
        with pool:
            response = pool.request("GET", WELL_KNOWN, headers={"Host": host}, redirect=False,
                                    preload_content=False)
            try:
                if response.status != 200:
                    raise PolicyError(f"https://{host}{WELL_KNOWN}: HTTP {response.status}")
                media_type = response.headers.get("Content-Type", "").partition(";")[0]
                if media_type.strip().lower() != "text/plain":
                    raise PolicyError(f"https://{host}{WELL_KNOWN}: Content-Type "
                                      f"{media_type or 'missing'}, not text/plain")
                body = response.read(MAX_POLICY_BYTES + 1)
            finally:
                response.release_conn()
        if len(body) > MAX_POLICY_BYTES:
            raise PolicyError(f"https://{host}{WELL_KNOWN}: larger than {MAX_POLICY_BYTES} bytes")
        return body.decode("utf-8", "replace")


def _reason(exc: Exception) -> str:
    """The innermost reason urllib3 wraps (a certificate error, a refused connection)."""
    reason = getattr(exc, "reason", None)
    return str(reason) if reason is not None else str(exc)
