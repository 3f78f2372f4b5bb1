"""A spoold instance for the benchmark: the daemon under test.

A throw-away work directory with its own SQLite queue and run directory,
``spoold run`` as a real subprocess resolving through the benchmark's DNS
server, and injection through the application API (``spoold.enqueue``) in
separate processes (bench/inject.py), whose CPU is counted as spoold's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.inject import CLIENTS
from bench.procs import Procs, tree_cpu
from spoold import config as config_mod
from spoold.fakenet import DNSServer
from spoold.store import store_for



class Spoold:
    def __init__(self, procs: Procs, work: Path, dns: DNSServer, port: int,
                 **runner: Any):
        self.procs = procs
        self.work = work / "spoold"
        self.dns, self.port, self.runner_settings = dns, port, runner
        self.pid = 0

    @property
    def config_path(self) -> Path:
        return self.work / "spoold.toml"

    def prepare(self) -> config_mod.Config:
        """A fresh, empty queue and a config file; returns the loaded config."""
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "run").mkdir(parents=True)
        self.config_path.write_text(config_mod.dump({
            "database": {"url": f"sqlite://{self.work / 'spool.db'}"},
            "runner": {"run_dir": str(self.work / "run"), **self.runner_settings},
            "smtp": {"port": self.port, "helo_name": "spoold.bench.test", "tls": "none"},
            "dns": {"nameservers": [self.dns.host], "port": self.dns.port},
            # As the Postfix it is compared with: no MTA-STS lookups (Postfix
            # has none built in); JSON logs, as under systemd.
            "mta_sts": {"enabled": False},
            "log": {"format": "json"},
        }))
        config = config_mod.load(self.config_path)
        store_for(config).close()  # creates the schema
        return config

    def start(self) -> None:
        env = {**os.environ, "SPOOLD_CONFIG": str(self.config_path)}
        proc = self.procs.start([sys.executable, "-m", "spoold.cli", "run"],
                                log=self.work / "spoold.log", env=env)
        self.pid = proc.pid
        poke = self.work / "run" / "poke.sock"
        deadline = time.monotonic() + 10
        while not poke.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"spoold run did not start; see {self.work / 'spoold.log'}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.procs.stop(self.pid)

    def cpu(self) -> float:
        return tree_cpu(self.pid)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no row is queued or being sent: every result is recorded."""
        store = store_for(config_mod.load(self.config_path))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                counts = store.state_counts()
                if counts["queued"] + counts["active"] == 0:
                    return
                time.sleep(0.05)
        finally:
            store.close()

    def inject(self, recipients: list[str], size: int) -> float:
        """Enqueue one message per recipient from CLIENTS processes at once, as Postfix
        is fed by CLIENTS smtp-source runs; returns their CPU seconds."""
        procs = []
        for client in range(CLIENTS):
            proc = subprocess.Popen([sys.executable, "-m", "bench.inject", str(self.config_path),
                                     str(size)], stdin=subprocess.PIPE)
            self.procs.adopt(proc.pid)
            proc.stdin.write("\n".join(recipients[client::CLIENTS]).encode())  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
            procs.append(proc)
        cpu = 0.0
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.procs.pids.remove(proc.pid)
            if proc.returncode:
                raise RuntimeError(f"bench.inject exited with {proc.returncode}")
            cpu += usage.ru_utime + usage.ru_stime
        return cpu


class SeedMailer(Spoold):
    """The same queue and delivery agent run the seed mailer's way: a fresh process per
    mail (bench/seedmailer.py), the baseline of the fan-out scenario."""

    def start(self) -> None:
        env = {**os.environ, "SPOOLD_CONFIG": str(self.config_path)}
        proc = self.procs.start([sys.executable, "-m", "bench.seedmailer",
                                 str(self.config_path)], log=self.work / "seedmailer.log",
                                env=env)
        self.pid = proc.pid


def version() -> str:
    from importlib.metadata import version as dist_version
    return dist_version("spoold")
