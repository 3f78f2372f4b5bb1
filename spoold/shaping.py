"""Per-destination traffic shaping: connection concurrency and message rate, together,
held across every runner that shares the database.

NAME
    shaping - limits per destination domain or MX host pattern, throttle backoff

DESCRIPTION
    A rule in [shaping.destinations] names a recipient domain ("gmail.com")
    or a suffix of MX host names ("*.outlook.com"), and gives a connection
    concurrency, a message rate (with a burst), or both, held together.
    The rule's name is its shaping key: every domain a "*." rule matches
    shares one set of limits, as the provider behind them counts them.  A
    domain rule applies at once.  An MX rule applies once the runner knows
    the domain's route, from the first job that looked it up: until then a
    domain no domain rule names gets one probe job of one message at a
    time, and that message is charged afterwards to the rate of the rule
    its route matched (a probe that learns no route, DNS having failed,
    leaves the domain under no MX rule until a later job learns one).
    Among MX rules the longest suffix wins, matched against the MX hosts in
    preference order; a domain rule wins over any MX rule.  Destinations
    no rule names keep the runner's own behaviour (destination_concurrency
    per runner, no rate) and cost nothing here, until one is throttled.

    The limits hold across runners (state in spoold/store/shaping.py):

    rate         a token bucket per key (destination_shaping), refilled from
                 the time since it was last counted, never by a ticker.  A
                 job takes the tokens for all its messages (up to job_size,
                 no more than there are) in the transaction that starts it;
                 a runner refused comes back when a tenth of a second's
                 worth is there again.  Where a tenth of a second's worth
                 is more than the job, the runner also takes tokens for the
                 rows it has queued behind it, up to that much, and uses
                 them for its next jobs within 0.1 s (unused, they are
                 lost): jobs whose child keeps its slot then need no round
                 trip to the database.  The bucket holds at most burst
                 tokens (default: one second's worth), so over any window
                 of T seconds a key gets at most burst + rate * (T + 0.1)
                 messages.  Tokens count recipients (queue rows), as
                 providers do.
    concurrency  each runner's slots per key (destination_slot) under a 30 s
                 lease that its runner renews every 10 s; a dead runner's
                 slots count for nothing once the lease ends.  A job takes a
                 slot in the transaction that takes its tokens, if the live
                 slots of all runners leave one.  The slot stays with the
                 child while it keeps the connection open after the job
                 (up to smtp.connection_cache_time), and the next job for
                 that key goes to that child without a new slot or a
                 database round trip when the key has no rate.  Releases
                 reach the database within 0.1 s.
    backlog      rows a destination cannot take soon go back to the queue,
                 due when it can take them, with no attempt counted, so
                 that they do not fill the runner's backlog and hold up
                 other destinations: all its rows while it is paused, those
                 beyond 5 s of its rate, and without a rate, when the
                 backlog is more than half full (the runner claims no more),
                 those beyond four rounds of jobs at its concurrency (due
                 5 s later).  Checked every second and after each claim.
                 With --drain, rows given back are left for the next run.

    Throttling backs off a destination as a whole, for every runner:

    - A reply throttles its destination when a server gave it (our own
      timeouts and connection failures do not), it is not greylisting, and
      it is a 421 (the server is closing the session), a 4.7.x deferral, or
      a policy refusal (spoold.bounces.classify) about our host or our
      volume: speeding (rate limits, too many connections), blocked
      (blocklists), badreputation, spamdetected, requireptr.  Those policy
      refusals are recorded in destination_flag as well.  Other policy
      refusals (content, one recipient's own rules, our TLS, SPF or DKIM
      set-up) are flagged there but do not slow the destination: slowing
      would not help them.
    - A throttled destination gets no new connection from any runner for
      shaping.throttle_pause (its claimed rows go back to the queue until
      then) and its limits are halved (multiplicative decrease, down to
      1/16 and never below one connection).  Throttling replies during the
      pause change nothing more, so one burst of 421s halves once.
    - After the pause its limits grow back by a tenth of their configured
      value per shaping.recovery_interval (additive increase), computed from
      the time since the pause ended; a new throttle halves what is in
      force then.  The runner that finds it whole again logs
      destination_recovered.
    - A destination no rule names is throttled under its domain name, with
      runner.destination_concurrency as its whole limit, shared by all
      runners until it has recovered.
    Runners learn of each other's throttles within a second (one read of
    the throttled destinations per second) or at their next grant.

    Per message, with no rule and no throttled destination, the runner pays
    one attribute test per dispatch and one per failed attempt.

DIAGNOSTICS
    destination_throttled (destination, domain, cause, reply, relay, pause,
    factor, concurrency, rate), destination_recovered (destination, after,
    throttles); shaping_unavailable when the database refuses a grant (the
    destination waits a second and tries again).

CONFIGURATION PARAMETERS
    [shaping] destinations ({}), throttle_pause (60 s), recovery_interval
    (10 s); [runner] destination_concurrency (20), job_size (20); [smtp]
    connection_cache_time (2 s).

SEE ALSO
    spoold shaping (the state of each destination), spoold/store/shaping.py.
"""

from __future__ import annotations

import collections
import math
import re
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from sender.protocol import Target
from spoold.bounces.classify import POLICY
from spoold.config import Config, parse_rate
from spoold.errors import StoreUnavailable
from spoold.pool import Child
from spoold.store import Attempt, QueueRow, Store
from spoold.store.shaping import DestinationState

FLOOR = 1 / 16  # the least fraction of its limits a throttled destination keeps
STEP = 0.1  # what it gets back per recovery_interval
SLOT_LEASE = 30.0
PROBE = "*"  # the key of a domain whose route decides its rule, before it is known
_RENEW = 10.0
_POLL = 1.0
_SYNC = 0.1
_BATCH = 0.1  # seconds' worth of tokens a refused runner waits for, or a runner leases
_RETRY = (0.05, 0.5)  # waits of a runner refused a slot: doubling from, up to
_HORIZON = 5.0  # a shaped destination keeps the rows it can take in this many seconds,
_ROUNDS = 4  # or without a rate, this many rounds of jobs at its concurrency
_DB_RETRY = 1.0
_ROUTES = 10_000  # domains whose MX hosts are remembered (least recently used go)
_NEVER = math.inf

_SLOWING = frozenset({"speeding", "blocked", "badreputation", "spamdetected", "requireptr"})
_GREYLIST = re.compile(r"gr[ae]y[ -]?list", re.I)


@dataclass(frozen=True)
class Rule:
    name: str
    concurrency: int
    rate: float | None = None  # messages per second
    burst: float = 0.0

    def limits(self, factor: float) -> tuple[int, float | None, float]:
        """(concurrency, rate, burst) in force at ``factor`` of the configured limits."""
        concurrency = max(1, int(self.concurrency * factor))
        if self.rate is None:
            return concurrency, None, 0.0
        return concurrency, self.rate * factor, max(1.0, self.burst * factor)


def rules_of(config: Config) -> dict[str, Rule]:
    """The configured rules by name; concurrency defaults to destination_concurrency."""
    out = {}
    for name, entry in config.shaping.destinations.items():
        rate = parse_rate(entry["rate"]) if "rate" in entry else None
        burst = entry.get("burst", max(1, math.ceil(rate))) if rate else 0
        out[name] = Rule(name, entry.get("concurrency", config.runner.destination_concurrency),
                         rate, float(burst))
    return out


def factor_now(state: DestinationState, now: float, interval: float) -> float:
    """The fraction of its limits a destination has now: recovery is computed from time."""
    if now <= state.paused_until:
        return state.factor
    return min(1.0, state.factor + STEP * (now - state.paused_until) / interval)


def throttle_cause(attempt: Attempt) -> str | None:
    """Why this failed attempt should slow its whole destination, or None (see above)."""
    if attempt.code is None or _GREYLIST.search(attempt.reply or ""):
        return None
    if attempt.kind == POLICY and attempt.cause in _SLOWING:
        return attempt.cause
    if attempt.code == 421:
        return "421"
    if attempt.status != "bounced" and attempt.dsn.startswith("4.7."):
        return attempt.dsn
    return None


@dataclass
class _Grant:
    """What one child holds: a slot of ``name``, or a probe of the domain ``name``."""

    name: str
    probe: bool = False
    size: int = 0
    release_at: float | None = None  # kept connection: its slot goes then; None: job in hand


class Shaper:
    """The runner's side of traffic shaping: rules, grants, throttles (see above)."""

    def __init__(self, config: Config, owner: str, log: Any):
        self.owner = owner
        self.store: Store | None = None
        self.grants: dict[int, _Grant] = {}  # by child pid
        self.held: collections.Counter[str] = collections.Counter()  # slots by key
        self.kept: dict[str, dict[int, None]] = {}  # idle children holding a slot, by key
        self.dirty: set[str] = set()  # keys whose slot count the database has not seen
        self.probing: set[str] = set()
        self.debt: collections.Counter[str] = collections.Counter()  # probes' messages
        self.retry: dict[str, tuple[float, float]] = {}  # key -> (not before, last wait)
        self.leases: dict[str, tuple[int, float]] = {}  # key -> (tokens taken, usable until)
        self.throttled: dict[str, DestinationState] = {}
        self.events: dict[str, tuple[str, Attempt]] = {}  # throttles not yet written
        self.mx_hosts: collections.OrderedDict[str, tuple[str, ...]] = \
            collections.OrderedDict()
        self.mx_keys: dict[str, str] = {}  # domain -> MX rule name, "" for none
        self.timers = {"sync": _NEVER, "release": _NEVER, "renew": 0.0, "poll": 0.0,
                       "surplus": 0.0}
        self.backlog_seen = 0  # rows in the runner's backlog at the last tick
        self.outage = False
        self.configure(config, log)

    def configure(self, config: Config, log: Any) -> None:
        """Take the (re)loaded settings; grants in hand keep their keys."""
        self.log = log
        self.rules = rules_of(config)
        self.domain_rules = {n: r for n, r in self.rules.items() if not n.startswith("*.")}
        self.mx_rules = sorted(((n[1:], r) for n, r in self.rules.items() if n.startswith("*.")),
                               key=lambda item: -len(item[0]))
        self.mx_keys = {domain: self._match(hosts) for domain, hosts in self.mx_hosts.items()}
        self.default_concurrency = config.runner.destination_concurrency
        self.job_size = config.runner.job_size
        self.crowded = config.runner.claim_batch // 2  # the runner claims below this backlog
        self.pause = config.shaping.throttle_pause
        self.interval = config.shaping.recovery_interval
        self.cache_time = config.smtp.connection_cache_time
        self._update_enabled()

    def _update_enabled(self) -> None:
        #: The runner asks governs() only when this is true.
        self.enabled = bool(self.rules or self.throttled)

    def start(self, store: Store) -> None:
        self.store = store
        store.drop_slots(self.owner)  # a previous life of this runner held them

    def close(self) -> None:
        try:
            self.store.drop_slots(self.owner)
        except StoreUnavailable:
            pass  # they run out with their lease

    # -- which key governs a domain -------------------------------------------

    def governs(self, domain: str) -> str | None:
        """The shaping key of ``domain``: a rule's name, PROBE, the domain itself
        while it is throttled, or None (not shaped)."""
        rule = self.domain_rules.get(domain)
        if rule is not None:
            return rule.name
        if self.mx_rules:
            name = self.mx_keys.get(domain)
            if name:
                return name
            if name is None and domain not in self.throttled:
                return PROBE
        return domain if domain in self.throttled else None

    def learned(self, domain: str, targets: list[Target]) -> None:
        """A child looked up ``domain``'s route: which MX rule, if any, it falls under.

        Kept without MX rules too: a reload may bring some, and jobs carry the
        runner's cached route then, so no child would look it up again soon.
        """
        self.mx_hosts[domain] = tuple(t.host.lower().rstrip(".") for t in targets)
        self.mx_hosts.move_to_end(domain)
        if len(self.mx_hosts) > _ROUTES:
            self.mx_keys.pop(self.mx_hosts.popitem(last=False)[0], None)
        self.mx_keys[domain] = self._match(self.mx_hosts[domain])

    def _match(self, hosts: tuple[str, ...]) -> str:
        for host in hosts:
            for suffix, rule in self.mx_rules:
                if host.endswith(suffix):
                    return rule.name
        return ""

    def rule(self, name: str) -> Rule:
        return self.rules.get(name) or Rule(name, self.default_concurrency)

    def _factor(self, name: str, now: float) -> float:
        state = self.throttled.get(name)
        return 1.0 if state is None else factor_now(state, now, self.interval)

    # -- dispatching ----------------------------------------------------------

    def may_try(self, name: str, domain: str) -> bool:
        """Whether a grant for ``name`` may be asked for now (no database work)."""
        if name == PROBE:
            return domain not in self.probing
        now = time.time()
        state = self.throttled.get(name)
        if state is not None and now < state.paused_until:
            return False
        retry = self.retry.get(name)
        if retry is not None and now < retry[0]:
            return False
        if self.kept.get(name):
            return True
        return self.held[name] < self.rule(name).limits(self._factor(name, now))[0]

    def idle_holder(self, name: str, children: Mapping[int, Child]) -> Child | None:
        """An idle child whose kept connection holds a slot of ``name``."""
        for pid in self.kept.get(name, ()):
            child = children.get(pid)
            if child is not None and not (child.busy or child.retiring or child.closed):
                return child
        return None

    def acquire(self, name: str, domain: str, pid: int, want: int, queued: int) -> int:
        """How many of ``want`` messages child ``pid`` may take to ``domain`` now (0: none);
        ``queued``: the rows the runner has for ``domain``, these included."""
        if name == PROBE:
            self._release(pid)
            self.probing.add(domain)
            self.grants[pid] = _Grant(domain, probe=True, size=1)
            return 1
        grant = self.grants.get(pid)
        reuse = grant is not None and grant.name == name and not grant.probe
        rule = self.rule(name)
        now = time.time()
        if reuse and (rule.rate is None or self._lease(name, now) >= want):
            self._activate(pid, grant)
            if rule.rate is not None:
                tokens, until = self.leases[name]
                self.leases[name] = (tokens - want, until)
            return want
        try:
            with self.store.destination(name, self.owner, now, now + SLOT_LEASE,
                                        count_slots=not reuse) as state:
                size = self._grant(state, rule, want, queued, not reuse, now)
        except StoreUnavailable as exc:
            if not self.outage:
                self.log.error("shaping_unavailable", destination=name, error=str(exc),
                               retry_in=_DB_RETRY)
            self.outage = True
            self.retry[name] = (now + _DB_RETRY, _RETRY[0])
            return 0
        self.outage = False
        if size and reuse:
            self._activate(pid, grant)
        elif size:
            self._release(pid)
            self.grants[pid] = _Grant(name)
            self.held[name] += 1
            self.dirty.discard(name)  # the grant wrote this runner's count
        return size

    def _lease(self, name: str, now: float) -> int:
        """Tokens this runner took for ``name`` and may still use."""
        tokens, until = self.leases.get(name, (0, 0.0))
        return tokens if now < until else 0

    def _grant(self, state: DestinationState, rule: Rule, want: int, queued: int,
               slot: bool, now: float) -> int:
        """Decide one grant inside its transaction; changes ``state`` to what it takes."""
        name = state.name
        self._observe(state, now)
        if now < state.paused_until:
            self.retry[name] = (state.paused_until, _RETRY[0])
            return 0
        concurrency, rate, burst = rule.limits(factor_now(state, now, self.interval))
        mine = self.held[name]
        if slot and state.others + mine >= concurrency:
            wait = min(_RETRY[1], 2 * self.retry.get(name, (0.0, _RETRY[0] / 2))[1])
            self.retry[name] = (now + wait, wait)
            return 0
        size = want
        if rate is not None:
            debt = self.debt.pop(name, 0)
            tokens = min(burst, state.tokens + (now - state.filled_at) * rate) - debt
            # Tokens for this job and, within 0.1 s's worth, for the rows behind it:
            # at high rates the next jobs need no transaction of their own.
            lease = self._lease(name, now)
            ahead = max(0, min(queued - want, math.floor(rate * _BATCH)))
            take = max(0, min(math.floor(tokens), want + ahead - lease))
            size = min(want, lease + take)
            batch = min(self.job_size, max(1.0, rate * _BATCH))
            if size < 1:
                if debt:
                    state.tokens, state.filled_at = tokens, now
                self.retry[name] = (now + (min(want, batch) - tokens) / rate, _RETRY[0])
                return 0
            state.tokens, state.filled_at = tokens - take, now
            self.leases[name] = (lease + take - size, now + _BATCH)
            if lease + take > size:
                self.retry.pop(name, None)
            else:
                self.retry[name] = (now + max(0.0, batch - state.tokens) / rate, _RETRY[0])
        else:
            self.retry.pop(name, None)
        if slot:
            state.slots = mine + 1
        return size

    def _activate(self, pid: int, grant: _Grant) -> None:
        """A child holding a kept slot takes a new job for the same key."""
        grant.release_at = None
        self._unkeep(grant.name, pid)

    def _unkeep(self, name: str, pid: int) -> None:
        kept = self.kept.get(name)
        if kept is not None:
            kept.pop(pid, None)
            if not kept:
                del self.kept[name]

    def job_done(self, pid: int, kept: bool) -> None:
        """A child's job is over; ``kept``: it keeps the connection open for a while."""
        grant = self.grants.get(pid)
        if grant is None or grant.release_at is not None:
            return  # no grant, or a kept one that this (unshaped) job did not use
        if grant.probe:
            self._release(pid)
            # No route learned (DNS failed): no MX rule until one is, rather than
            # its whole backlog one probe at a time behind DNS timeouts.
            self.mx_keys.setdefault(grant.name, "")
            name = self.governs(grant.name)
            if name in self.rules and self.rules[name].rate is not None:
                self.debt[name] += grant.size
        elif kept and self.cache_time > 0:
            # the child closes it cache_time after its last reply, a little before this
            grant.release_at = time.time() + self.cache_time + _SYNC
            self.kept.setdefault(grant.name, {})[pid] = None
            self.timers["release"] = min(self.timers["release"], grant.release_at)
        else:
            self._release(pid)

    def child_gone(self, pid: int) -> None:
        """The child died or was killed: its connection is closed."""
        self._release(pid)

    def _release(self, pid: int) -> None:
        grant = self.grants.pop(pid, None)
        if grant is None:
            return
        if grant.probe:
            self.probing.discard(grant.name)
            return
        name = grant.name
        self.held[name] -= 1
        if self.held[name] <= 0:
            del self.held[name]
        self._unkeep(name, pid)
        self.dirty.add(name)
        self.timers["sync"] = min(self.timers["sync"], time.time() + _SYNC)

    # -- throttling -------------------------------------------------------------

    def on_attempt(self, attempt: Attempt) -> None:
        """A failed attempt: throttle its destination if the reply says so."""
        cause = throttle_cause(attempt)
        if cause is None:
            return
        domain = attempt.row.domain
        name = self.governs(domain)
        if name is None or name == PROBE:
            name = domain
        now = time.time()
        known = self.throttled.get(name)
        if name in self.events or (known is not None and now < known.paused_until):
            return
        self.events[name] = (cause, attempt)
        # This runner stops at once; the database decides the pause and the factor.
        factor = factor_now(known, now, self.interval) if known else 1.0
        self.throttled[name] = DestinationState(name, factor=max(FLOOR, factor / 2),
                                                paused_until=now + self.pause)
        self.timers["surplus"] = 0.0
        self._update_enabled()

    def _write_throttles(self, now: float) -> None:
        for name in sorted(self.events):
            cause, attempt = self.events[name]
            with self.store.destination(name, self.owner, now, now + SLOT_LEASE) as state:
                fresh = now >= state.paused_until
                if fresh:
                    state.factor = max(FLOOR, factor_now(state, now, self.interval) / 2)
                    state.paused_until = now + self.pause
                    state.throttles += 1
                    state.throttled_at = now
                    state.cause, state.reply, state.relay = \
                        cause, attempt.reply[:1000], attempt.relay[:300]
            del self.events[name]
            self._observe(state, now)
            if fresh:
                concurrency, rate, _ = self.rule(name).limits(state.factor)
                self.log.warning("destination_throttled", destination=name,
                                 domain=attempt.row.domain, cause=cause, reply=attempt.reply,
                                 relay=attempt.relay, pause=self.pause,
                                 factor=round(state.factor, 3), concurrency=concurrency,
                                 rate=None if rate is None else round(rate, 3))

    def _observe(self, state: DestinationState, now: float) -> None:
        """What the database says of a destination's throttle, as this runner knows it."""
        if state.factor < 1 or state.paused_until > now:
            self.throttled[state.name] = state
        else:
            self.throttled.pop(state.name, None)
        self._update_enabled()

    def _poll(self, now: float) -> None:
        throttled = {}
        for state in self.store.throttled_destinations(now):
            if now < state.paused_until or factor_now(state, now, self.interval) < 1:
                throttled[state.name] = state
            elif self.store.clear_throttle(state):
                self.log.info("destination_recovered", destination=state.name,
                              after=round(now - (state.throttled_at or now), 1),
                              throttles=state.throttles)
        self.throttled = throttled
        self._update_enabled()

    # -- the runner's database phase -----------------------------------------

    def tick(self, backlog: MutableMapping[str, collections.deque[QueueRow]],
             rows: int) -> list[QueueRow]:
        """Database work that is due: throttles to write, slot counts to sync or
        renew, the poll, and rows to give back (every second, and after a claim:
        ``rows`` in ``backlog`` grew).  Returns the rows taken out of
        ``backlog`` (they are queued again, due later)."""
        now = time.time()
        if self.events:
            self._write_throttles(now)
        if now >= self.timers["release"]:
            self._release_kept(now)
        if self.dirty and now >= self.timers["sync"]:
            self.store.set_slots(self.owner, {name: self.held[name] for name in self.dirty},
                                 now + SLOT_LEASE)
            self.dirty.clear()
            self.timers["sync"] = _NEVER
        if self.held and now >= self.timers["renew"]:
            self.store.renew_slots(self.owner, now + SLOT_LEASE, now)
            self.timers["renew"] = now + _RENEW
        if now >= self.timers["poll"]:
            self._poll(now)
            self.timers["poll"] = now + _POLL
        removed = []
        if self.enabled and (now >= self.timers["surplus"] or rows > self.backlog_seen):
            self.timers["surplus"] = now + _POLL
            removed = self._give_back(backlog, rows > self.crowded, now)
        self.backlog_seen = rows - len(removed)
        return removed

    def _release_kept(self, now: float) -> None:
        due = [pid for pid, grant in self.grants.items()
               if grant.release_at is not None and grant.release_at <= now]
        for pid in due:
            self._release(pid)
        self.timers["release"] = min((g.release_at for g in self.grants.values()
                                      if g.release_at is not None), default=_NEVER)

    def _give_back(self, backlog: MutableMapping[str, collections.deque[QueueRow]],
                   crowded: bool, now: float) -> list[QueueRow]:
        """Rows beyond what each key can take soon go back to the queue (without a
        rate, only when they crowd the backlog: how soon is not known)."""
        seen: collections.Counter[str] = collections.Counter()  # rows per key so far
        cuts: list[tuple[str, int]] = []
        due: list[tuple[int, float]] = []
        for domain, queue in backlog.items():
            name = self.governs(domain)
            if name is None or name == PROBE:
                continue
            room, first, spacing = self._room(name, crowded, now)
            before = seen[name]
            keep = int(max(0, min(len(queue), room - before)))
            # the row at position p of its key (p >= room) is due when the key gets to it
            due.extend((queue[index].id, first + spacing * (before + index - room))
                       for index in range(keep, len(queue)))
            seen[name] = before + len(queue)
            if keep < len(queue):
                cuts.append((domain, keep))
        if not due:
            return []
        self.store.postpone(self.owner, due)
        removed = []
        for domain, keep in cuts:
            queue = backlog[domain]
            while len(queue) > keep:
                removed.append(queue.pop())
            if not queue:
                del backlog[domain]
        return removed

    def _room(self, name: str, crowded: bool, now: float) -> tuple[int | float, float, float]:
        """(rows the key may keep, when the first one beyond is due, spacing of the rest)."""
        rule = self.rule(name)
        state = self.throttled.get(name)
        if state is not None and now < state.paused_until:
            _, rate, _ = rule.limits(state.factor)
            return 0, state.paused_until, 1 / rate if rate else 0.0
        concurrency, rate, burst = rule.limits(self._factor(name, now))
        if rate is None:
            room = _ROUNDS * concurrency * self.job_size if crowded else _NEVER
            return room, now + _HORIZON, 0.0
        room = math.ceil(burst + rate * _HORIZON)
        return room, now + room / rate, 1 / rate

    def wake_in(self) -> float:
        """Seconds until the shaper next has something to do (a timer, a retry, a pause's end)."""
        now = time.time()
        times = [self.timers["poll"], self.timers["release"]]
        if self.dirty:
            times.append(self.timers["sync"])
        if self.held:
            times.append(self.timers["renew"])
        if self.enabled:
            times.append(self.timers["surplus"])
            times.extend(at for at, _ in self.retry.values() if at > now)
            times.extend(s.paused_until for s in self.throttled.values() if s.paused_until > now)
        return max(0.0, min(times) - now)
