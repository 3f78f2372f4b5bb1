"""Fixtures: real databases (SQLite, MariaDB), a fake internet on loopback, the daemon.

MariaDB tests use a fresh database per test on 127.0.0.1:3306 (root, no
password; SPOOLD_TEST_MYSQL overrides the URL of the server) and skip, saying
why, when no server answers.  The ``world`` fixture starts a real DNS server
and real aiosmtpd sinks on 127.0.x.y addresses; ``spool`` writes a config that
points the whole delivery path at them and runs ``spoold`` as a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from spoold import config as config_mod
from spoold.store import Store, open_store

MYSQL_SERVER = os.environ.get("SPOOLD_TEST_MYSQL", "mysql://root@127.0.0.1:3306")


def _mysql_admin() -> pymysql.connections.Connection:
    from urllib.parse import urlsplit

    parts = urlsplit(MYSQL_SERVER)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                           user=parts.username or "root", password=parts.password or "",
                           connect_timeout=3, autocommit=True)


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh, empty MariaDB database for one test, dropped afterwards."""
    try:
        admin = _mysql_admin()
    except pymysql.MySQLError as exc:
        reason = f"no MariaDB server at {MYSQL_SERVER}: {exc.args[-1]}"
        if os.environ.get("SPOOLD_REQUIRE_MYSQL"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"spoold_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{MYSQL_SERVER}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'spool.db'}"
    return request.getfixturevalue("mysql_url")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    s.upgrade()
    yield s
    s.close()


@pytest.fixture
def world() -> Iterator:
    from spoold.fakenet import World

    w = World()
    w.start()
    yield w
    w.stop()


def write_config(path: Path, db_url: str, run_dir: Path, world=None, **sections: dict) -> Path:
    """A settings file for tests: fast retries, the fake internet, small timeouts."""
    settings: dict[str, dict] = {
        "database": {"url": db_url},
        "runner": {"run_dir": str(run_dir), "backoff_min": 0.5, "backoff_max": 1,
                   "flush_interval": 0.05, "scan_interval": 0.2, "grace_period": 10,
                   "child_timeout": 20, "max_children": 8},
        "smtp": {"helo_name": "spoold.test", "tls": "none", "connect_timeout": 2,
                 "greeting_timeout": 5, "helo_timeout": 5, "mail_timeout": 5,
                 "rcpt_timeout": 5, "data_init_timeout": 5, "data_block_timeout": 5,
                 "data_done_timeout": 5, "quit_timeout": 2},
        "log": {"format": "json"},
    }
    if world is not None:
        settings["smtp"]["port"] = world.port
        settings["dns"] = {"nameservers": world.nameservers, "port": world.dns.port,
                           "timeout": 2}
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    path.write_text(config_mod.dump(settings))
    config_mod.load(path)  # a test config must itself be valid
    return path


def wait_for(predicate, timeout: float = 20.0, what: str = "condition", every: float = 0.02):
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def log_events(lines, name: str) -> list[dict]:
    """The JSON log events called ``name`` among ``lines`` (other lines are skipped)."""
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            events.append(event)
    return events


class Spool:
    """One spoold instance under test: its config, its store, its daemon process."""

    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.config = config_mod.load(config_path)
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SPOOLD_CONFIG": str(config_path)}

    def store(self) -> Store:
        from spoold.store import store_for

        return store_for(self.config)

    def counts(self) -> dict[str, int]:
        store = self.store()
        try:
            return store.state_counts()
        finally:
            store.close()

    def cli(self, *args: str, input: bytes | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "spoold.cli", *args], env=self.env,
                              input=input, capture_output=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"spoold {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stderr.decode()}")
        return proc

    def start(self, *args: str) -> subprocess.Popen:
        log = open(self.config_path.with_suffix(f".{len(self.procs)}.log"), "wb")
        proc = subprocess.Popen([sys.executable, "-m", "spoold.cli", "run", *args],
                                env=self.env, stderr=log, stdout=log)
        self.procs.append(proc)
        return proc

    def log_lines(self) -> list[str]:
        lines = []
        for index in range(len(self.procs)):
            lines.extend(self.config_path.with_suffix(f".{index}.log").read_text().splitlines())
        return lines

    def drain(self, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "spoold.cli", "run", "--drain"],
                              env=self.env, capture_output=True, timeout=timeout)

    def wait_settled(self, timeout: float = 30.0, until=None) -> dict[str, int]:
        """Wait until nothing is queued or active (or ``until(counts)`` holds)."""
        store = self.store()
        deadline = time.monotonic() + timeout
        try:
            while True:
                counts = store.state_counts()
                done = until(counts) if until else counts["queued"] + counts["active"] == 0
                if done:
                    return counts
                if time.monotonic() > deadline:
                    raise AssertionError(f"queue did not settle: {counts}")
                time.sleep(0.1)
        finally:
            store.close()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def spool_factory(tmp_path: Path, world) -> Iterator:
    """Make Spool instances (several share one database for multi-runner tests)."""
    made: list[Spool] = []

    def make(db_url: str | None = None, name: str = "a", **sections: dict) -> Spool:
        url = db_url or f"sqlite://{tmp_path / 'spool.db'}"
        path = write_config(tmp_path / f"{name}.toml", url, tmp_path / f"run-{name}", world,
                            **sections)
        spool = Spool(path)
        made.append(spool)
        return spool

    yield make
    for spool in made:
        spool.stop()


@pytest.fixture
def spool(spool_factory) -> Spool:
    return spool_factory()


@pytest.fixture
def make_ui(tmp_path: Path) -> Iterator:
    """Make web UI applications (tests/webui_support.py) over one SQLite database (or
    ``db_url``), with the [webui] settings given; closed after the test."""
    from webui_support import UI

    made: list[UI] = []

    def make(db_url: str | None = None, **webui) -> UI:
        path = write_config(tmp_path / f"ui{len(made)}.toml",
                            db_url or f"sqlite://{tmp_path / 'spool.db'}", tmp_path / "run",
                            webui={"login_limit": "1000 per minute", **webui})
        made.append(UI(path))
        return made[-1]

    yield make
    for ui in made:
        ui.close()


@pytest.fixture
def ui(make_ui):
    return make_ui()
