"""MX resolution: the ordered list of addresses to try for one domain.

MxResolver.route() applies RFC 5321 section 5.1 and RFC 7505 with
dnspython: MX hosts by preference, shuffled among equal preference, at most
``mx_limit`` of them, each resolved to its A then AAAA addresses; no MX
records means the domain itself is the one host (implicit MX); a null MX
means the domain takes no mail.  Failures raise DnsTemporaryError or
DnsPermanentError carrying the dsn (chosen by sender.trouble) and a
Postfix-style text for the delivery log.

The resolver is built from SenderConfig only (``Resolver(configure=False)``,
``search=False`` on every query), so tests and the demo can point it at a
name server on loopback.  A child serves many jobs, so answers are cached
for at most CACHE_TTL seconds: long enough for the jobs of one burst to one
domain, short enough that a changed MX is seen within a minute.  A route
says how long it stays valid (the shortest TTL of the answers it came
from), so that the runner can hand it to later jobs for the domain in other
children (sender.protocol, "targets").

txt() and addresses() serve MTA-STS (sender.mtasts) from the same name
servers and cache: its TXT record, and the policy host's address.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from sender import trouble
from sender.protocol import SenderConfig, Target

CACHE_TTL = 60.0
RESOLV_CONF = "/etc/resolv.conf"


class DnsError(Exception):
    """A lookup failed; ``dsn`` and ``text`` go into every recipient's result."""

    def __init__(self, dsn: str, text: str) -> None:
        super().__init__(text)
        self.dsn = dsn
        self.text = text


class DnsTemporaryError(DnsError):
    """Timeout, SERVFAIL, no name server answering: try again later."""


class DnsPermanentError(DnsError):
    """NXDOMAIN, null MX, no address anywhere: the mail cannot be delivered."""


@dataclass
class Route:
    """Where a domain's mail goes, and for how many seconds that holds."""

    targets: list[Target]
    ttl: float


def _not_found(name: str, rdtype: str) -> str:
    return ("Host or domain name not found. "
            f"Name service error for name={name} type={rdtype}: Host not found")


class MxResolver:
    """Delivery targets of a domain, from the name servers in SenderConfig."""

    def __init__(self, config: SenderConfig) -> None:
        self._resolver = dns.resolver.Resolver(configure=False)
        if config.dns_nameservers:
            self._resolver.nameservers = list(config.dns_nameservers)
        else:
            self._resolver.read_resolv_conf(RESOLV_CONF)
        self._resolver.port = config.dns_port
        self._resolver.lifetime = config.dns_timeout
        self._mx_limit = max(1, config.mx_limit)
        self._cache: dict[tuple[str, str], tuple[float, list]] = {}
        self._valid_until = 0.0  # of the route being resolved: its earliest expiry

    def route(self, domain: str) -> Route:
        """Addresses to try for ``domain``, best first (never none), and their TTL.

        :raises DnsTemporaryError: a lookup that decides the outcome timed
            out or failed (dsn 4.4.3).
        :raises DnsPermanentError: the domain does not exist or has no
            address (5.1.2), has a null MX (5.1.10), or none of its MX hosts
            has an address (5.4.4).
        """
        _check_name(domain)
        now = time.monotonic()
        self._forget_expired(now)
        self._valid_until = now + CACHE_TTL
        records = self._lookup(domain, "MX")
        if not records:
            targets = self._addresses([(0, domain)], domain,
                                      dns_no_address=trouble.DNS_NO_DOMAIN)
        elif len(records) == 1 and records[0].exchange == dns.name.root:
            raise DnsPermanentError(
                trouble.DNS_NULL_MX, f"Domain {domain} does not accept mail (nullMX)")
        else:
            hosts = _by_preference(records)[:self._mx_limit]
            targets = self._addresses(hosts, domain, dns_no_address=trouble.DNS_NO_MX_HOST)
        return Route(targets, max(0.0, self._valid_until - now))

    def txt(self, name: str) -> list[str]:
        """The TXT records of ``name``, each one string ([] for none or NXDOMAIN).

        :raises DnsTemporaryError: the lookup failed.
        """
        try:
            records = self._lookup(name, "TXT")
        except DnsPermanentError:
            # NXDOMAIN is the common answer (no _mta-sts record): remember it too
            records = []
            self._cache[(name, "TXT")] = (time.monotonic() + CACHE_TTL, records)
        return [b"".join(record.strings).decode("utf-8", "replace") for record in records]

    def addresses(self, host: str) -> list[str]:
        """A then AAAA addresses of ``host``; :raises DnsError: it has none."""
        self._forget_expired(time.monotonic())
        addresses = self._host_addresses(host)
        if not addresses:
            raise DnsPermanentError(trouble.DNS_NO_DOMAIN, _not_found(host, "A"))
        return addresses

    def _addresses(self, hosts: list[tuple[int, str]], domain: str,
                   dns_no_address: str) -> list[Target]:
        """Targets for ``hosts`` in order, skipping hosts that have none.

        A host whose lookup failed only temporarily might have had the
        address that works, so with no target at all, any temporary failure
        makes the whole lookup temporary.
        """
        targets: list[Target] = []
        temporary: DnsTemporaryError | None = None
        for preference, host in hosts:
            try:
                targets += [Target(host, address, preference)
                            for address in self._host_addresses(host)]
            except DnsTemporaryError as exc:
                temporary = exc
            except DnsPermanentError:
                continue
        if targets:
            return targets
        if temporary is not None:
            raise temporary
        names = (domain if hosts == [(0, domain)] else
                 f"the MX hosts of {domain} ({', '.join(host for _, host in hosts)})")
        raise DnsPermanentError(
            dns_no_address, f"Host or domain name not found: no A or AAAA record for {names}")

    def _host_addresses(self, host: str) -> list[str]:
        """A then AAAA addresses; a failed lookup of one type spoils nothing
        the other found."""
        addresses: list[str] = []
        failure: DnsError | None = None
        for rdtype in ("A", "AAAA"):
            try:
                addresses += [record.address for record in self._lookup(host, rdtype)]
            except DnsError as exc:
                failure = failure or exc
        if failure is not None and not addresses:
            raise failure
        return addresses

    def _lookup(self, name: str, rdtype: str) -> list:
        """The records of one query, [] for "no records of that type"."""
        key = (name, rdtype)
        cached = self._cache.get(key)
        if cached is not None:
            self._valid_until = min(self._valid_until, cached[0])
            return cached[1]
        try:
            answer = self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise DnsPermanentError(trouble.DNS_NO_DOMAIN, _not_found(name, rdtype)) from None
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(
                trouble.DNS_TEMPORARY, f"{_not_found(name, rdtype)}, try again ({exc})") from None
        records = list(answer.rrset) if answer.rrset is not None else []
        ttl = min(answer.rrset.ttl, CACHE_TTL) if answer.rrset is not None else CACHE_TTL
        expires = time.monotonic() + ttl
        self._cache[key] = (expires, records)
        self._valid_until = min(self._valid_until, expires)
        return records

    def _forget_expired(self, now: float) -> None:
        self._cache = {key: hit for key, hit in self._cache.items() if hit[0] > now}


def _check_name(domain: str) -> None:
    try:
        dns.name.from_text(domain)
    except dns.exception.DNSException as exc:
        raise DnsPermanentError(
            trouble.DNS_NO_DOMAIN,
            f"Host or domain name not found: malformed name {domain!r} ({exc})") from None


def _by_preference(records: list) -> list[tuple[int, str]]:
    """(preference, MX host name), lowest preference first, equal preferences shuffled.

    A null-MX record among real ones is ignored (RFC 7505 section 4.3).
    """
    shuffled = [r for r in records if r.exchange != dns.name.root]
    random.shuffle(shuffled)
    shuffled.sort(key=lambda r: r.preference)  # stable: the shuffle survives within a preference
    return [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in shuffled]
