"""spoold run: the queue runner daemon.

NAME
    spoold run - deliver the queue through a capped pool of sender children

SUMMARY
    spoold run [--drain] [--config FILE]

DESCRIPTION
    One runner per run directory (RUN_DIR/spoold.pid, an flock'd lockfile;
    a second one exits with "already running (pid N)").  Several hosts may
    each run one against a shared MariaDB queue.

    The runner claims due queue rows in batches under a lease (owner +
    expiry, renewed while it holds them), groups them by destination domain
    and hands them as jobs to ``python -m sender`` children over pipes (see
    sender/protocol.py).  It never runs more than max_children children, nor
    more than destination_concurrency on one domain; a child serves up to
    max_use jobs, then exits.  Destinations with [shaping] rules, and
    destinations that answered with a throttling reply, get connection
    slots and rate tokens shared with every runner on the same database
    instead (spoold/shaping.py).  Each result becomes an attempt (outcome.py)
    that is logged at once, appended to RUN_DIR/results.journal, and
    written to the database in batches: final outcomes delete their queue
    row in the transaction that logs them.  A runner killed between two
    batches replays the journal when it starts again (spoold/journal.py),
    so a message the remote server took is not sent a second time.

    One select loop watches the children's pipes, the poke socket (new mail:
    see poke.py), and the signals (set_wakeup_fd; handlers record nothing
    else).  It also wakes for the next due row, result flushes, lease
    renewal and hung children.

    Mailouts need no cron either: the loop starts those whose send_at has
    come, fires due campaign scenarios and expands a mailout into queue rows
    one chunk per turn (spoold/mailout.py); a mailout's rows go to the
    children as a template plus each contact's fields, rendered there.

    With --drain it delivers everything due and exits when nothing more is
    due (cron mode); rows deferred to a later time stay queued.

    Unless draining, it also runs the configured SMTP listeners -- the
    bounce receiver (spoold/bounces/receiver.py) and the submission listener
    (spoold/submission.py) -- each as a supervised child process with its own
    database connection (spoold/listeners.py: restarted with a growing delay
    when it dies, not restarted after a configuration error, restarted on
    SIGHUP, stopped with the runner), like Postfix's master beside qmgr.

SIGNALS
    SIGTERM, SIGINT  stop claiming, give back unstarted rows, let jobs in
                     hand finish for up to grace_period, kill the rest (their
                     rows are deferred), write all results, exit 0.
    SIGHUP           re-read the configuration (logging included); jobs in hand
                     finish with the old one, then their children retire.
    SIGUSR1          reopen [log] file (after logrotate moved it).
    SIGCHLD          reap children; rows a dead child had not answered are
                     deferred with dsn 4.3.0 (nothing is lost); a dead
                     listener is started again.

SERVICE MANAGER
    Under systemd Type=notify (spoold/notify.py): READY=1 once the lock is
    held, WATCHDOG=1 from the main loop, STOPPING=1 on SIGTERM, STATUS=
    with the figures below.  Every few seconds the runner's heartbeat row
    records children busy and alive, backlog, results waiting, and counters
    since start (spoold/stats.py) for ``spoold status`` and the web UI.

DIAGNOSTICS
    One ``delivery`` event per attempt (id, to, relay, delay, dsn, status,
    reply; and tls, cipher, tls_policy for attempts a child made);
    lifecycle events start, stop, child_exit, child_timeout,
    database_unavailable; destination_throttled, destination_recovered
    (spoold/shaping.py); zygote_start, zygote_exit, zygote_lost
    (spoold/pool.py); journal_waited, journal_busy (the children of a killed
    runner still finishing their final dots: spoold/journal.py).  Exit
    status 0 after a clean stop, 75 when
    another runner holds the lock, 78 for a bad configuration.

CONFIGURATION PARAMETERS
    [runner] run_dir (/run/spoold), max_children (100), max_use (100),
    destination_concurrency (20), job_size (20), claim_batch (500), lease
    (600 s), backoff_min (300 s), backoff_max (4000 s), max_lifetime (5 d),
    max_agent_failures (3), child_timeout (3600 s), grace_period (30 s),
    flush_interval (0.02 s), scan_interval (5 s); [mailout] expand_chunk
    (20000), interval (1 s); [shaping] destinations ({}), throttle_pause
    (60 s), recovery_interval (10 s) (spoold/shaping.py); [smtp], [dns],
    [mta_sts] and [dkim] are passed on to the children (paths made absolute;
    key files are read by the children, never by the runner); [bounces]
    domain, secret, local_part (VERP envelope senders) and listen_port,
    [submission] listen_port (the listeners).
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import socket
import time
from pathlib import Path

from sender.protocol import (Done, Job, Message, ProtocolError, Recipient, Result,
                             SenderConfig, Target, decode_reply, encode_job)
from spoold import config as config_mod
from spoold import outcome
from spoold.bounces import verp
from spoold.config import Config
from spoold.errors import ConfigError, StoreError, StoreUnavailable
from spoold.journal import ResultJournal
from spoold.listeners import Listeners
from spoold.lock import RunLock
from spoold.log import configure as configure_log
from spoold.log import get_logger, log_file
from spoold.log import reopen as reopen_log
from spoold.notify import ServiceNotifier
from spoold.mailout import Mailouts
from spoold.poke import PokeSocket
from spoold.pool import Child, Pool, describe_status
from spoold.shaping import Shaper
from spoold.stats import RunnerStats
from spoold.store import Attempt, QueueRow, Store, store_for

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)
_FLUSH_BATCH = 256
_HEARTBEAT = 5.0
_RECOVER = 10.0
_KILL_WAIT = 5.0
# Pokes within this many seconds of a claim wait for its end and share one
# claim: a busy application pokes once per message, and a claim per message
# would keep the database's write lock from the application (measured: a
# quarter of the runner's time spent waiting for it).
_CLAIM_GAP = 0.05
_ROUTES = 10_000  # domains whose route the runner remembers (least recently used go)


def sender_config(config: Config) -> SenderConfig:
    smtp, dns = config.smtp, config.dns
    return SenderConfig(
        helo_name=config.helo_name, port=smtp.port, dns_nameservers=list(dns.nameservers),
        dns_port=dns.port, dns_timeout=dns.timeout, tls=smtp.tls, mx_limit=smtp.mx_limit,
        connect_timeout=smtp.connect_timeout, greeting_timeout=smtp.greeting_timeout,
        helo_timeout=smtp.helo_timeout, mail_timeout=smtp.mail_timeout,
        rcpt_timeout=smtp.rcpt_timeout, data_init_timeout=smtp.data_init_timeout,
        data_block_timeout=smtp.data_block_timeout, data_done_timeout=smtp.data_done_timeout,
        quit_timeout=smtp.quit_timeout, connection_cache_time=smtp.connection_cache_time,
        connection_reuse_time=smtp.connection_reuse_time, tls_policy=dict(smtp.tls_policy),
        tls_ca_file=_path(config, smtp.tls_ca_file), mta_sts=config.mta_sts.enabled,
        mta_sts_cache_dir=_path(config, config.mta_sts.cache_dir),
        mta_sts_port=config.mta_sts.port, mta_sts_timeout=config.mta_sts.timeout,
        dkim_domains={domain: {"selector": entry["selector"],
                               "key_file": _path(config, entry["key_file"])}
                      for domain, entry in config.dkim.domains.items()},
        dkim_headers=list(config.dkim.headers))


def _path(config: Config, value: str) -> str:
    """A path setting made absolute (relative to the config file); "" stays "".

    The children get paths, never file contents: key material stays in the
    files, out of protocol lines and logs.
    """
    return str(config.base_dir / value) if value else ""


def owner_name(run_dir: str) -> str:
    """This runner's lease owner: stable across restarts of the same instance."""
    return f"{socket.gethostname()}:{Path(run_dir).resolve()}"[:255]


class Runner:
    def __init__(self, config: Config, drain: bool = False):
        self.config = config
        self.drain = drain
        self.log = get_logger()
        self.owner = owner_name(config.runner.run_dir)
        self.pool = Pool(sender_config(config))
        self.backlog: collections.OrderedDict[str, collections.deque[QueueRow]] = \
            collections.OrderedDict()
        self.routes: collections.OrderedDict[str, tuple[float, list[Target]]] = \
            collections.OrderedDict()
        self.bodies: dict[int, bytes] = {}
        self.body_refs: collections.Counter[int] = collections.Counter()
        self.backlog_rows = 0
        self.active: collections.Counter[str] = collections.Counter()
        self.results: list[Attempt] = []
        self.first_result_at = 0.0
        self.job_ids = 0
        self.stopping = False
        self.stop_deadline = 0.0
        self.want_claim = True
        self.next_scan = 0.0
        self.last_claim = -_CLAIM_GAP
        self.db_retry_at = 0.0
        self.db_failures = 0
        self.timers = {"renew": 0.0, "recover": 0.0, "heartbeat": 0.0}
        self.next_hung_check = 0.0
        self.started_at = time.time()
        self.selector = selectors.DefaultSelector()
        self.store: Store | None = None
        self.stats = RunnerStats()
        self.notifier = ServiceNotifier()
        self.mailouts = Mailouts()
        self.shaper = Shaper(config, self.owner, self.log)

    # -- life cycle -----------------------------------------------------------

    def run(self) -> int:
        run_dir = Path(self.config.runner.run_dir)
        lock = RunLock(run_dir).acquire()
        if lock.previous_pid:
            self.log.warning("stale_lock", previous_pid=lock.previous_pid, action="taken over")
        try:
            self.pool.start()  # an exec, meanwhile the database opens
            self.store = store_for(self.config)
            self.journal = ResultJournal(run_dir)
            self._take_journal()
            self.pool.journal = self.journal.children_fd
            self._replay_journal()
            released = self.store.release_owner(self.owner)
            if released:
                self.log.info("leases_returned", rows=released, owner=self.owner)
            self.shaper.start(self.store)
            self.poker = PokeSocket(run_dir)
            self._install_signals()
            self.listeners = Listeners(self.config, self.log, enabled=not self.drain)
            self.listeners.start()
            self.log.info("start", pid=os.getpid(), owner=self.owner, drain=self.drain,
                          max_children=self.config.runner.max_children,
                          max_use=self.config.runner.max_use)
            self.notifier.ready(self._status_line())
            self._loop()
            self._shutdown()
            self.log.info("stop", pid=os.getpid())
            return 0
        finally:
            self._restore_signals()
            lock.release()

    def _take_journal(self) -> None:
        """Wait for the children of our previous life to journal their last replies."""
        started = time.monotonic()
        taken = self.journal.take()
        waited = round(time.monotonic() - started, 3)
        if not taken:
            self.log.warning("journal_busy", path=str(self.journal.children_path), waited=waited,
                             note="children of the previous runner still running; "
                                  "what they journal from now on is not replayed")
        elif waited >= 0.1:
            self.log.info("journal_waited", waited=waited, note="for the children of the "
                          "previous runner to journal the replies to their final dots")

    def _replay_journal(self) -> None:
        """Commit what a previous life of this runner heard but did not write."""
        attempts, results = self.journal.read()
        known = {a.row.id for a in attempts}
        unheard = {r.id: r for r in results if r.id not in known}
        if unheard:
            runner, now = self.config.runner, time.time()
            rows = self.store.leased_rows(self.owner, list(unheard))
            attempts += [outcome.from_result(row, unheard[row.id], now, runner.backoff_min,
                                             runner.backoff_max, runner.max_agent_failures)
                         for row in rows]
        if attempts:
            try:
                applied = self.store.replay(attempts, self.owner)
            except StoreUnavailable:
                raise
            except StoreError as exc:
                # Never a crash loop over a journal the database refuses: keep it for
                # a human, and let the rows come back to the queue.
                kept = self.journal.set_aside()
                self.log.error("journal_refused", error=str(exc), kept_as=str(kept),
                               note="its rows are tried again; some may be sent twice")
                return
            self.log.warning("results_replayed", journalled=len(attempts), applied=applied)
        self.journal.clear()

    def _install_signals(self) -> None:
        self.sig_r, self.sig_w = socket.socketpair()
        self.sig_r.setblocking(False)
        self.sig_w.setblocking(False)
        self.old_wakeup = signal.set_wakeup_fd(self.sig_w.fileno(), warn_on_full_buffer=False)
        for signum in _HANDLED:
            signal.signal(signum, lambda *_: None)  # only the wakeup byte matters
        self.selector.register(self.sig_r, selectors.EVENT_READ, "signal")
        self.selector.register(self.poker, selectors.EVENT_READ, "poke")

    def _restore_signals(self) -> None:
        if hasattr(self, "sig_w"):
            signal.set_wakeup_fd(self.old_wakeup)
            for signum in _HANDLED:
                signal.signal(signum, signal.SIG_DFL)
            self.sig_r.close()
            self.sig_w.close()
            self.poker.close()

    # -- the loop -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            self.timers["watchdog"] = self.notifier.tick(now, self._status_line)
            if self.stopping and (not self.pool.busy_count() or now >= self.stop_deadline):
                return
            if now >= self.db_retry_at:
                self._database_work(now)
            self._dispatch()
            self._check_hung(now)
            self.listeners.tick(now)
            if self.drain and self._drained():
                return
            for key, _ in self.selector.select(self._timeout()):
                self._on_event(key)

    def _database_work(self, now: float) -> None:
        try:
            if self.results and (len(self.results) >= _FLUSH_BATCH or self.stopping or
                                 now - self.first_result_at >= self.config.runner.flush_interval):
                self._flush()
            if not self.stopping:
                self._housekeeping(now)
                if self.mailouts.tick(self.store, self.config, now):
                    self.want_claim, self.next_scan = True, 0.0
                self._claim(now)
                self._shape()
        except StoreUnavailable as exc:
            self.db_failures += 1
            delay = min(30.0, 2 ** min(self.db_failures, 5) / 2)
            self.db_retry_at = now + delay
            self.log.error("database_unavailable", error=str(exc), retry_in=delay,
                           results_waiting=len(self.results))
        else:
            if self.db_failures:
                self.log.info("database_back", after_failures=self.db_failures)
            self.db_failures = 0

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [now + 5.0, *self.timers.values()]
        if not self.stopping and self._claim_room():
            deadlines.append(max(self.next_scan, self.db_retry_at))
        if not self.stopping:
            deadlines.append(max(self.mailouts.next_tick, self.db_retry_at))
        if self.results:
            deadlines.append(self.first_result_at + self.config.runner.flush_interval)
        if self.stopping:
            deadlines.append(self.stop_deadline)
        if self.pool.busy_count():
            deadlines.append(self.next_hung_check)
        if self.listeners.next_start() is not None:
            deadlines.append(self.listeners.next_start())
        deadlines.append(now + self.shaper.wake_in())
        return max(0.0, min(deadlines) - now)

    def _on_event(self, key: selectors.SelectorKey) -> None:
        if key.data == "signal":
            self._on_signals()
        elif key.data == "poke":
            self.poker.drain()
            self.want_claim = True
            self.next_scan = self.last_claim + _CLAIM_GAP
        else:
            kind, child = key.data
            if kind == "out":
                self._on_child_output(child)
            else:
                self._feed(child)

    def _drained(self) -> bool:
        if (self.want_claim or self.backlog or self.pool.busy_count() or self.results
                or self.mailouts.more):
            return False
        try:
            due = self.store.next_due()
        except StoreUnavailable:
            return False
        return due is None or due > time.time()

    # -- signals --------------------------------------------------------------

    def _on_signals(self) -> None:
        try:
            received = self.sig_r.recv(256)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(received):
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_stop(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self.handle_hup()
            elif signum == signal.SIGCHLD:
                self.handle_chld()
            elif signum == signal.SIGUSR1:
                reopen_log()

    def handle_stop(self, why: str) -> None:
        if self.stopping:
            return
        self.log.info("stopping", signal=why, busy_children=self.pool.busy_count(),
                      grace=self.config.runner.grace_period)
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.runner.grace_period
        self.notifier.stopping(f"stopping: {self.pool.busy_count()} jobs in hand")
        unstarted = [row.id for rows in self.backlog.values() for row in rows]
        self.backlog.clear()
        self.backlog_rows = 0
        self.bodies.clear()
        self.body_refs.clear()
        self.mailouts.forget()
        try:
            self.store.release(self.owner, unstarted)
        except StoreUnavailable as exc:
            self.log.error("database_unavailable", error=str(exc),
                           note="unstarted rows come back when their lease ends")
        for child in list(self.pool.children.values()):
            if not child.busy:
                self._retire(child)

    def handle_hup(self) -> None:
        self.notifier.reloading()
        try:
            new = config_mod.load(self.config.path)
            configure_log(new.log.format, new.log.level, log_file(new))
        except ConfigError as exc:
            self.log.error("reload_failed", error=str(exc), action="keeping the old settings")
            self.notifier.ready(self._status_line())
            return
        self.log = get_logger()
        for section, key in (("database", "url"), ("runner", "run_dir")):
            if new.value(section, key) != self.config.value(section, key):
                self.log.warning("reload_needs_restart", setting=f"{section}.{key}")
        self.config = new
        self.pool.config = sender_config(new)
        self.shaper.configure(new, self.log)
        self.listeners.reload(new)
        for child in self.pool.children.values():
            child.retiring = True
            if not child.busy:
                self._retire(child)
        self.log.info("reloaded", path=str(new.path))
        self.notifier.ready(self._status_line())

    def handle_chld(self) -> None:
        self.listeners.reap()  # before the pool reaps every pid
        for child, status in self.pool.reap():
            if not child.closed:
                self._on_child_output(child)
                self._child_lost(child, f"delivery agent {describe_status(status)}")
            self.log.info("child_exit", pid=child.pid, status=describe_status(status),
                          jobs=child.uses)

    # -- claiming -------------------------------------------------------------

    def _claim_room(self) -> int:
        """How many rows to claim now: none until the backlog is half used up."""
        batch = self.config.runner.claim_batch
        room = batch - self.backlog_rows
        return room if room >= batch // 2 else 0

    def _claim(self, now: float) -> None:
        runner = self.config.runner
        if not self.want_claim and now >= self.next_scan:
            self.want_claim = True
        if not self.want_claim or now < self.next_scan:
            return
        room = self._claim_room()
        if not room:
            return
        started, wall = time.monotonic(), time.time()
        self.last_claim = now
        rows = self.store.claim(self.owner, room, wall + runner.lease, wall)
        missing = {r.message_id for r in rows if not r.mailout_id} - self.bodies.keys()
        self.bodies.update(self.store.bodies(missing))
        done = time.monotonic()
        self.stats.claimed_rows(rows, done - started, done)
        personal = []
        for row in rows:
            if row.expires_at <= wall:
                self._record(outcome.expired_unsent(row))
                continue
            self.backlog.setdefault(row.domain, collections.deque()).append(row)
            self.backlog_rows += 1
            if row.mailout_id:
                personal.append(row)
            else:
                self.body_refs[row.message_id] += 1
        self.mailouts.claimed(self.store, self.config, personal)
        if len(rows) < room:
            self.want_claim = False
            due = self.store.next_due()
            wait = runner.scan_interval if due is None else min(runner.scan_interval,
                                                                 max(0.0, due - wall))
            self.next_scan = now + wait

    def _housekeeping(self, now: float) -> None:
        runner = self.config.runner
        if now >= self.timers["renew"]:
            self.store.renew(self.owner, time.time() + runner.lease)
            self.timers["renew"] = now + runner.lease / 3
        if now >= self.timers["recover"]:
            recovered = self.store.recover_expired()
            if recovered:
                self.log.warning("leases_expired", rows=recovered, action="returned to queue")
                self.want_claim = True
            self.timers["recover"] = now + _RECOVER
        if now >= self.timers["heartbeat"]:
            self.store.heartbeat(self.owner, socket.gethostname(), os.getpid(), self.started_at,
                                 len(self.pool), runner.max_children,
                                 self.stats.figures(self.pool.busy_count(), self.backlog_rows,
                                                    len(self.results)))
            self.timers["heartbeat"] = now + _HEARTBEAT

    # -- dispatching ----------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand out jobs round-robin over destinations, within both caps and the
        shaping limits of the destinations that have them (shaping.py)."""
        limit = self.config.runner.destination_concurrency
        size = self.config.runner.job_size
        shaper = self.shaper
        progress = True
        while progress and self.backlog:
            if self.pool.busy_count() >= self.config.runner.max_children:
                return
            progress = False
            for domain in list(self.backlog):
                key = shaper.governs(domain) if shaper.enabled else None
                if key is not None:
                    if not shaper.may_try(key, domain):
                        continue
                    child = shaper.idle_holder(key, self.pool.children) or \
                        self._free_child(domain)
                    if child is None:
                        return
                    queued = len(self.backlog[domain])
                    granted = shaper.acquire(key, domain, child.pid, min(size, queued), queued)
                    if not granted:
                        self.pool.unassign(child)  # back among the idle ones
                        continue
                    self._send_job(child, domain, granted)
                elif self.active[domain] >= limit:
                    continue
                else:
                    child = self._free_child(domain)
                    if child is None:
                        return
                    self._send_job(child, domain, size)
                progress = True

    def _route(self, domain: str) -> list[Target] | None:
        """The domain's MX targets as a child last looked them up, while still valid."""
        known = self.routes.get(domain)
        if known is None:
            return None
        if known[0] <= time.monotonic():
            del self.routes[domain]
            return None
        return known[1]

    def _learn_route(self, domain: str, done: Done) -> None:
        if done.targets:
            self.shaper.learned(domain, done.targets)
            self.routes[domain] = (time.monotonic() + done.ttl, done.targets)
            self.routes.move_to_end(domain)
            if len(self.routes) > _ROUTES:
                self.routes.popitem(last=False)

    def _free_child(self, domain: str) -> Child | None:
        targets = self._route(domain) or []
        port = self.config.smtp.port
        endpoints = [f"{t.address}:{port}" for t in targets
                     if t.preference == targets[0].preference]
        child = self.pool.idle(domain, endpoints)
        room = self.config.runner.max_children - len(self.pool)
        if child is not None or room <= 0:
            return child
        try:
            born = self.pool.spawn(min(room, len(self.backlog)))  # a child per waiting domain
        except OSError as exc:
            self.log.error("spawn_failed", error=str(exc))
            return None
        for new in born:
            self.selector.register(new.stdout, selectors.EVENT_READ, ("out", new))
            self._feed(new)
        return born[0]

    def _send_job(self, child: Child, domain: str, size: int) -> None:
        queue = self.backlog[domain]
        rows = [queue.popleft()]
        if not rows[0].agent_failures:
            # A row a child has failed on travels alone, so that its next failure
            # names it and not the rows that happened to share its job.
            while queue and len(rows) < size and not queue[0].agent_failures:
                rows.append(queue.popleft())
        self.backlog_rows -= len(rows)
        if not queue:
            del self.backlog[domain]
        else:
            self.backlog.move_to_end(domain)
        messages: dict[tuple[int, str], Message] = {}
        personal = []  # a mailout's rows: one message each, rendered by the child
        for row in rows:
            mail_from = verp.envelope_sender(row.sender, row.id, self.config.bounces)
            if row.mailout_id:
                personal.append(self.mailouts.message(row, mail_from))
                continue
            key = (row.message_id, mail_from)  # with VERP, one transaction per row
            if key not in messages:
                messages[key] = Message(mail_from, self.bodies[row.message_id], [])
            messages[key].recipients.append(Recipient(row.id, row.recipient))
            self._unref_body(row.message_id)
        self.job_ids += 1
        child.outbuf += encode_job(Job(self.job_ids, domain, [*messages.values(), *personal],
                                       self.mailouts.mailings(personal), self._route(domain)))
        self.pool.assign(child, domain)
        child.pending = {row.id: row for row in rows}
        child.last_heard = time.monotonic()
        self.stats.dispatched(rows, child.last_heard)
        self.active[domain] += 1
        self._feed(child)

    def _unref_body(self, message_id: int) -> None:
        self.body_refs[message_id] -= 1
        if self.body_refs[message_id] <= 0:
            del self.body_refs[message_id]
            del self.bodies[message_id]

    def _feed(self, child: Child) -> None:
        if child.closed or child.stdin < 0:
            return
        child.feed()
        registered = self.selector.get_map().get(child.stdin) is not None
        if child.outbuf and not registered:
            self.selector.register(child.stdin, selectors.EVENT_WRITE, ("in", child))
        elif not child.outbuf and registered:
            self.selector.unregister(child.stdin)

    # -- children's answers ---------------------------------------------------

    def _on_child_output(self, child: Child) -> None:
        if child.closed:
            return
        lines, eof = child.read_lines()
        if lines:
            child.last_heard = time.monotonic()
        for line in lines:
            try:
                self._on_line(child, line)
            except ProtocolError as exc:
                self.log.error("child_protocol_error", pid=child.pid, error=str(exc))
                child.signal(signal.SIGKILL)
                self._child_lost(child, "delivery agent protocol error")
                return
        if eof:
            self._child_lost(child, "delivery agent exited before answering")

    def _on_line(self, child: Child, line: bytes) -> None:
        reply = decode_reply(line)
        if isinstance(reply, Result):
            row = child.pending.pop(reply.id, None)
            if row is None:
                raise ProtocolError(f"result for id {reply.id}, which it was not given")
            runner = self.config.runner
            attempt = outcome.from_result(row, reply, time.time(), runner.backoff_min,
                                          runner.backoff_max, runner.max_agent_failures)
            self._record(attempt, tls=reply.tls, cipher=reply.cipher, tls_policy=reply.tls_policy)
            if attempt.kind:  # a failure: it may throttle the destination (shaping.py)
                self.shaper.on_attempt(attempt)
        elif isinstance(reply, Done):
            if not child.busy:
                raise ProtocolError(f"done line for job {reply.job}, but it had no job")
            self._job_done(child, reply)
        else:
            self.log.warning("child_error", pid=child.pid, error=reply)

    def _job_done(self, child: Child, done: Done) -> None:
        self._fail_pending(child, "delivery agent gave no result")
        self._learn_route(child.domain, done)
        self.shaper.job_done(child.pid, done.kept is not None)
        child.kept = done.kept
        self.active[child.domain] -= 1
        child.uses += 1
        if child.uses >= self.config.runner.max_use or child.retiring or self.stopping:
            child.retiring = True
        self.pool.unassign(child)
        if child.retiring:
            self._retire(child)

    def _retire(self, child: Child) -> None:
        child.retiring = True
        if child.stdin >= 0 and self.selector.get_map().get(child.stdin) is not None:
            self.selector.unregister(child.stdin)
        child.close_stdin()

    def _fail_pending(self, child: Child, why: str) -> None:
        runner = self.config.runner
        now = time.time()
        for row in child.pending.values():
            self._record(outcome.lost(row, why, now, runner.backoff_min, runner.backoff_max,
                                      runner.max_agent_failures))
        child.pending.clear()

    def _child_lost(self, child: Child, why: str) -> None:
        if child.closed:
            return
        self._fail_pending(child, why)
        self.shaper.child_gone(child.pid)
        if child.busy:
            self.active[child.domain] -= 1
            self.pool.unassign(child)
        for fd in (child.stdin, child.stdout):
            if fd >= 0 and self.selector.get_map().get(fd) is not None:
                self.selector.unregister(fd)
        child.close()

    def _check_hung(self, now: float) -> None:
        if now < self.next_hung_check:
            return
        self.next_hung_check = now + min(1.0, self.config.runner.child_timeout / 4)
        for child in self.pool.busy():
            if now - child.last_heard > self.config.runner.child_timeout:
                self.log.error("child_timeout", pid=child.pid, domain=child.domain,
                               silent_for=round(now - child.last_heard, 1))
                child.signal(signal.SIGKILL)
                self._child_lost(child, "delivery agent timed out")

    # -- results --------------------------------------------------------------

    def _record(self, attempt: Attempt, **tls: str) -> None:
        """Log one attempt (with the child's ``tls``, ``cipher``, ``tls_policy``
        when it made one) and queue it for the next database write."""
        row = attempt.row
        self.log.info("delivery", id=row.id, to=row.recipient, relay=attempt.relay,
                      delay=round(time.time() - row.created_at, 3), dsn=attempt.dsn,
                      status=attempt.status, attempt=row.attempts + 1, reply=attempt.reply,
                      **tls)
        if not self.results:
            self.first_result_at = time.monotonic()
        self.results.append(attempt)
        self.stats.recorded(attempt.status)
        self.journal.append(attempt)

    def _shape(self) -> None:
        """The shaper's database work; rows it gave back to the queue leave the backlog."""
        given_back = self.shaper.tick(self.backlog, self.backlog_rows)
        if given_back:
            self.backlog_rows -= len(given_back)
            for row in given_back:
                self._unref_body(row.message_id)
            self.want_claim = True  # the room they leave is for other destinations
            self.next_scan = self.last_claim + _CLAIM_GAP

    def _flush(self) -> None:
        batch, self.results = self.results, []
        started = time.monotonic()
        try:
            self.store.record(batch, self.owner)
        except BaseException:
            self.results = batch + self.results
            raise
        self.journal.clear_own()
        # Children went on journalling while the batch was committed; their lines
        # are kept, in the runner's own journal, before theirs is emptied.
        for child in list(self.pool.children.values()):
            self._on_child_output(child)
        self.journal.clear_children()
        self.stats.wrote(time.monotonic() - started)

    def _status_line(self) -> str:
        return self.stats.status_line(self.pool.busy_count(), len(self.pool),
                                      self.config.runner.max_children, self.backlog_rows)

    # -- stopping -------------------------------------------------------------

    def _shutdown(self) -> None:
        self.listeners.stop()
        for child in self.pool.busy():
            self.log.warning("child_killed", pid=child.pid, reason="grace period over")
            child.signal(signal.SIGKILL)
            self._child_lost(child, "delivery interrupted: runner stopping")
        for child in list(self.pool.children.values()):
            self._retire(child)
        self._wait_children()
        self.pool.close()
        self._final_flush()
        self.shaper.close()
        try:
            self.store.forget_runner(self.owner)
        except StoreUnavailable:
            pass  # the runner row only feeds "status"; its heartbeat will go stale
        self.store.close()
        self.journal.close()

    def _wait_children(self) -> None:
        deadline = time.monotonic() + _KILL_WAIT
        while self.pool.children and time.monotonic() < deadline:
            self.handle_chld()
            for key, _ in self.selector.select(0.1):
                self._on_event(key)
        for child in list(self.pool.children.values()):
            child.signal(signal.SIGKILL)
            os.waitpid(child.pid, 0)
            self._child_lost(child, "delivery agent killed at shutdown")
            del self.pool.children[child.pid]

    def _final_flush(self) -> None:
        for wait in (0, 1, 2, 4):
            time.sleep(wait)
            try:
                self._flush()
                return
            except StoreUnavailable as exc:
                self.log.error("database_unavailable", error=str(exc),
                               results_waiting=len(self.results))
        self.log.error("results_unsaved", rows=len(self.results),
                       note="kept in the journal for the next start")
