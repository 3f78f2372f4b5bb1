"""The fake internet both spoolers deliver to: smtp-sink MX hosts and their DNS.

``SinkFleet`` runs Postfix's ``smtp-sink`` (C, fast, so the sinks are not
what is measured) on 127.0.2.1, 127.0.2.2, ... all on one port, and reads
the running counters it prints with ``-c`` to tell how many messages were
accepted.  ``SlowSinks`` puts aiosmtpd sinks (spoold.fakenet, in a process
of their own: bench/slowsink.py) on the same addresses on another port,
each reply delayed, for the WAN-like scenario and for latency timestamps,
which smtp-sink's whole-second delays cannot give.  ``zone`` is the DNS
data spoold resolves: one MX host per domain, spread over the sinks;
Postfix gets the same map as ``transport_maps``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

from bench.procs import Procs
from spoold.fakenet import DNSServer

_COUNTER = re.compile(rb"mesg=(\d+)")


def domains(count: int) -> list[str]:
    return [f"d{i}.bench.test" for i in range(count)]


def sink_host(index: int) -> str:
    return f"127.0.2.{index + 1}"


def host_for(domain_index: int, sinks: int) -> str:
    return sink_host(domain_index % sinks)


def zone(names: list[str], sinks: int) -> dict[str, dict[str, list]]:
    """MX and A records: domain i goes to the sink at host_for(i)."""
    records: dict[str, dict[str, list]] = {}
    for index, name in enumerate(names):
        records[name] = {"MX": [(10, f"mx.{name}")]}
        records[f"mx.{name}"] = {"A": [host_for(index, sinks)]}
    return records


def start_dns(names: list[str], sinks: int) -> DNSServer:
    return DNSServer(zone(names, sinks)).start()


class SinkFleet:
    """smtp-sink processes, one per loopback address, counting accepted messages."""

    def __init__(self, procs: Procs, work: Path, count: int, port: int):
        self.count, self.port = count, port
        self.logs = [work / f"sink{i}.out" for i in range(count)]
        for index, log in enumerate(self.logs):
            log.write_bytes(b"")
            procs.start(["smtp-sink", "-c", "-u", "nobody", "-m", "2000",
                         f"{sink_host(index)}:{port}", "1024"], log=log)

    def accepted(self) -> int:
        return sum(_last_counter(log) for log in self.logs)


def _last_counter(log: Path) -> int:
    with open(log, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - 128))
        found = _COUNTER.findall(handle.read())
    return int(found[-1]) if found else 0


class SlowSinks:
    """aiosmtpd sinks (bench/slowsink.py) that wait ``delay`` seconds before each reply."""

    def __init__(self, procs: Procs, count: int, port: int, delay: float):
        self.port = port
        self.proc = procs.start([sys.executable, "-m", "bench.slowsink", str(port), str(delay),
                                 str(count)], stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            raise RuntimeError("bench.slowsink did not start")
        self._arrivals: list[float] = []
        self._base = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._arrivals.append(float(line))

    def accepted(self) -> int:
        return len(self._arrivals) - self._base

    def arrivals(self) -> list[float]:
        return self._arrivals[self._base:]

    def reset(self) -> None:
        self._base = len(self._arrivals)
