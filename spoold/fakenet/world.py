"""A whole fake internet on loopback: domains, their MX hosts, DNS, in one object.

``World`` gives each MX host its own 127.0.x.y address (from 127.0.1.1 up;
127.0.0.1 stays free for the DNS server), registers MX and A records in one
DNSServer, and starts one Sink per MX host on a port shared by all (the
spooler's smtp.port).  ``add_domain(..., dead_mx_first=True)`` makes the
preferred MX an address where nothing listens (connection refused), to show
fallback to the next MX.  ``add_mta_sts(domain, policy, ca)`` publishes an
MTA-STS policy: the _mta-sts TXT record, an A record for mta-sts.DOMAIN and
an HTTPS PolicyServer there on ``https_port`` (one port for the whole world,
as mta_sts.port is one setting), with a certificate from a fakenet.pki CA.
The demo, the tests and the benchmarks all build their worlds with it.
"""

from __future__ import annotations

import errno
import ipaddress
import random

from spoold.fakenet.nameserver import DNSServer, free_tcp_port
from spoold.fakenet.pki import TestCA
from spoold.fakenet.sink import Behaviour, Received, Sink, SinkPool
from spoold.fakenet.web import PolicyServer

FIRST_HOST = ipaddress.IPv4Address("127.0.1.1")


class World:
    def __init__(self, port: int | None = None, dns_port: int = 0):
        self.dns = DNSServer(port=dns_port)
        self.pool = SinkPool()
        self.port = port or random.randint(20000, 59000)
        self._fixed_port = port is not None
        self._next = FIRST_HOST
        self._sinks: dict[str, list[Sink]] = {}
        self.policy_servers: list[PolicyServer] = []
        self.https_port = 0
        self.started = False

    @property
    def nameservers(self) -> list[str]:
        return [self.dns.host]

    def _address(self) -> str:
        address = self._next
        self._next += 1
        while self._next.packed[-1] in (0, 255):
            self._next += 1
        return str(address)

    def _listen(self, host: str, behaviour: Behaviour) -> Sink:
        self.start()
        while True:
            try:
                return self.pool.add(host, self.port, behaviour)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self._fixed_port or self.pool.sinks:
                    raise
                self.port = random.randint(20000, 59000)

    def add_domain(self, name: str, behaviour: Behaviour | None = None, mx_count: int = 1,
                   dead_mx_first: bool = False) -> list[Sink]:
        """MX hosts (preference 10, 20, ...) each with a sink; returns the sinks."""
        mx, sinks = [], []
        for index in range(mx_count):
            host = f"mx{index + 1}.{name}"
            address = self._address()
            self.dns.set(host, {"A": [address]})
            mx.append((10 * (index + 1), host))
            if not (dead_mx_first and index == 0):
                sinks.append(self._listen(address, behaviour or Behaviour()))
        self.dns.set(name, {"MX": mx})
        self._sinks[name] = sinks
        return sinks

    def add_a_only(self, name: str, behaviour: Behaviour | None = None) -> Sink:
        """A domain with no MX, only an address: mail goes to that address."""
        address = self._address()
        self.dns.set(name, {"A": [address]})
        sink = self._listen(address, behaviour or Behaviour())
        self._sinks[name] = [sink]
        return sink

    def add_null_mx(self, name: str) -> None:
        self.dns.set(name, {"MX": [(0, ".")]})
        self._sinks[name] = []

    def add_dns_failure(self, name: str, kind: str) -> None:
        """``kind`` is SERVFAIL, TIMEOUT or NXDOMAIN."""
        self.dns.set(name, kind)
        self._sinks[name] = []

    def add_mta_sts(self, domain: str, policy: str, ca: TestCA,
                    record_id: str = "1") -> PolicyServer:
        """Publish ``policy`` (the text of mta-sts.txt) for ``domain`` under ``record_id``."""
        self.start()
        address = self._address()
        self.https_port = self.https_port or free_tcp_port(address)
        host = f"mta-sts.{domain}"
        server = PolicyServer(address, self.https_port, ca.server_context(host)).start()
        server.policies[host] = policy
        self.policy_servers.append(server)
        self.dns.set(host, {"A": [address]})
        self.dns.set(f"_mta-sts.{domain}", {"TXT": [f"v=STSv1; id={record_id};"]})
        return server

    def sinks_for(self, domain: str) -> list[Sink]:
        return self._sinks[domain]

    def all_messages(self) -> list[Received]:
        return [m for sink in self.pool.sinks for m in list(sink.messages)]

    def start(self) -> World:
        if not self.started:
            self.dns.start()
            self.pool.start()
            self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            for server in self.policy_servers:
                server.stop()
            self.pool.stop()
            self.dns.stop()
            self.started = False

    def __enter__(self) -> World:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
