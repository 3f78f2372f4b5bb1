"""Mailout expansion at scale: one mailout to a million contacts, on SQLite.

NAME
    bench.mailout - how fast a mailout becomes queue rows, and at what memory

SYNOPSIS
    python3 -m bench.mailout [--contacts 1000000] [--chunk 20000]

DESCRIPTION
    In a throw-away directory, writes a CSV file of N contacts (email, name,
    city, plan) over 50 domains and imports it with ``spoold contacts
    import``'s code (spoold.contacts_import), timed.  Then, each on its own
    copy of that database:

    runner    the real daemon (``spoold run``, a subprocess) expands a
              mailout to all N contacts: the time from the mailout's
              started_at to the runner's mailout_expanded log event, and its RSS
              sampled every 10 ms (psutil) while idle before and during the
              expansion.  The mailout is paced (--rate 1/h) so that the
              runner has one row to deliver, not N: what is measured is the
              expansion, with the runner's loop turning between chunks.
    in-process  the same store calls the runner makes (Store.mailout_step,
              chunk after chunk), unpaced, in this process.
    baseline  the naive way: the contacts read into Python, then inserted
              one row per contact (executemany) in transactions of the same
              chunk size.

    It prints rows/s for each, the ratios, and RSS figures; docs/BENCHMARKS.md
    ("Mailout expansion") records a run.  It starts one runner process and
    stops it (SIGTERM, then SIGKILL) by its pid.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from spoold import config as config_mod
from spoold.contacts_import import import_contacts
from spoold.store import open_store
from spoold.store.mailouts import MailoutSpec

TEMPLATE = ("news", "News for {{ name }}", "Hello {{ name }} of {{ attributes.city }}\n", None)
CITIES = ("Paris", "Lyon", "Lille", "Nantes", "Brest")


def write_csv(path: Path, count: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(("email", "name", "city", "plan"))
        for i in range(count):
            writer.writerow((f"user{i}@domain{i % 50}.example", f"User {i}", CITIES[i % 5],
                             "free" if i % 3 else "pro"))


def make_mailout(db: Path, send_at: float, rate: int | None) -> int:
    store = open_store(f"sqlite://{db}")
    try:
        return store.create_mailout(MailoutSpec(template="news", sender="news@shop.example",
                                                selection="all", send_at=send_at,
                                                expires_at=send_at + 86400, rate=rate))
    finally:
        store.close()


class RssSampler(threading.Thread):
    """A process's RSS every 10 ms, with the peak since a mark."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.samples.append((time.time(), self.process.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(0.01)

    def peak(self, start: float, end: float) -> int:
        return max(rss for at, rss in self.samples if start <= at <= end)


def _event_times(log: Path) -> dict[str, float]:
    times = {}
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "mailout_expanded":
            times[event["event"]] = datetime.datetime.fromisoformat(
                event["timestamp"]).timestamp()
    return times


def runner_expansion(work: Path, db: Path, count: int, chunk: int) -> dict[str, float]:
    """The real daemon expands a paced mailout; its own timing and its RSS."""
    config = work / "runner.toml"
    config.write_text(config_mod.dump({
        "database": {"url": f"sqlite://{db}"},
        "runner": {"run_dir": str(work / "run")},
        "mailout": {"expand_chunk": chunk, "interval": 0.1},
        "dns": {"nameservers": ["127.0.0.1"], "port": 9, "timeout": 1},  # nothing to deliver to
        "log": {"format": "json"},
    }))
    mailout_id = make_mailout(db, time.time() + 3, rate=1)  # idle 3 s first: the RSS baseline
    log = work / "runner.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "spoold.cli", "run"], stdout=out,
                                stderr=out, env={**os.environ, "SPOOLD_CONFIG": str(config)})
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        deadline = time.monotonic() + 600
        while "mailout_expanded" not in (times := _event_times(log)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"runner stopped or timed out; see {log}")
            time.sleep(0.05)
    finally:
        sampler.stopped.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    store = open_store(f"sqlite://{db}")
    start = store.mailout(mailout_id)["started_at"]  # before the first chunk, unlike the log
    store.close()
    end = times["mailout_expanded"]
    idle = [rss for at, rss in sampler.samples if at < start]
    return {"seconds": end - start, "rows_per_s": count / (end - start),
            "rss_idle_mb": max(idle) / 2**20, "rss_peak_mb": sampler.peak(start, end) / 2**20}


def in_process_expansion(db: Path, count: int, chunk: int) -> dict[str, float]:
    """The runner's store calls, unpaced, in this process."""
    mailout_id = make_mailout(db, time.time(), rate=None)
    store = open_store(f"sqlite://{db}")
    me = psutil.Process()
    before = me.memory_info().rss
    peak = before
    started = time.perf_counter()
    try:
        while store.mailout_step(time.time(), chunk, 86400).more:
            peak = max(peak, me.memory_info().rss)
        seconds = time.perf_counter() - started
        queued = store.mailout(mailout_id)["expanded"]
    finally:
        store.close()
    assert queued == count, queued
    return {"seconds": seconds, "rows_per_s": count / seconds,
            "rss_growth_mb": (peak - before) / 2**20}


def naive_expansion(db: Path, count: int, chunk: int) -> dict[str, float]:
    """Baseline: contacts read into Python, one INSERT per contact (executemany)."""
    me = psutil.Process()
    before = me.memory_info().rss
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    started = time.perf_counter()
    contacts = conn.execute("SELECT id, email, domain FROM contact WHERE unsubscribed_at "
                            "IS NULL ORDER BY id").fetchall()
    peak = me.memory_info().rss
    now = time.time()
    for start in range(0, len(contacts), chunk):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR IGNORE INTO notify (message_id, mailout_id, contact_id, sender, recipient, "
            "domain, priority, state, attempts, created_at, not_before, expires_at) "
            "VALUES (0, 999, ?, 'news@shop.example', ?, ?, 2, 'queued', 0, ?, ?, ?)",
            [(cid, email, domain, now, now, now + 86400)
             for cid, email, domain in contacts[start:start + chunk]])
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return {"seconds": seconds, "rows_per_s": count / seconds,
            "rss_growth_mb": (peak - before) / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.mailout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=20_000)
    args = parser.parse_args(argv)
    n = args.contacts
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}; "
          f"{datetime.date.today()}")
    with tempfile.TemporaryDirectory(prefix="spoold-bench-mailout-") as tmp:
        work = Path(tmp)
        source = work / "contacts.csv"
        write_csv(source, n)
        db = work / "contacts.db"
        store = open_store(f"sqlite://{db}")
        store.upgrade()
        started = time.perf_counter()
        report = import_contacts(store, source, show_progress=False)
        imported = time.perf_counter() - started
        from spoold.templates import save_template

        save_template(store, *TEMPLATE, create=True)
        store.close()
        assert report.inserted == n and not report.bad, report
        print(f"import {n} CSV rows: {imported:.1f} s ({n / imported:,.0f} rows/s)")

        copies = {}
        for mode in ("runner", "in-process", "baseline"):
            copies[mode] = work / f"{mode}.db"
            shutil.copy(db, copies[mode])
        results = {
            "runner": runner_expansion(work, copies["runner"], n, args.chunk),
            "in-process": in_process_expansion(copies["in-process"], n, args.chunk),
            "baseline": naive_expansion(copies["baseline"], n, args.chunk),
        }
    base = results["baseline"]["rows_per_s"]
    for mode, figures in results.items():
        extra = ", ".join(f"{k} {v:.0f}" for k, v in figures.items()
                          if k not in ("seconds", "rows_per_s"))
        print(f"{mode:10s} {n} rows in {figures['seconds']:.2f} s: "
              f"{figures['rows_per_s']:,.0f} rows/s ({figures['rows_per_s'] / base:.1f}x "
              f"baseline); {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
