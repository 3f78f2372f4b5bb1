"""The pieces of a chaos run: a fake internet with faulty peers, spools to kill, accounting.

NAME
    bench.chaoslib - what bench/chaos.py and tests/test_chaos.py build scenarios from

DESCRIPTION
    ``chaos_world()`` starts a spoold.fakenet World with healthy domains and
    one domain per peer fault (SMTP sinks that tempfail, reject, tarpit, drop
    or close without a reply; name servers that time out, SERVFAIL, NXDOMAIN,
    truncate, or publish a null MX).  ``Faults.clear()`` heals the temporary
    ones, so a run can end with everything delivered that could be.

    ``ChaosSpool`` is one spoold instance: a config file, a run directory,
    ``spoold run`` as a subprocess that can be started again after a kill,
    and its sender children.  ``Batch`` enqueues a known set of messages,
    each with a unique Message-ID, through spoold.enqueue, and ``account()``
    says what became of each one: delivered at a sink (counted by
    Message-ID), bounced or expired (the delivery log), or still queued --
    lost is what is none of these, and must be 0 -- and how many arrived at
    a sink more than once.

    ``mariadb_down()`` stops the MariaDB server and always starts it again,
    even when the scenario fails.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pymysql

import sender
import spoold
from spoold import config as config_mod
from spoold.fakenet import Behaviour, World
from spoold.store import Store, store_for

SENDER = "chaos@spoold.chaos.test"
MYSQL_SERVER = os.environ.get("SPOOLD_TEST_MYSQL", "mysql://root@127.0.0.1:3306")

# Temporary faults: cleared by Faults.clear(), then their mail goes through.
SMTP_TEMPORARY = {
    "busy": Behaviour(greeting="421 4.3.2 Too busy"),
    "grey": Behaviour(tempfail_first=1),
    "full": Behaviour(rcpt_reply="452 4.2.2 Mailbox full"),
    "garbage": Behaviour(rcpt_reply="this is no SMTP reply"),
    "overlong": Behaviour(data_reply="250 " + "x" * 10_000),
    "dropmail": Behaviour(drop_at="mail"),
    "dropbody": Behaviour(drop_at="body"),
    "tarpit": Behaviour(tarpit_at="dot", tarpit_pace=0.3),
    "starttls": Behaviour(broken_starttls=True),  # tls = may: retried in plain text
}
DNS_TEMPORARY = {"dnstimeout": "TIMEOUT", "servfail": "SERVFAIL"}
# Permanent faults: their mail bounces or expires whatever happens.
SMTP_PERMANENT = {
    "reject": Behaviour(rcpt_reply="550 5.1.1 No such user"),
    "spam": Behaviour(data_reply="554 5.7.1 Looks like spam"),
    "down": Behaviour(rcpt_reply="451 4.3.0 Try again later"),  # expires
}
DNS_PERMANENT = {"nxdomain": "NXDOMAIN", "nullmx": "NULLMX"}
# The RFC 1047 window on purpose: the sink keeps the message and never says so.
SILENT = {"silent": Behaviour(drop_after_data=True)}


def domain(name: str) -> str:
    return f"{name}.chaos.test"


@dataclass
class Faults:
    """The fault domains of a chaos world, and how to heal the temporary ones."""

    world: World
    temporary: list[str] = field(default_factory=list)
    permanent: list[str] = field(default_factory=list)
    silent_hosts: set[str] = field(default_factory=set)  # their duplicates are on purpose

    def clear(self) -> None:
        for name in self.temporary:
            for sink in self.world.sinks_for(domain(name)):
                sink.behaviour = Behaviour()
            if name in DNS_TEMPORARY or not self.world.sinks_for(domain(name)):
                self.world.add_domain(domain(name))


def chaos_world(healthy: int, faults: bool, silent: bool = False) -> tuple[World, Faults]:
    """A started World: ``healthy`` good domains, and the fault domains if ``faults``."""
    world = World().start()
    for index in range(healthy):
        world.add_domain(domain(f"ok{index}"), mx_count=1 + index % 2)
    chosen = Faults(world)
    if faults:
        for name, behaviour in {**SMTP_TEMPORARY, **(SILENT if silent else {})}.items():
            sinks = world.add_domain(domain(name), Behaviour(**vars(behaviour)))
            if name in SILENT:
                chosen.silent_hosts.update(sink.host for sink in sinks)
            chosen.temporary.append(name)
        for name, kind in DNS_TEMPORARY.items():
            world.add_dns_failure(domain(name), kind)
            chosen.temporary.append(name)
        for name, behaviour in SMTP_PERMANENT.items():
            world.add_domain(domain(name), behaviour)
            chosen.permanent.append(name)
        world.add_dns_failure(domain("nxdomain"), "NXDOMAIN")
        world.add_null_mx(domain("nullmx"))
        chosen.permanent += list(DNS_PERMANENT)
        world.add_domain(domain("truncated"))
        world.dns.zone[domain("truncated")]["truncate"] = True  # answered over TCP
    return world, chosen


def recipients(count: int, world_faults: Faults, healthy: int, fault_share: float,
               seed: int = 1) -> list[str]:
    """``count`` recipients, ``fault_share`` of them at fault domains."""
    rng = random.Random(seed)
    faulty = world_faults.temporary + world_faults.permanent + (
        ["truncated"] if world_faults.temporary else [])
    out = []
    for index in range(count):
        if faulty and rng.random() < fault_share:
            name = rng.choice(faulty)
        else:
            name = f"ok{index % healthy}"
        out.append(f"u{index}@{domain(name)}")
    return out


# -- spools ------------------------------------------------------------------


def fresh_mysql_url() -> str:
    """A new, empty MariaDB database for one run (drop_mysql() removes it)."""
    name = f"spoold_chaos_{uuid.uuid4().hex[:10]}"
    with contextlib.closing(_mysql_admin()) as admin, admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    return f"{MYSQL_SERVER}/{name}"


def drop_mysql(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with contextlib.closing(_mysql_admin()) as admin, admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")


def _mysql_admin() -> pymysql.connections.Connection:
    from urllib.parse import urlsplit

    parts = urlsplit(MYSQL_SERVER)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                           user=parts.username or "root", password=parts.password or "",
                           connect_timeout=3, autocommit=True)


CHAOS_SETTINGS: dict[str, dict[str, Any]] = {
    "runner": {"backoff_min": 1, "backoff_max": 4, "scan_interval": 1,
               "grace_period": 5, "child_timeout": 10, "max_children": 20, "lease": 10,
               "job_size": 20},
    "smtp": {"helo_name": "spoold.chaos.test", "tls": "may", "connect_timeout": 2,
             "greeting_timeout": 3, "helo_timeout": 3, "mail_timeout": 3, "rcpt_timeout": 3,
             "data_init_timeout": 3, "data_block_timeout": 3, "data_done_timeout": 3,
             "quit_timeout": 2},
    "log": {"format": "json"},
    # The 421 fault throttles its destination (spoold/shaping.py); a short pause
    # keeps that path in the run without a minute's wait at the end of each.
    "shaping": {"throttle_pause": 5, "recovery_interval": 1},
}


class ChaosSpool:
    """One spoold instance under fire: config, run directory, daemon, children."""

    def __init__(self, work: Path, db_url: str, world: World, name: str = "a",
                 **overrides: dict[str, Any]):
        self.work = work
        self.name = name
        self.config_path = work / f"{name}.toml"
        settings = {section: dict(values) for section, values in CHAOS_SETTINGS.items()}
        settings["database"] = {"url": db_url}
        settings["runner"]["run_dir"] = str(work / f"run-{name}")
        settings["smtp"]["port"] = world.port
        settings["dns"] = {"nameservers": world.nameservers, "port": world.dns.port,
                           "timeout": 2}
        for section, values in overrides.items():
            settings.setdefault(section, {}).update(values)
        work.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_mod.dump(settings))
        self.config = config_mod.load(self.config_path)
        self.env = {**os.environ, "SPOOLD_CONFIG": str(self.config_path)}
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.crashes = 0  # lives that ended by themselves with a non-zero status

    @property
    def owner(self) -> str:
        from spoold.runner import owner_name

        return owner_name(self.config.runner.run_dir)

    @property
    def log_path(self) -> Path:
        return self.work / f"{self.name}.log"

    def store(self) -> Store:
        return store_for(self.config)

    def start(self) -> subprocess.Popen:
        self._note_crash()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "spoold.cli", "run"],
                                         env=self.env, stdout=log, stderr=log)
        self.starts += 1
        return self.proc

    def _note_crash(self) -> None:
        if self.proc is not None and self.proc.poll() not in (None, 0, -signal.SIGKILL):
            self.crashes += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 the runner (its children die with it, PR_SET_PDEATHSIG; one
        waiting for the reply to a final dot reads and journals it first)."""
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30) -> int | None:
        if not self.running():
            self._note_crash()
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def children(self) -> list[psutil.Process]:
        if not self.running():
            return []
        try:
            kids = psutil.Process(self.proc.pid).children()
            return [c for c in kids if sender.TITLE in " ".join(c.cmdline())]
        except psutil.NoSuchProcess:
            return []

    def _events(self, name: str) -> Iterator[dict[str, Any]]:
        """The runner's log events of this name (all its lives)."""
        needle = f'"event": "{name}"'
        with open(self.log_path, errors="replace") as log:
            for line in log:
                if needle in line:
                    yield json.loads(line)

    def first_error(self, name: str) -> str:
        """The error text of the first ``name`` event in the runner's log."""
        return next((str(e.get("error", "")) for e in self._events(name)), "")

    def events(self, name: str) -> int:
        """How many log events of this name the runner wrote (all its lives)."""
        return sum(1 for _ in self._events(name))

    def event_sum(self, name: str, key: str) -> float:
        """The sum of ``key`` over the runner's ``name`` events."""
        return sum(float(e.get(key, 0)) for e in self._events(name))


# -- messages and accounting --------------------------------------------------


@dataclass
class Batch:
    """The messages of one run: queue id -> Message-ID."""

    tag: str
    ids: dict[int, str] = field(default_factory=dict)

    def enqueue(self, spool: ChaosSpool, addresses: list[str],
                expiring: Callable[[str], float | None] = lambda _: None) -> None:
        store = spool.store()
        try:
            for index, rcpt in enumerate(addresses):
                message_id = f"<{self.tag}.{index}@spoold.chaos.test>"
                data = (f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: chaos {index}\r\n"
                        f"Date: {email.utils.formatdate()}\r\nMessage-ID: {message_id}\r\n"
                        f"\r\nchaos message {index}\r\n").encode()
                result = spoold.enqueue(data, sender=SENDER, recipients=[rcpt],
                                        expires_at=expiring(rcpt), config=spool.config,
                                        store=store)
                for queue_id in result.ids:
                    self.ids[queue_id] = message_id
        finally:
            store.close()


@dataclass
class Tally:
    scenario: str
    enqueued: int = 0
    sent: int = 0
    bounced: int = 0
    expired: int = 0
    queued: int = 0
    lost: int = 0
    duplicates: int = 0
    kills: int = 0
    wall: float = 0.0
    notes: list[str] = field(default_factory=list)
    kill_times: list[float] = field(default_factory=list)  # time.time() of each kill
    unexplained: int = 0  # duplicates no kill or silent peer accounts for
    skipped: bool = False  # the machine could not stage this scenario's fault

    def kill(self) -> None:
        self.kills += 1
        self.kill_times.append(time.time())

    COLUMNS = ("scenario", "enqueued", "sent", "bounced", "expired", "queued", "lost",
               "duplicates", "kills", "wall")

    def cells(self) -> list[str]:
        if self.skipped:
            return [self.scenario, *("-" for _ in self.COLUMNS[1:])]
        return [self.scenario, *(str(getattr(self, c)) for c in self.COLUMNS[1:-1]),
                f"{self.wall:.0f} s"]

    def line(self) -> str:
        return "  ".join(f"{c}={v}" for c, v in zip(self.COLUMNS, self.cells()))


# A duplicate is explained by a kill that came at most WINDOW seconds after its
# first arrival (the child's read of the 250 and its journal write, with room for
# a loaded machine), or at most LAG seconds before it: the final dot was on its
# way when the client died, and the sink's event loop took it in a moment later.
WINDOW = 1.0
LAG = 0.25


def _explained(first: tuple[float, str], kill_times: list[float], silent: set[str]) -> bool:
    at, host = first
    if host in silent:
        return True  # the peer kept it without a reply on purpose (chaoslib.SILENT)
    return any(-LAG <= kill - at <= WINDOW for kill in kill_times)


def sink_counts(world: World) -> collections.Counter[str]:
    """Message-IDs as received by every sink, once per reception."""
    return collections.Counter(m.message_id for m in world.all_messages() if m.message_id)


def account(tally: Tally, batch: Batch, store: Store, world: World,
            silent_hosts: set[str] = frozenset()) -> Tally:
    """Fill ``tally`` with what became of each message of ``batch``."""
    final: dict[int, list[str]] = collections.defaultdict(list)
    for attempt in store.deliveries(limit=10_000_000):
        if attempt["notify_id"] in batch.ids and attempt["status"] in ("sent", "bounced",
                                                                        "expired"):
            final[attempt["notify_id"]].append(attempt["status"])
    queued = {row["id"] for row in store.queue_rows(limit=10_000_000)} & batch.ids.keys()
    tally.enqueued = len(batch.ids)
    for status in ("sent", "bounced", "expired"):
        setattr(tally, status, sum(statuses[0] == status for statuses in final.values()))
    tally.queued = len(queued)
    tally.lost = len(batch.ids.keys() - final.keys() - queued)
    twice_final = [i for i, statuses in final.items() if len(statuses) > 1]
    if twice_final:
        tally.notes.append(f"{len(twice_final)} rows with two final outcomes")
    received = sink_counts(world)
    mine = {batch.ids[i] for i in batch.ids}
    tally.duplicates = sum(n - 1 for mid, n in received.items() if mid in mine and n > 1)
    first: dict[str, tuple[float, str]] = {}  # Message-ID -> (first arrival, sink host)
    for sink in world.pool.sinks:
        for message in list(sink.messages):
            mid = message.message_id
            if mid in mine and (mid not in first or message.at < first[mid][0]):
                first[mid] = (message.at, sink.host)
    tally.unexplained = sum(n - 1 for mid, n in received.items()
                            if mid in mine and n > 1
                            and not _explained(first[mid], tally.kill_times, silent_hosts))
    if tally.unexplained:
        tally.notes.append(f"{tally.unexplained} duplicates not within {WINDOW:g} s "
                           f"before (or {LAG:g} s after) a kill")
    phantom = [i for i, statuses in final.items() if statuses[0] == "sent"
               and received[batch.ids[i]] == 0]
    if phantom:
        tally.notes.append(f"{len(phantom)} logged sent but never received")
    return tally


def settle(spools: list[ChaosSpool], batch: Batch, timeout: float,
           still: Callable[[], None] = lambda: None) -> None:
    """Wait until none of the batch is queued or active (held rows are set aside)."""
    store = spools[0].store()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            still()
            counts = store.state_counts()
            if counts["queued"] + counts["active"] == 0:
                return
            time.sleep(0.25)
    finally:
        store.close()


def delivered(world: World) -> int:
    return sum(len(sink.messages) for sink in world.pool.sinks)


def wait_delivered(world: World, count: int, timeout: float, spools: list[ChaosSpool]) -> bool:
    """Until the sinks hold ``count`` messages; False if a runner died or time ran out."""
    deadline = time.monotonic() + timeout
    while delivered(world) < count:
        if time.monotonic() > deadline or not any(s.running() for s in spools):
            return False
        time.sleep(0.02)
    return True


# -- MariaDB ---------------------------------------------------------------


def mariadb_alive() -> bool:
    return subprocess.run(["mysqladmin", "-h127.0.0.1", "-uroot", "ping"],
                          capture_output=True).returncode == 0


def mariadb_start(timeout: float = 60) -> None:
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec",
                    "/usr/sbin/mariadbd"], check=False, capture_output=True)
    deadline = time.monotonic() + timeout
    while not mariadb_alive():
        if time.monotonic() > deadline:
            raise RuntimeError("MariaDB did not come back")
        time.sleep(0.2)


@contextlib.contextmanager
def mariadb_down() -> Iterator[None]:
    """MariaDB stopped for the body of the with-block, and started again whatever happens."""
    subprocess.run(["mysqladmin", "-h127.0.0.1", "-uroot", "shutdown"], check=False,
                   capture_output=True)
    try:
        deadline = time.monotonic() + 30
        while mariadb_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield
    finally:
        mariadb_start()
