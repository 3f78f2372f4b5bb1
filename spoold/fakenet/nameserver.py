"""A real DNS server on loopback that answers from a dict, for tests, demo and benchmarks.

NAME
    DNSServer - authoritative answers for made-up domains, UDP and TCP

DESCRIPTION
    ``DNSServer(zone)`` binds one port on a loopback address for UDP and TCP
    and answers each query from ``zone``, a plain dict that may change while
    the server runs::

        {"example.test": {"MX": [(10, "mx1.example.test")], "A": ["127.0.1.1"],
                          "AAAA": ["::1"], "TXT": ["v=spf1 -all"]},
         "nullmx.test": {"MX": [(0, ".")]},          # RFC 7505 null MX
         "broken.test": "SERVFAIL", "slow.test": "TIMEOUT", "gone.test": "NXDOMAIN",
         "big.test": {"MX": [...], "truncate": True}}  # TC over UDP, full answer over TCP

    A name not in the zone is NXDOMAIN; a known name without records of the
    asked type is NODATA.  TXT strings over 255 octets are split into
    several character-strings (DKIM keys).  ``queries`` counts (name, type).
"""

from __future__ import annotations

import collections
import socket
import socketserver
import struct
import threading
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 60


def _txt(value: str) -> str:
    raw = value.encode()
    return " ".join('"' + raw[i:i + 255].decode().replace('"', '\\"') + '"'
                    for i in range(0, max(len(raw), 1), 255))


def _rdata_text(rdtype: str, value: Any) -> str:
    if rdtype == "MX":
        preference, exchange = value
        return f"{preference} {exchange.rstrip('.')}." if exchange != "." else f"{preference} ."
    if rdtype == "TXT":
        return _txt(value)
    return str(value)


class DNSServer:
    def __init__(self, zone: dict[str, Any] | None = None, host: str = "127.0.0.1",
                 port: int = 0):
        self.zone: dict[str, Any] = {k.lower().rstrip("."): v for k, v in (zone or {}).items()}
        self.host = host
        self.port = port
        self.queries: collections.Counter[tuple[str, str]] = collections.Counter()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    def set(self, name: str, value: Any) -> None:
        self.zone[name.lower().rstrip(".")] = value

    def answer(self, wire: bytes, over_tcp: bool) -> bytes | None:
        """The reply to one query, or None to stay silent (TIMEOUT)."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries[(name, rdtype)] += 1
        entry = self.zone.get(name)
        if entry == "TIMEOUT":
            return None
        if entry is None or entry == "NXDOMAIN":
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif entry == "SERVFAIL":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif entry.get("truncate") and not over_tcp:
            response.flags |= dns.flags.TC
        else:
            values = entry.get(rdtype, [])
            if values:
                rrset = dns.rrset.from_text_list(question.name, TTL, "IN", rdtype,
                                                 [_rdata_text(rdtype, v) for v in values])
                response.answer.append(rrset)
        return response.to_wire()

    def start(self) -> DNSServer:
        server = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.answer(data, over_tcp=False)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = self.request
                head = conn.recv(2)
                if len(head) < 2:
                    return
                (length,) = struct.unpack("!H", head)
                data = b""
                while len(data) < length:
                    chunk = conn.recv(length - len(data))
                    if not chunk:
                        return
                    data += chunk
                reply = server.answer(data, over_tcp=True)
                if reply is not None:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)

        for _ in range(50):
            udp = socketserver.ThreadingUDPServer((self.host, self.port), UDPHandler)
            port = udp.server_address[1]
            try:
                tcp = socketserver.ThreadingTCPServer((self.host, port), TCPHandler,
                                                      bind_and_activate=False)
                tcp.allow_reuse_address = True
                tcp.server_bind()
                tcp.server_activate()
            except OSError:
                udp.server_close()
                if self.port:
                    raise
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        self.port = port
        for srv in (udp, tcp):
            srv.daemon_threads = True
            thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                      daemon=True, name=f"dns-{type(srv).__name__}")
            thread.start()
            self._servers.append(srv)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_tcp_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
