"""SMTP listeners run by the runner: the bounce receiver and the submission listener.

NAME
    spoold listeners - supervised aiosmtpd servers beside the queue runner

DESCRIPTION
    ``spoold run`` starts each configured listener (``[bounces]`` and
    ``[submission]`` listen_port other than 0) as a child process of its
    own, ``python -m spoold.listeners NAME``, the way Postfix's master runs
    smtpd beside qmgr: each has its own event loop and its own database
    connection, and a crash of one takes neither the runner nor the other
    down.  ``Listeners`` is the runner's side: it starts them, notices when
    one exits (the runner's SIGCHLD), starts it again after a delay that
    doubles from 1 s to 60 s while it keeps failing within a minute, and
    stops trying when it exits with EX_CONFIG (78: a bad setting such as a
    missing certificate, which a restart cannot mend).  On SIGHUP the
    listeners start over with the new settings; on stop they get SIGTERM,
    then SIGKILL after 5 s.  A listener dies with its runner
    (PR_SET_PDEATHSIG).

    In a child, ``serve(NAME)`` runs one aiosmtpd server on an asyncio loop
    in the main thread until SIGTERM or SIGINT.

DIAGNOSTICS
    Events: listener_start (name, pid), listener_exit (name, pid, status,
    restart_in), listener_failed (name, error: not restarted), listening (in
    the child: name, address, port).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP

from sender.lifeline import prctl
from spoold import config as config_mod
from spoold.config import Config
from spoold.errors import ConfigError, SpooldError
from spoold.log import configure as configure_log
from spoold.log import get_logger

_EX_CONFIG = 78
_STOP_WAIT = 5.0
_MAX_DELAY = 60.0
_STABLE = 60.0  # a listener that ran this long starts again at once when it dies


def configured(config: Config) -> list[str]:
    """The listeners these settings ask for."""
    return [name for name in ("bounces", "submission") if config.value(name, "listen_port")]


@dataclass
class _Listener:
    name: str
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0
    start_at: float = 0.0  # when to start it (again); 0 with proc set: running
    given_up: bool = False


def _die_with_parent() -> None:
    """In the forked child, before exec: SIGTERM when the runner dies."""
    pr_set_pdeathsig = 1
    prctl(pr_set_pdeathsig, signal.SIGTERM)


class Listeners:
    """The runner's view of its listener children."""

    def __init__(self, config: Config, log: Any, enabled: bool = True):
        self.log = log
        self.enabled = enabled  # not in drain mode
        self._configure(config)

    def _configure(self, config: Config) -> None:
        self.config = config
        names = configured(config) if self.enabled else []
        self.children = {name: _Listener(name) for name in names}

    def start(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            child.start_at = now
        self.tick(now)

    def next_start(self) -> float | None:
        times = [c.start_at for c in self.children.values()
                 if c.proc is None and not c.given_up]
        return min(times) if times else None

    def tick(self, now: float) -> None:
        for child in self.children.values():
            if child.proc is None and not child.given_up and now >= child.start_at:
                self._spawn(child, now)

    def _spawn(self, child: _Listener, now: float) -> None:
        env = dict(os.environ)
        if self.config.path is not None:
            env["SPOOLD_CONFIG"] = str(self.config.path)
        child.proc = subprocess.Popen([sys.executable, "-m", "spoold.listeners", child.name],
                                      env=env, stdin=subprocess.DEVNULL,
                                      preexec_fn=_die_with_parent)
        child.started_at = now
        self.log.info("listener_start", name=child.name, pid=child.proc.pid)

    def reap(self) -> None:
        """Notice listeners that exited; schedule their restart (runner's SIGCHLD)."""
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is None or child.proc.poll() is None:
                continue
            status = child.proc.returncode
            pid, child.proc = child.proc.pid, None
            if status == _EX_CONFIG:
                child.given_up = True
                self.log.error("listener_failed", name=child.name, pid=pid,
                               error="bad configuration (see its log); not restarted")
                continue
            child.failures = 0 if now - child.started_at >= _STABLE else child.failures + 1
            delay = min(_MAX_DELAY, 2.0 ** (child.failures - 1)) if child.failures else 0.0
            child.start_at = now + delay
            self.log.warning("listener_exit", name=child.name, pid=pid, status=status,
                             restart_in=delay)

    def reload(self, config: Config) -> None:
        """Start the listeners over with new settings."""
        self.stop()
        self._configure(config)
        self.start()

    def stop(self) -> None:
        running = [c.proc for c in self.children.values() if c.proc is not None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + _STOP_WAIT
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for child in self.children.values():
            child.proc = None
            child.given_up = True


def _factory(name: str, config: Config) -> tuple[Any, dict[str, Any], str, int]:
    if name == "bounces":
        from spoold.bounces.receiver import listener
    else:
        from spoold.submission import listener
    return listener(config)


def serve(name: str, config: Config) -> None:
    """Run one listener until SIGTERM or SIGINT."""
    log = get_logger(listener=name)
    handler, options, host, port = _factory(name, config)
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname=config.helo_name, ident="spoold", decode_data=False,
                     **options), host, port, reuse_address=True))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, loop.stop)
    log.info("listening", name=name, address=host, port=port, pid=os.getpid())
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
        log.info("listener_stop", name=name)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ("bounces", "submission"):
        print("usage: python -m spoold.listeners bounces|submission", file=sys.stderr)
        return 64
    try:
        config = config_mod.load()
        configure_log(config.log.format, config.log.level)
        serve(args[0], config)
    except ConfigError as exc:
        print(f"spoold {args[0]} listener: {exc}", file=sys.stderr)
        return _EX_CONFIG
    except (SpooldError, OSError) as exc:
        print(f"spoold {args[0]} listener: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
