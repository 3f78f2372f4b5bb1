"""The benchmark's six scenarios, each run for spoold and Postfix alternately.

    1 throughput   many small messages over many domains, C sinks
    2 wan          the same with every reply delayed: concurrency decides
    3 ceiling      smtp-source straight into the sinks, no spooler
    4 pickup       one message to an idle daemon until a sink has it
    5 growth       claim + dispatch cost with 10k vs 1M rows queued
    6 fanout       the seed mailer's process per mail, spoold's fork per mail, reuse

Each function returns ``{system: [figures of each run]}``; report.py turns
them into medians, ranges and ratios.  Times are wall-clock from the first
enqueue to the last acceptance at the sinks; CPU is user+system of the
spooler's whole process tree (and spoold's injector) per 1,000 messages.
"""

from __future__ import annotations

import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench import net
from bench.postfix import Postfix
from bench.inject import SENDER
from bench.procs import Procs, children_pss_mb, peak_rss_mb
from bench.spool import SeedMailer, Spoold
from spoold import config as config_mod
from spoold.enqueue import enqueue
from spoold.fakenet import DNSServer
from spoold.store import PRIORITIES, store_for

FLEET_PORT = 2525
SLOW_PORT = 2526
SIZE = 2048

Figures = dict[str, float]
Results = dict[str, list[Figures]]


class BenchError(Exception):
    """A run that did not finish as it should (mail missing, a daemon down)."""


class Spooler(Protocol):
    def prepare(self) -> Any: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def cpu(self) -> float: ...
    def inject(self, recipients: list[str], size: int) -> float: ...
    def wait_idle(self, timeout: float = 30.0) -> None: ...


@dataclass
class Setting:
    """What every scenario shares: processes, directories, sinks and DNS."""
    procs: Procs
    work: Path
    runs: int
    messages: int
    domains: list[str]
    sinks: int
    children: int
    destination_concurrency: int = 20
    fleet: net.SinkFleet | None = None
    dns: DNSServer | None = None
    slow: dict[float, net.SlowSinks] = field(default_factory=dict)

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.fleet = net.SinkFleet(self.procs, self.work, self.sinks, FLEET_PORT)
        self.dns = net.start_dns(self.domains, self.sinks)

    def stop(self) -> None:
        if self.dns:
            self.dns.stop()
        self.procs.stop_all()

    def slow_sinks(self, delay: float) -> net.SlowSinks:
        port = SLOW_PORT + len(self.slow)
        if delay not in self.slow:
            self.slow[delay] = net.SlowSinks(self.procs, self.sinks, port, delay)
        return self.slow[delay]

    def spoold(self, port: int, kind: type[Spoold] = Spoold, **runner: Any) -> Spoold:
        settings = {"max_children": self.children,
                    "destination_concurrency": self.destination_concurrency, **runner}
        assert self.dns is not None
        return kind(self.procs, self.work, self.dns, port, **settings)

    def postfix(self, port: int) -> Postfix:
        transport = {d: f"[{net.host_for(i, self.sinks)}]:{port}"
                     for i, d in enumerate(self.domains)}
        return Postfix(self.procs, self.work, transport, self.children,
                       self.destination_concurrency)

    def recipients(self, count: int, unique: bool) -> list[str]:
        """``count`` addresses round-robin over the domains (Postfix: one per domain)."""
        return [f"user{i if unique else ''}@{self.domains[i % len(self.domains)]}"
                for i in range(count)]


def deliver(system: Spooler, accepted: Callable[[], int], recipients: list[str],
            timeout: float) -> Figures:
    """Inject while the daemon delivers; measure until the sinks hold every message."""
    before, cpu_before = accepted(), system.cpu()
    injection: dict[str, Any] = {}

    def inject() -> None:
        try:
            injection["cpu"] = system.inject(recipients, SIZE)
        except Exception as exc:  # reported by the waiting thread
            injection["error"] = exc
        injection["end"] = time.monotonic()

    started = time.monotonic()
    thread = threading.Thread(target=inject)
    thread.start()
    first, last = _watch(accepted, before, len(recipients), started + timeout, injection)
    thread.join()
    if "error" in injection:
        raise BenchError(f"injection failed: {injection['error']}")
    system.wait_idle()
    cpu = system.cpu() - cpu_before + injection["cpu"]
    count = len(recipients)
    return {"rate": count / (last - started),
            "inject_rate": count / (injection["end"] - started),
            "delivery_rate": count / (last - first) if last > first else 0.0,
            "cpu_per_1000": 1000 * cpu / count,
            "inject_cpu_per_1000": 1000 * injection["cpu"] / count}


def _watch(accepted: Callable[[], int], before: int, count: int, deadline: float,
           injection: dict[str, Any]) -> tuple[float, float]:
    first = 0.0
    while True:
        got = accepted() - before
        now = time.monotonic()
        if got and not first:
            first = now
        if got >= count:
            return first, now
        if now > deadline or "error" in injection:
            raise BenchError(f"only {got} of {count} messages reached the sinks in time")
        time.sleep(0.01)


def _alternate(setting: Setting, systems: dict[str, Spooler],
               run: Callable[[Spooler], Figures], label: str) -> Results:
    results: Results = {name: [] for name in systems}
    for number in range(setting.runs):
        for name, system in systems.items():
            system.prepare()
            system.start()
            try:
                figures = run(system)
            finally:
                system.stop()
            results[name].append(figures)
            print(f"  {label} run {number + 1}/{setting.runs} {name:8s} "
                  + " ".join(f"{k}={v:.1f}" for k, v in figures.items()), flush=True)
    return results


def _timeout(messages: int) -> float:
    return 120 + messages / 20


def throughput(setting: Setting) -> Results:
    assert setting.fleet is not None
    fleet = setting.fleet
    systems: dict[str, Spooler] = {"spoold": setting.spoold(FLEET_PORT),
                                   "postfix": setting.postfix(FLEET_PORT)}
    count = setting.messages

    def run(system: Spooler) -> Figures:
        unique = isinstance(system, Spoold)
        return deliver(system, fleet.accepted, setting.recipients(count, unique),
                       _timeout(count))
    return _alternate(setting, systems, run, "throughput")


def wan(setting: Setting, delay: float = 0.1) -> Results:
    slow = setting.slow_sinks(delay)
    port = slow.port
    systems: dict[str, Spooler] = {"spoold": setting.spoold(port),
                                   "postfix": setting.postfix(port)}
    count = max(1000, setting.messages // 4)

    def run(system: Spooler) -> Figures:
        unique = isinstance(system, Spoold)
        slow.reset()
        return deliver(system, slow.accepted, setting.recipients(count, unique),
                       _timeout(count))
    return _alternate(setting, systems, run, "wan")


def ceiling(setting: Setting) -> Results:
    """smtp-source into every sink at once, 10 sessions each: the protocol's limit here."""
    assert setting.fleet is not None
    fleet, count = setting.fleet, setting.messages
    per_sink = count // setting.sinks
    results: Results = {"smtp-source": []}
    for _ in range(setting.runs):
        before, started = fleet.accepted(), time.monotonic()
        sources = [subprocess.Popen(
            ["smtp-source", "-d", "-s", "10", "-m", str(per_sink), "-l", str(SIZE),
             "-t", f"user@{setting.domains[i]}", f"{net.sink_host(i)}:{FLEET_PORT}"])
            for i in range(setting.sinks)]
        for source in sources:
            source.wait()
        seconds = time.monotonic() - started
        got = fleet.accepted() - before
        if got < per_sink * setting.sinks:
            raise BenchError(f"smtp-source: only {got} messages reached the sinks")
        results["smtp-source"].append({"rate": got / seconds})
        print(f"  ceiling {got / seconds:.0f} msg/s", flush=True)
    return results


def pickup(setting: Setting, tries: int = 200) -> Results:
    """Latency from enqueue (API; Postfix: sendmail) to arrival, one message at a time."""
    sinks = setting.slow_sinks(0.0)
    port = sinks.port
    spoold, postfix = setting.spoold(port), setting.postfix(port)
    config = spoold.prepare()
    store = store_for(config)
    message = (f"From: <bench@postfix.bench.test>\nTo: <user@{setting.domains[0]}>\n"
               "Subject: latency\n\nhello\n").encode()
    submit = {
        "spoold": lambda address: enqueue(sender=SENDER,
                                          recipients=[address], subject="latency",
                                          body="hello\n", config=config, store=store),
        "postfix": lambda address: postfix.sendmail(address, message),
    }
    results: Results = {}
    try:
        postfix.prepare()
        for name, system in (("spoold", spoold), ("postfix", postfix)):
            system.start()
            try:
                time.sleep(1.0)  # idle: start-up work is over
                latencies = _latencies(sinks, submit[name], setting.domains, tries)
            finally:
                system.stop()
            results[name] = [{"p50_ms": _percentile(latencies, 50),
                              "p99_ms": _percentile(latencies, 99)}]
            print(f"  pickup {name:8s} p50={results[name][0]['p50_ms']:.1f} ms "
                  f"p99={results[name][0]['p99_ms']:.1f} ms", flush=True)
    finally:
        store.close()
    return results


def _latencies(sinks: net.SlowSinks, submit: Callable[[str], Any], domains: list[str],
               tries: int) -> list[float]:
    latencies = []
    for index in range(tries):
        sinks.reset()
        started = time.time()
        submit(f"user{index}@{domains[index % len(domains)]}")
        deadline = time.monotonic() + 10
        while not sinks.accepted():
            if time.monotonic() > deadline:
                raise BenchError(f"pickup: try {index} did not arrive within 10 s")
            time.sleep(0.001)
        latencies.append(1000 * (sinks.arrivals()[0] - started))
        time.sleep(0.05)
    return latencies


def _percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] if pct < 100 \
        else max(values)


def growth(setting: Setting, due: int = 10_000, backlogs: tuple[int, ...] = (0, 1_000_000)
           ) -> Results:
    """spoold alone: claim cost and delivery of ``due`` rows behind a backlog not yet due."""
    assert setting.fleet is not None
    fleet = setting.fleet
    results: Results = {}
    for backlog in backlogs:
        spoold = setting.spoold(FLEET_PORT)
        config = spoold.prepare()
        _fill(config, spoold.work / "spool.db", setting.recipients(due, unique=True), backlog)
        claim_us = statistics.median(_claim_cost(config, due) for _ in range(setting.runs))
        before, started = fleet.accepted(), time.monotonic()
        spoold.start()
        try:
            children, pss = _watch_pool(spoold.pid, fleet.accepted, before + due,
                                        started + _timeout(due))
            seconds = time.monotonic() - started
            rss = peak_rss_mb(spoold.pid)
        finally:
            spoold.stop()
        label = f"{due // 1000}k due + {backlog:,} not due"
        results[label] = [{"claim_us_per_msg": claim_us, "ms_per_msg": 1000 * seconds / due,
                           "runner_peak_rss_mb": rss, "children_seen": children,
                           "child_pss_mb": pss}]
        print(f"  growth {label}: " + " ".join(f"{k}={v:.2f}" for k, v in
                                               results[label][0].items()), flush=True)
    return results


def _fill(config: config_mod.Config, path: Path, due: list[str], backlog: int) -> None:
    """Queue rows straight into SQLite: ``due`` now, ``backlog`` a day from now.

    Each due row has a message of its own, as in the throughput scenario: the
    sinks count messages, and rows sharing one would travel as one.
    """
    store_for(config).close()  # the schema
    now = time.time()
    body = b"Subject: growth\r\n\r\nhello\r\n"
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO message (id, sender, body, size, created_at) "
                       "VALUES (?, ?, ?, ?, ?)",
                       [(i + 1, SENDER, body, len(body), now) for i in range(len(due))])
        db.executemany("INSERT INTO notify (message_id, sender, recipient, domain, priority, "
                       "state, attempts, created_at, not_before, expires_at) "
                       "VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)",
                       [(i + 1, SENDER, address, address.split("@")[1], PRIORITIES["normal"],
                         now, now, now + 86400) for i, address in enumerate(due)])
        db.execute("""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
            INSERT INTO notify (message_id, sender, recipient, domain, priority, state,
                                attempts, created_at, not_before, expires_at)
            SELECT 1, ?, 'later' || i || '@later.bench.test',
                   'later.bench.test', 1, 'queued', 0, unixepoch(), unixepoch() + 86400,
                   unixepoch() + 5 * 86400 FROM n""", (backlog, SENDER))


def _claim_cost(config: config_mod.Config, due: int) -> float:
    """Microseconds per row to claim every due row in batches, then give them back."""
    store = store_for(config)
    try:
        started, claimed = time.perf_counter(), 0
        while claimed < due:
            rows = store.claim("bench", config.runner.claim_batch, time.time() + 60)
            if not rows:
                break
            claimed += len(rows)
        seconds = time.perf_counter() - started
        store.release_owner("bench")
    finally:
        store.close()
    if claimed != due:
        raise BenchError(f"growth: claimed {claimed} of {due} due rows")
    return 1e6 * seconds / due


def _watch_pool(pid: int, accepted: Callable[[], int], target: int, deadline: float
                ) -> tuple[float, float]:
    """Wait for ``target`` acceptances; the fullest pool seen and its children's mean PSS."""
    most, pss, last_sample = 0, 0.0, 0.0
    while accepted() < target:
        if time.monotonic() > deadline:
            raise BenchError("growth: the due rows were not delivered in time")
        if time.monotonic() - last_sample > 0.5:
            count, mean = children_pss_mb(pid)
            if count > most:
                most, pss = count, mean
            last_sample = time.monotonic()
        time.sleep(0.01)
    return most, pss


def fanout(setting: Setting, messages: int = 600) -> Results:
    """Process models over one queue: the seed mailer's fresh process per mail, spoold's
    forked child per mail (max_use = 1), and spoold's reused children."""
    assert setting.fleet is not None
    fleet = setting.fleet
    systems: dict[str, Spooler] = {
        "seed model": setting.spoold(FLEET_PORT, SeedMailer),
        "max_use=1": setting.spoold(FLEET_PORT, max_use=1, job_size=1),
        "reuse": setting.spoold(FLEET_PORT)}

    def run(system: Spooler) -> Figures:
        return deliver(system, fleet.accepted, setting.recipients(messages, True),
                       _timeout(messages))
    return _alternate(setting, systems, run, "fanout")


SCENARIOS: dict[str, Callable[[Setting], Results]] = {
    "throughput": throughput, "wan": wan, "ceiling": ceiling, "pickup": pickup,
    "growth": growth, "fanout": fanout}
