"""The runner as a service: sd_notify, signals, its log, its figures, ``log --follow``.

Each test runs the real daemon as a subprocess against the fake internet
(conftest.py); the service manager's end is a real AF_UNIX datagram socket
named by NOTIFY_SOCKET, as systemd would pass it.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import log_events, wait_for

import spoold
from spoold.fakenet import Behaviour
from spoold.lock import read_pid
from spoold.notify import ServiceNotifier
from spoold.stats import BOUNDS, RunnerStats
from spoold.store.queue import RUNNER_FIGURES


def _send(spool, *recipients: str) -> None:
    spoold.enqueue(sender="ops@spoold.test", recipients=list(recipients), subject="s",
                   body="b\n", config=spool.config)


class NotifySocket:
    """The service manager's end of sd_notify: a bound datagram socket, messages kept."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, list[str]]] = []

    def receive(self, until, timeout: float = 15.0) -> list[str]:
        """Collect messages until ``until(lines)`` holds for one; return that one."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"no such notification; got {self.messages}") from None
            lines = data.decode().splitlines()
            self.messages.append((time.monotonic(), lines))
            if until(lines):
                return lines

    def close(self) -> None:
        self.sock.close()


def test_type_notify_ready_watchdog_and_stopping(world, spool_factory, tmp_path):
    world.add_domain("ok.test")
    spool = spool_factory(runner={"scan_interval": 60})  # idle, the loop would sleep 5 s
    manager = NotifySocket(tmp_path / "notify.sock")
    journal = spool.config_path.with_suffix(".0.log")  # the runner's stderr (Spool.start)
    journal.touch()
    stat = journal.stat()
    spool.env.update(NOTIFY_SOCKET=str(manager.path), WATCHDOG_USEC="1000000",
                     JOURNAL_STREAM=f"{stat.st_dev}:{stat.st_ino}")
    proc = spool.start()
    try:
        ready = manager.receive(lambda lines: "READY=1" in lines)
        assert read_pid(spool.config.runner.run_dir) == proc.pid, "READY=1 before the lock"
        assert manager.messages[0][1] == ready, "nothing may come before READY=1"
        assert any(line.startswith("STATUS=children 0 busy") for line in ready)

        _send(spool, "a@ok.test")
        manager.receive(lambda lines: any("1 sent" in line for line in lines))
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            manager.receive(lambda lines: "WATCHDOG=1" in lines)
        pings = [at for at, lines in manager.messages if "WATCHDOG=1" in lines]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert len(pings) >= 5 and max(gaps) < 0.9, gaps  # every WATCHDOG_USEC / 2

        proc.send_signal(signal.SIGTERM)
        stopping = manager.receive(lambda lines: "STOPPING=1" in lines)
        assert proc.wait(timeout=20) == 0
        assert any(line.startswith("STATUS=stopping") for line in stopping)
    finally:
        manager.close()
    # stderr is the journal here: journald stamps entries, the runner must not.
    events = [json.loads(line) for line in spool.log_lines()]
    assert {"start", "delivery", "stop"} <= {e["event"] for e in events}
    assert not [e for e in events if "timestamp" in e]


def test_notifier_needs_its_own_pid_for_the_watchdog_and_takes_abstract_sockets():
    name = f"spoold-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        env = {"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
        notifier = ServiceNotifier(env)
        assert env == {}, "the variables are for this process only"
        assert notifier.tick(time.monotonic(), lambda: "idle") == float("inf")
        notifier.ready("up")
        assert manager.recv(4096) == b"STATUS=idle\n"
        assert manager.recv(4096) == b"READY=1\nSTATUS=up\n"
        mine = ServiceNotifier({"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "1000000",
                                "WATCHDOG_PID": str(os.getpid())})
        assert mine.tick(100.0, lambda: "up") == 100.5
        assert manager.recv(4096) == b"WATCHDOG=1\n"
    assert not ServiceNotifier({}).enabled


def test_sighup_lets_the_job_in_hand_finish(world, spool):
    world.add_domain("slow.test", Behaviour(delay=1.0))  # ~3 s a message: MAIL, RCPT, dot
    proc = spool.start()
    _send(spool, "a@slow.test")
    wait_for(lambda: spool.counts()["active"] == 1, what="the row in a child's hands")
    time.sleep(0.5)
    text = spool.config_path.read_text()
    spool.config_path.write_text(text.replace("max_children = 8", "max_children = 3"))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log_events(spool.log_lines(), "reloaded"), what="reloaded")
    assert spool.counts()["active"] == 1, "the reload must not touch the job in hand"
    spool.wait_settled()
    deliveries = log_events(spool.log_lines(), "delivery")
    assert [(d["to"], d["status"], d["attempt"]) for d in deliveries] == \
        [("a@slow.test", "sent", 1)]
    assert len(world.sinks_for("slow.test")[0].messages) == 1
    # its child finished the job, then retired: the next ones start with the new settings
    wait_for(lambda: log_events(spool.log_lines(), "child_exit"), what="the old child's exit")
    (exit_event,) = log_events(spool.log_lines(), "child_exit")
    assert exit_event["jobs"] == 1 and exit_event["status"] == "exit 0"
    _send(spool, "b@slow.test")
    spool.wait_settled()
    assert len(world.sinks_for("slow.test")[0].messages) == 2


def test_sigusr1_reopens_the_log_file_after_a_rename(world, spool_factory, tmp_path):
    world.add_domain("ok.test")
    spool = spool_factory(log={"file": "spoold.log"})  # relative to the config file
    log = tmp_path / "spoold.log"
    proc = spool.start()
    _send(spool, "first@ok.test")
    wait_for(lambda: log.exists() and "first@ok.test" in log.read_text(), what="first")
    log.rename(tmp_path / "spoold.log.1")  # what logrotate does
    proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log.exists() and '"log_reopened"' in log.read_text(), what="reopen")
    _send(spool, "second@ok.test")
    wait_for(lambda: "second@ok.test" in log.read_text(), what="second")
    old = log_events((tmp_path / "spoold.log.1").read_text().splitlines(), "delivery")
    new = log_events(log.read_text().splitlines(), "delivery")
    assert [e["to"] for e in old] == ["first@ok.test"]
    assert [e["to"] for e in new] == ["second@ok.test"]
    assert all("timestamp" in e for e in old + new), "a file is not the journal: stamp it"
    assert not log_events(spool.log_lines(), "delivery"), "events go to the file, not stderr"
    assert proc.poll() is None


def test_a_log_file_that_cannot_be_opened_is_a_config_error(spool_factory):
    spool = spool_factory(log={"file": "no/such/dir/spoold.log"})
    done = spool.cli("run", "--drain", check=False)
    assert done.returncode == 78
    assert done.stderr.decode().startswith("spoold: log.file: ")
    assert done.stderr.decode().endswith("spoold.log: No such file or directory\n")


class Follower:
    """``spoold log --follow`` as a subprocess, its output read as it comes."""

    def __init__(self, spool, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spoold.cli", "log", "--follow", "--interval", "0.1", *args],
            env=spool.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def recipients(self) -> list[str]:
        return [line.split("  ")[2] for line in self.lines]

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(timeout=10)
        self.reader.join(timeout=5)
        return status, self.proc.stderr.read()


def test_log_follow_tails_the_delivery_log_of_a_working_runner(world, spool_factory, db_url):
    world.add_domain("ok.test")
    world.add_domain("no.test", Behaviour(rcpt_reply="550 5.1.1 no such user"))
    spool = spool_factory(db_url=db_url)
    _send(spool, "old@ok.test")
    assert spool.drain().returncode == 0
    everyone = Follower(spool, "--limit", "5")
    one = Follower(spool, "--to", "r3@ok.test")
    wait_for(lambda: everyone.lines and one.lines == [], what="the tail of the old log")
    assert everyone.recipients() == ["old@ok.test"]
    spool.start()
    recipients = [f"r{i}@ok.test" for i in range(12)] + ["gone@no.test"]
    for address in recipients:  # one message each: several result batches
        _send(spool, address)
    spool.wait_settled()
    wait_for(lambda: len(everyone.lines) == 1 + len(recipients), what="every attempt")
    status, errors = everyone.interrupt()
    assert (status, errors) == (0, "")
    assert sorted(everyone.recipients()) == sorted(["old@ok.test", *recipients])
    gone = next(line for line in everyone.lines if "gone@no.test" in line).split("  ")
    assert gone[3:5] == ["bounced", "5.1.1"]
    wait_for(lambda: one.lines, what="the one recipient's attempt")
    status, errors = one.interrupt()
    assert (status, errors) == (0, "")
    assert one.recipients() == ["r3@ok.test"]


def test_heartbeat_figures_round_trip(store):
    stats = RunnerStats()
    figures = stats.figures(busy=0, backlog=0, results_waiting=0)
    assert set(figures) == set(RUNNER_FIGURES)
    store.heartbeat("h:/run", "h", 10, 1000.0, 0, 5, figures)
    stats.recorded("sent")
    stats.recorded("sent")
    stats.recorded("bounced")
    stats.wrote(0.002)
    store.heartbeat("h:/run", "h", 10, 1000.0, 4, 5, stats.figures(3, 40, 7))
    (row,) = store.runners()
    assert (row["children"], row["busy_children"], row["backlog"], row["results_waiting"]) == \
        (4, 3, 40, 7)
    assert (row["sent"], row["bounced"], row["deferred"], row["writes"]) == (2, 1, 0, 1)
    assert row["write_seconds"] == pytest.approx(0.002)
    assert row["latency_buckets"]["bounds"] == list(BOUNDS)
    assert row["latency_buckets"]["write"] == [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]


def test_status_shows_the_runners_figures_since_start(world, spool):
    world.add_domain("ok.test")
    world.add_domain("grey.test", Behaviour(tempfail_first=1))
    world.add_domain("no.test", Behaviour(rcpt_reply="550 5.1.1 no such user"))
    proc = spool.start()
    _send(spool, "a@ok.test", "b@ok.test", "c@grey.test", "d@no.test")
    spool.wait_settled()

    def runner():
        store = spool.store()
        try:
            return store.runners()[0]
        finally:
            store.close()

    wait_for(lambda: runner()["sent"] == 3, timeout=15, what="a heartbeat with the figures")
    row = runner()
    assert (row["pid"], row["deferred"], row["bounced"], row["expired"]) == (proc.pid, 1, 1, 0)
    assert row["claimed"] >= 4 and row["dispatched"] >= 5 and row["writes"] >= 1
    assert row["children"] >= 1 and row["busy_children"] == 0 and row["backlog"] == 0
    buckets = row["latency_buckets"]
    for name, count in (("claim", row["claims"]), ("dispatch", row["dispatched"]),
                        ("write", row["writes"])):
        assert buckets[name] == sorted(buckets[name]) and buckets[name][-1] <= count
    out = spool.cli("status").stdout.decode()
    assert "since start: sent 3, deferred 1, bounced 1, expired 0" in out
    assert f"children 0 busy, {row['children']} alive, 8 max" in out
    assert f"claims {row['claims']} (avg " in out
