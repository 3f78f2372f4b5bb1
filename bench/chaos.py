"""Chaos runs with full accounting: does spoold lose or duplicate mail when things break?

NAME
    bench.chaos - kill, freeze, starve and disconnect spoold, then count every message

SYNOPSIS
    python3 -m bench.chaos [--scale 1.0] [--only runner-kill,...] [--no-write]

DESCRIPTION
    Each scenario enqueues a known set of messages, each with a unique
    Message-ID, runs the real daemon against a fake internet on loopback
    (spoold.fakenet: healthy sinks, and sinks and name servers with faults),
    injects its faults, heals the temporary ones, waits for the queue to
    settle, and accounts for every message (bench/chaoslib.py):

        lost = enqueued - (sent + bounced + expired + still queued)

    must be 0.  Duplicates (a Message-ID received more than once) are
    counted; each one must come from a kill inside the window between the
    server's 250 to the final dot and the outcome's commit (RFC 1047), so
    duplicates <= kills, and 0 where nothing was killed.

    runner-kill     20,000 messages (SQLite), the runner kill -9'd 20 times at
                    random points of the run and started again each time
    child-kill      kill -9 random sender children
    child-stop      SIGSTOP busy children past child_timeout
    peer-faults     every SMTP and DNS fault of chaoslib, healed mid-run,
                    plus a sink that keeps messages without acknowledging them
    mariadb-restart MariaDB stopped and started twice during a run
    disk-full       the SQLite queue on a small tmpfs filled to the last byte,
                    twice; PRAGMA integrity_check afterwards
    multi-host      three runners (three run directories) on one MariaDB, one
                    killed for good mid-run; its leases expire, the others
                    finish its rows

    One line per scenario, then a table; docs/RELIABILITY.md gets the table
    with the machine and the date.  --scale multiplies every message count
    (0.1 for a quick look).  MariaDB is always left running.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import random
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench import chaoslib
from bench.chaoslib import Batch, ChaosSpool, Tally
from sender.lifeline import ORPHAN_GRACE

DOCS = Path(__file__).resolve().parent.parent / "docs"
HEALTHY = 20


class Run:
    """One scenario's world, spools, batch and tally, torn down whatever happens."""

    def __init__(self, name: str, work: Path, faults: bool = False, silent: bool = False,
                 seed: int = 0):
        self.tally = Tally(name)
        self.work = work / name
        self.world, self.faults = chaoslib.chaos_world(HEALTHY, faults, silent)
        self.batch = Batch(f"{name}-{os.getpid()}")
        self.rng = random.Random(seed)
        self.spools: list[ChaosSpool] = []
        self.started = time.monotonic()

    def spool(self, db_url: str, name: str = "a", **overrides) -> ChaosSpool:
        made = ChaosSpool(self.work, db_url, self.world, name, **overrides)
        self.spools.append(made)
        return made

    def enqueue(self, count: int, fault_share: float = 0.0) -> None:
        addresses = chaoslib.recipients(count, self.faults, HEALTHY, fault_share,
                                        seed=self.rng.random())
        down = chaoslib.domain("down")
        soon = time.time() + 20
        self.batch.enqueue(self.spools[0], addresses,
                           expiring=lambda rcpt: soon if rcpt.endswith(down) else None)

    def thresholds(self, count: int, kills: int) -> list[int]:
        """Sink totals at which to strike: random points between 3% and 95% of the run."""
        return sorted(self.rng.randint(int(count * 0.03), int(count * 0.95))
                      for _ in range(kills))

    def finish(self, timeout: float) -> Tally:
        self.faults.clear()
        chaoslib.settle([s for s in self.spools if s.running()] or self.spools, self.batch,
                        timeout)
        for spool in self.spools:
            spool.stop()
        store = self.spools[0].store()
        try:
            chaoslib.account(self.tally, self.batch, store, self.world,
                             self.faults.silent_hosts)
        finally:
            store.close()
        self.tally.wall = time.monotonic() - self.started
        crashes = sum(s.crashes for s in self.spools)
        if crashes:
            self.tally.notes.append(f"{crashes} runner crashes")
        return self.tally

    def close(self) -> None:
        for spool in self.spools:
            spool.kill()
        self.world.stop()


def _sqlite(run: Run) -> str:
    return f"sqlite://{run.work / 'spool.db'}"


def runner_kill(run: Run, count: int) -> Tally:
    spool = run.spool(_sqlite(run))
    run.enqueue(count, fault_share=0.02)
    spool.start()
    for mark in run.thresholds(count, 20):
        if not chaoslib.wait_delivered(run.world, mark, 300, [spool]):
            break
        time.sleep(run.rng.random() * 0.2)
        spool.kill()
        run.tally.kill()
        spool.start()
    tally = run.finish(600)
    tally.notes.append(f"restarts waited {spool.event_sum('journal_waited', 'waited'):.1f} s "
                       "in all for orphaned children's last replies")
    return tally


def _strike_children(run: Run, spool: ChaosSpool, count: int, strikes: int,
                     signum: signal.Signals) -> None:
    """Send ``signum`` to a random sender child at ``strikes`` random points of the run."""
    spool.start()
    for mark in run.thresholds(count, strikes):
        if not chaoslib.wait_delivered(run.world, mark, 300, [spool]):
            break
        children = spool.children()
        if children:
            with contextlib.suppress(psutil.NoSuchProcess):
                run.rng.choice(children).send_signal(signum)
                run.tally.kill()


def child_kill(run: Run, count: int, kills: int = 30) -> Tally:
    spool = run.spool(_sqlite(run))
    run.enqueue(count, fault_share=0.02)
    _strike_children(run, spool, count, kills, signal.SIGKILL)
    return run.finish(600)


def child_stop(run: Run, count: int, stops: int = 5) -> Tally:
    spool = run.spool(_sqlite(run), runner={"child_timeout": 3})
    run.enqueue(count, fault_share=0.0)
    _strike_children(run, spool, count, stops, signal.SIGSTOP)
    tally = run.finish(600)
    timeouts = spool.events("child_timeout")
    tally.notes.append(f"{timeouts} children killed by the runner as hung")
    return tally


def peer_faults(run: Run, count: int) -> Tally:
    spool = run.spool(_sqlite(run))
    run.enqueue(count, fault_share=0.3)
    spool.start()
    chaoslib.wait_delivered(run.world, count // 3, 300, [spool])
    time.sleep(5)  # let every fault strike at least once, then heal the temporary ones
    silent = run.world.sinks_for(chaoslib.domain("silent"))[0]
    tally = run.finish(600)
    unacknowledged = len(silent.messages) - len({m.message_id for m in silent.messages})
    tally.notes.append(f"{len(silent.messages)} messages kept by the silent sink, "
                       f"{unacknowledged} of them twice (RFC 1047)")
    return tally


def mariadb_restart(run: Run, count: int) -> Tally:
    url = chaoslib.fresh_mysql_url()
    try:
        spool = run.spool(url)
        run.enqueue(count, fault_share=0.02)
        spool.start()
        for mark in (count * 3 // 10, count * 65 // 100):
            if not chaoslib.wait_delivered(run.world, mark, 300, [spool]):
                break
            with chaoslib.mariadb_down():
                time.sleep(3)
            run.tally.notes.append("MariaDB down 3 s")
        tally = run.finish(600)
        tally.notes.append(f"{spool.events('database_unavailable')} database_unavailable "
                           f"events ({spool.first_error('database_unavailable')}), runner "
                           f"started {spool.starts} time(s)")
        return tally
    finally:
        chaoslib.mariadb_start()
        chaoslib.drop_mysql(url)


@contextlib.contextmanager
def _tmpfs(size_mb: int):
    mount = Path(tempfile.mkdtemp(prefix="spoold-chaos-tmpfs-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                              str(mount)], capture_output=True, text=True)
    if mounted.returncode:
        mount.rmdir()
        raise RuntimeError(f"cannot mount a tmpfs (root needed): {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def disk_full(run: Run, count: int) -> Tally:
    with _tmpfs(64) as mount:
        spool = run.spool(f"sqlite://{mount / 'spool.db'}")
        run.enqueue(count, fault_share=0.02)
        spool.start()
        for mark in (count * 3 // 10, count * 6 // 10):
            if not chaoslib.wait_delivered(run.world, mark, 300, [spool]):
                break
            errors = spool.events("database_unavailable")
            filler = mount / "filler"
            with open(filler, "wb") as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * (1 << 20))
            full_since = time.monotonic()
            # Until the runner meets the full disk (a write that must grow a file), at most 10 s.
            while (spool.events("database_unavailable") == errors
                   and time.monotonic() - full_since < 10):
                time.sleep(0.2)
            time.sleep(1)
            filler.unlink()
            run.tally.notes.append(f"disk full {time.monotonic() - full_since:.0f} s")
        tally = run.finish(600)
        with contextlib.closing(sqlite3.connect(mount / "spool.db")) as db:
            check = db.execute("PRAGMA integrity_check").fetchone()[0]
        tally.notes.append(f"integrity_check: {check}; "
                           f"{spool.events('database_unavailable')} database_unavailable events "
                           f"({spool.first_error('database_unavailable')})")
        if check != "ok":
            tally.lost = max(tally.lost, 1)  # a corrupt queue counts as a failure
        return tally


def multi_host(run: Run, count: int) -> Tally:
    url = chaoslib.fresh_mysql_url()
    try:
        spools = [run.spool(url, name) for name in ("a", "b", "c")]
        run.enqueue(count, fault_share=0.02)
        for spool in spools:
            spool.start()
        if chaoslib.wait_delivered(run.world, count * 4 // 10, 300, spools):
            spools[1].kill()
            run.tally.kill()
            store = spools[0].store()
            try:
                held = len(store.leased_rows(spools[1].owner, list(run.batch.ids)))
            finally:
                store.close()
            run.tally.notes.append(f"runner b killed for good holding {held} leased rows")
        tally = run.finish(600)
        returned = sum(s.events("leases_expired") for s in spools)
        tally.notes.append(f"{returned} leases_expired events on the survivors")
        return tally
    finally:
        chaoslib.drop_mysql(url)


SCENARIOS: dict[str, tuple[Callable[..., Tally], int, dict]] = {
    "runner-kill": (runner_kill, 20_000, {}),
    "child-kill": (child_kill, 10_000, {}),
    "child-stop": (child_stop, 5_000, {}),
    "peer-faults": (peer_faults, 5_000, {"faults": True, "silent": True}),
    "mariadb-restart": (mariadb_restart, 10_000, {}),
    "disk-full": (disk_full, 10_000, {}),
    "multi-host": (multi_host, 10_000, {}),
}
FAULTY = {"runner-kill", "child-kill", "mariadb-restart", "disk-full", "multi-host"}


def run_scenario(name: str, scale: float, work: Path, seed: int) -> Tally:
    function, size, options = SCENARIOS[name]
    options = {"faults": name in FAULTY, **options}
    run = Run(name, work, seed=seed, **options)
    try:
        return function(run, max(50, int(size * scale)))
    except RuntimeError as exc:  # the machine cannot stage this fault
        run.tally.notes.append(f"not run: {exc}")
        run.tally.skipped = True
        return run.tally
    finally:
        run.close()


def machine() -> str:
    from bench.__main__ import machine as describe

    return describe()


def write_report(tallies: list[Tally], scale: float, wall: float) -> None:
    lines = [
        "# Reliability",
        "",
        "`python3 -m bench.chaos` (bench/chaos.py): each scenario enqueues a known set of",
        "messages with unique Message-IDs, injects its faults, heals the temporary ones,",
        "and accounts for every message: sent (and received by a sink), bounced, expired,",
        "or still queued. **lost = enqueued - (sent + bounced + expired + queued)** must",
        "be 0; duplicates are Message-IDs a sink received more than once, each of which",
        "must come from a kill inside the window between the server's 250 to the final",
        "dot and the commit of that outcome (RFC 1047).",
        "",
        f"Machine: {machine()}; {datetime.date.today().isoformat()}; scale {scale:g} "
        f"(message counts below); whole run {wall / 60:.1f} min.",
        "",
        "| " + " | ".join(Tally.COLUMNS) + " | notes |",
        "|" + "---|" * (len(Tally.COLUMNS) + 1),
    ]
    for tally in tallies:
        lines.append("| " + " | ".join(tally.cells()) + " | " + "; ".join(tally.notes) + " |")
    lines += [
        "",
        "Reading the table: a kill -9 of a runner ends all of its sessions at once",
        "(max_children = 20 here), and each may have a final dot on the wire that the",
        "server takes after the client is gone. The runner's children no longer die",
        "with it there: a child waiting for the reply to a final dot reads it (for",
        f"{ORPHAN_GRACE:g} s at most, sender/lifeline.py) and journals the result, and the "
        "restarted",
        "runner waits for those children before it replays its journal",
        "(spoold/journal.py), so runner kills cost a slower restart (the runner-kill",
        "note: the sinks that never answer a dot make it wait the whole grace) instead",
        "of duplicates: 20 kills of 20,000 messages gave 58 and 119 duplicates in two",
        "runs before (2026-11-30), and before the result journal itself 20 kills in",
        "1,000 messages gave 726. A kill just after a commit also lost the lines the",
        "children had journalled during it (emptied with the journal while still unread",
        "in their pipes): 0-32 duplicates in eleven runs of 20 kills until the runner",
        "read its pipes before emptying the children's journal, 0-10 (median 0) in eight",
        "after. A child killed with SIGKILL (child-kill) still takes",
        "a dot in flight with it, and a host that never comes back (multi-host) its",
        "last unflushed results (runner.flush_interval) and the replies its children",
        "journalled for a restart that never comes. With flush_interval at 0.2 s that",
        "came to 26-103 duplicates in seven runs; at 0.02 s, the default since",
        "2026-11-30, to 11-33 in five (about one per session in flight), with no",
        "change in bench/run.sh's throughput (784 and 850 msg/s against 803 and 811",
        "at 0.2 s, alternating). Every duplicate counted here arrived at most "
        f"{chaoslib.WINDOW:g} s before a kill",
        f"(or {chaoslib.LAG:g} s after it: the sink's own lag), or at the sink that keeps "
        "messages",
        "without answering the dot; any other fails the run.",
        "",
        "What each scenario does is in bench/chaos.py's docstring.",
        "",
    ]
    (DOCS / "RELIABILITY.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every scenario's message count")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help="comma-separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="leave docs/ alone")
    args = parser.parse_args()
    chosen = args.only.split(",")
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd on the faulty peers
    started = time.monotonic()
    tallies = []
    with tempfile.TemporaryDirectory(prefix="spoold-chaos-") as work:
        for name in chosen:
            tally = run_scenario(name, args.scale, Path(work), args.seed)
            tallies.append(tally)
            print(tally.line() + ("  # " + "; ".join(tally.notes) if tally.notes else ""),
                  flush=True)
    wall = time.monotonic() - started
    if not args.no_write:
        write_report(tallies, args.scale, wall)
    failed = [t.scenario for t in tallies if t.lost or t.unexplained or any(
        "two final" in n or "never received" in n or "crashes" in n for n in t.notes)]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
