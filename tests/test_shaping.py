"""Traffic shaping: rules, the throttle rule set, limits shared through the store
(two shapers as two runners, SQLite and MariaDB), and real runners against real sinks."""

from __future__ import annotations

import collections
import time

import pytest

from conftest import log_events, wait_for

from spoold import config as config_mod
from spoold import outcome
from spoold.errors import ConfigError
from spoold.fakenet import Behaviour
from spoold.shaping import PROBE, SLOT_LEASE, Shaper, throttle_cause
from spoold.store import QueueRow, open_store
from sender.protocol import Result, Target


class _Log:
    """Collects the events a Shaper logs."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **fields: self.events.append((event, fields))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


def _config(destinations=None, **shaping):
    return config_mod.build({"runner": {"destination_concurrency": 3, "job_size": 10},
                             "shaping": {"destinations": destinations or {}, **shaping}})


def _row(domain: str, row_id: int = 1) -> QueueRow:
    return QueueRow(row_id, 1, "s@spoold.test", f"u{row_id}@{domain}", domain, 1, 0,
                    time.time(), time.time() + 3600)


def _attempt(domain: str, code: int | None, dsn: str, reply: str):
    result = Result(1, "bounced" if dsn.startswith("5") else "deferred", code, dsn, reply,
                    f"mx1.{domain}[127.0.1.1]:25", 0.1)
    return outcome.from_result(_row(domain), result, time.time(), 300, 4000)


# -- settings ------------------------------------------------------------------

@pytest.mark.parametrize("destinations, message", [
    ({"*gmail.com": {"concurrency": 1}}, "neither a domain"),
    ({"gmail.*": {"concurrency": 1}}, "neither a domain"),
    ({"gmail.com": {"rate": "20 per second"}}, "is not a rate such as"),
    ({"gmail.com": {"rate": "0/s"}}, "is not a rate such as"),
    ({"gmail.com": {"rate": "5/week"}}, "is not a rate such as"),
    ({"gmail.com": {"concurrency": 0}}, "concurrency must be a whole number"),
    ({"gmail.com": {"rate": "1/s", "burst": 2.5}}, "burst must be a whole number"),
    ({"gmail.com": {"burst": 3}}, "give a concurrency, a rate or both"),
    ({"gmail.com": {"concurency": 3}}, "expected a table of concurrency, rate and burst"),
    ({"gmail.com": 5}, "expected a table"),
])
def test_bad_rules_are_refused_naming_the_rule(destinations, message):
    with pytest.raises(ConfigError) as err:
        _config(destinations)
    assert "shaping.destinations" in str(err.value) and message in str(err.value)


def test_rules_read_rates_in_any_unit_and_default_the_rest():
    shaper = Shaper(_config({"A.example": {"rate": "600/min"}, "*.mx.example": {"rate": "30/h"},
                             "c.example": {"concurrency": 2}}), "me", _Log())
    a, mx, c = shaper.rule("a.example"), shaper.rule("*.mx.example"), shaper.rule("c.example")
    assert (a.rate, a.burst, a.concurrency) == (10.0, 10.0, 3)  # burst: one second's worth
    assert (mx.rate, mx.burst) == (30 / 3600, 1.0)
    assert (c.rate, c.concurrency) == (None, 2)
    assert shaper.rule("other.example").concurrency == 3 and shaper.enabled
    assert not Shaper(_config(), "me", _Log()).enabled


def test_domain_rule_first_then_mx_rule_once_the_route_is_known():
    shaper = Shaper(_config({"hosted.example": {"concurrency": 1},
                             "*.example.net": {"concurrency": 5},
                             "*.in.example.net": {"concurrency": 2}}), "me", _Log())
    assert shaper.governs("hosted.example") == "hosted.example"
    assert shaper.governs("new.example") == PROBE  # one probe job learns its route
    shaper.learned("new.example", [Target("mx1.in.example.net", "127.0.1.1", 10)])
    shaper.learned("plain.example", [Target("mx.plain.example", "127.0.1.2", 10)])
    shaper.learned("hosted.example", [Target("mx.in.example.net", "127.0.1.1", 10)])
    assert shaper.governs("new.example") == "*.in.example.net"  # the longest suffix
    assert shaper.governs("plain.example") is None
    assert shaper.governs("hosted.example") == "hosted.example"


# -- which replies throttle --------------------------------------------------------

@pytest.mark.parametrize("code, dsn, reply, cause", [
    (421, "4.7.0", "421 4.7.0 Too many connections from your IP, slow down", "speeding"),
    (421, "4.3.2", "421 4.3.2 Service shutting down, closing channel", "421"),
    (452, "4.7.1", "452 4.7.1 Rate limited, try again later", "speeding"),
    (450, "4.7.0", "450 4.7.0 Try again later", "4.7.0"),
    (550, "5.7.1", "550 5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org",
     "blocked"),
    (451, "4.7.1", "451 4.7.1 Greylisting in action, please come back later", None),
    (450, "4.2.0", "450 4.2.0 Greylisted, try again later", None),
    (550, "5.7.1", "550 5.7.1 Message rejected: does not comply with our content policy",
     None),
    (550, "5.1.1", "550 5.1.1 <u1@x.example>: Recipient address rejected: User unknown", None),
    (None, "4.4.1", "connection refused", None),
    (None, "4.7.5", "TLS handshake failed", None),
])
def test_which_replies_throttle_the_destination(code, dsn, reply, cause):
    assert throttle_cause(_attempt("x.example", code, dsn, reply)) == cause


# -- limits shared through the store -------------------------------------------------

@pytest.fixture
def pair(db_url):
    """Two shapers with their own store connections: two runners sharing a database."""
    made = []

    def make(config):
        shapers = []
        for owner in ("runner-a", "runner-b"):
            store = open_store(db_url)
            store.ensure_schema()
            shaper = Shaper(config, owner, _Log())
            shaper.start(store)
            shapers.append(shaper)
            made.append(store)
        return shapers

    yield make
    for store in made:
        store.close()


def test_rate_tokens_are_shared_and_refill_from_time(pair):
    a, b = pair(_config({"r.example": {"rate": "20/s", "burst": 5}}))
    assert a.acquire("r.example", "r.example", 101, 10, 10) == 5  # the whole burst, no more
    assert b.acquire("r.example", "r.example", 201, 10, 10) == 0
    assert not b.may_try("r.example", "r.example")  # told when to come back
    time.sleep(0.3)  # 6 tokens' worth, but the bucket holds 5
    got = b.acquire("r.example", "r.example", 202, 10, 10)
    assert got + a.acquire("r.example", "r.example", 102, 10, 10) == 5


def test_at_high_rates_a_runner_leases_tokens_for_its_next_jobs(pair):
    a, _ = pair(_config({"r.example": {"rate": "1000/s", "burst": 1000}}))
    transactions = []
    destination = a.store.destination
    a.store.destination = lambda *args, **kw: transactions.append(args[0]) or \
        destination(*args, **kw)
    assert a.acquire("r.example", "r.example", 101, 10, 500) == 10
    states, _ = a.store.shaping_rows(time.time())
    assert states[0].tokens == 1000 - 10 - 100  # and a tenth of a second's worth behind it
    a.job_done(101, kept=True)
    for _ in range(10):  # its kept slot and its lease: no transaction
        assert a.acquire("r.example", "r.example", 101, 10, 490) == 10
        a.job_done(101, kept=True)
    assert len(transactions) == 1
    time.sleep(0.12)  # an unused lease is lost
    assert a.acquire("r.example", "r.example", 101, 10, 10) == 10 and len(transactions) == 2


def test_slots_are_shared_released_and_recovered_from_a_dead_runner(pair):
    a, b = pair(_config({"c.example": {"concurrency": 2}}))
    assert a.acquire("c.example", "c.example", 101, 4, 4) == 4
    assert b.acquire("c.example", "c.example", 201, 4, 4) == 4
    assert a.acquire("c.example", "c.example", 102, 4, 4) == 0  # 2 connections in use
    assert not a.may_try("c.example", "c.example")
    a.job_done(101, kept=False)
    a.tick({}, 0)  # the release reaches the database within 0.1 s
    time.sleep(0.15)
    a.tick({}, 0)
    b.retry.clear()
    assert b.acquire("c.example", "c.example", 202, 4, 4) == 4
    # runner b dies holding 2 slots: they count until their lease ends
    b.store.set_slots("runner-b", {"c.example": 2}, time.time() - 1)
    a.retry.clear()
    assert a.acquire("c.example", "c.example", 103, 4, 4) == 4
    assert a.acquire("c.example", "c.example", 104, 4, 4) == 4
    assert 0 < SLOT_LEASE <= 60


def test_a_kept_connection_keeps_its_slot_for_the_next_job(pair):
    a, b = pair(_config({"c.example": {"concurrency": 1}}, throttle_pause=1))
    assert a.acquire("c.example", "c.example", 101, 4, 4) == 4
    a.job_done(101, kept=True)
    a.tick({}, 0)
    assert b.acquire("c.example", "c.example", 201, 4, 4) == 0  # the idle connection counts
    assert a.acquire("c.example", "c.example", 101, 4, 4) == 4  # its own child: no new slot


def test_a_throttle_pauses_the_destination_for_every_runner_then_it_recovers(pair):
    config = _config({"r.example": {"concurrency": 4, "rate": "10/s"}}, throttle_pause=1,
                     recovery_interval=0.1)
    a, b = pair(config)
    assert b.governs("plain.example") is None  # unshaped, until throttled
    a.on_attempt(_attempt("plain.example", 421, "4.7.0", "421 4.7.0 Too many connections"))
    a.on_attempt(_attempt("r.example", 421, "4.7.0", "421 4.7.0 Too many connections"))
    a.on_attempt(_attempt("r.example", 421, "4.7.0", "421 4.7.0 Too many connections"))
    assert not a.may_try("r.example", "r.example")  # at once, before the database knows
    a.tick({}, 0)
    b.tick({}, 0)
    assert b.governs("plain.example") == "plain.example"
    assert not b.may_try("plain.example", "plain.example")
    assert not b.may_try("r.example", "r.example")
    throttled = [f for name, f in a.log.events if name == "destination_throttled"]
    assert sorted(f["destination"] for f in throttled) == ["plain.example", "r.example"]
    r = next(f for f in throttled if f["destination"] == "r.example")
    assert (r["factor"], r["concurrency"], r["rate"], r["cause"]) == (0.5, 2, 5.0, "speeding")
    assert b.acquire("r.example", "r.example", 201, 10, 10) == 0
    time.sleep(1.1)  # the pause is over: half the limits, growing back
    assert b.may_try("r.example", "r.example")
    wait_for(lambda: (b.tick({}, 0), "destination_recovered" in b.log.names())[1], 5,
             "recovery")
    assert not b.throttled and b.governs("plain.example") is None
    assert [f["destination"] for name, f in b.log.events if name == "destination_recovered"] \
        in (["plain.example", "r.example"], ["r.example", "plain.example"])
    a.on_attempt(_attempt("r.example", 550, "5.7.1", "550 5.7.1 blocked using Spamhaus"))
    a.tick({}, 0)
    assert a.store.reset_destination("r.example")  # spoold shaping --reset
    assert not a.store.reset_destination("r.example")
    a.timers["poll"] = 0.0  # its next poll, within a second
    a.tick({}, 0)
    assert a.may_try("r.example", "r.example")


def test_a_probe_that_learns_no_route_leaves_the_domain_unshaped_until_one_is_learned():
    shaper = Shaper(_config({"*.example.net": {"concurrency": 1}}), "me", _Log())
    assert shaper.governs("broken.example") == PROBE
    assert shaper.acquire(PROBE, "broken.example", 101, 10, 500) == 1  # one message
    assert not shaper.may_try(PROBE, "broken.example")  # one probe at a time
    shaper.job_done(101, kept=False)  # its DNS lookup failed: no route
    assert shaper.governs("broken.example") is None
    shaper.learned("broken.example", [Target("mx1.example.net", "127.0.1.1", 10)])
    assert shaper.governs("broken.example") == "*.example.net"


def test_mx_rules_brought_by_a_reload_apply_to_routes_learned_before():
    shaper = Shaper(_config(), "me", _Log())
    shaper.learned("hosted.example", [Target("mx1.mail.example.net", "127.0.1.1", 10)])
    shaper.configure(_config({"*.example.net": {"concurrency": 1}}), _Log())
    assert shaper.governs("hosted.example") == "*.example.net"


def test_rows_beyond_a_rate_go_back_to_the_queue_due_when_it_gets_to_them(pair):
    a, _ = pair(_config({"r.example": {"rate": "2/s", "burst": 1}}))
    store = a.store
    store.enqueue("s@spoold.test", b"x", [(f"u{i}@{d}", d) for d in ("r.example", "o.example")
                                          for i in range(20)], 1, time.time() + 3600)
    rows = store.claim("runner-a", 100, time.time() + 600)
    backlog = collections.OrderedDict()
    for row in rows:
        backlog.setdefault(row.domain, collections.deque()).append(row)
    removed = a.tick(backlog, len(rows))
    assert len(backlog["r.example"]) == 11  # the burst and 5 s at 2/s
    assert len(backlog["o.example"]) == 20 and len(removed) == 9
    due = sorted(r["not_before"] for r in store.queue_rows(state="queued"))
    assert len(due) == 9 and due[0] > time.time() + 4  # due when the rate gets to them
    assert 0.4 < due[1] - due[0] < 0.6


# -- real runners, real sinks ----------------------------------------------------------

def _enqueue_each(spool, recipients):
    import spoold

    for recipient in recipients:
        spoold.enqueue(sender="sender@spoold.test", recipients=[recipient], subject="t",
                       body="hello\n", config=spool.config)


def _arrivals(sinks) -> list[float]:
    return sorted(m.at for sink in sinks for m in list(sink.messages) for _ in m.rcpt_tos)


def _excess(times: list[float], rate: float, burst: float) -> float:
    """How far the busiest window goes beyond burst + rate * its length."""
    return max((j - i + 1) - burst - rate * (times[j] - times[i])
               for i in range(len(times)) for j in range(i, len(times)))


def _deliveries(spool) -> list[dict]:
    store = spool.store()
    try:
        return store.deliveries(limit=10000)
    finally:
        store.close()


def test_rate_and_concurrency_hold_together_across_two_runners_on_mariadb(
        world, spool_factory, mysql_url):
    sink, = world.add_domain("rate.test", Behaviour(delay=0.02))
    rule = {"destinations": {"rate.test": {"concurrency": 2, "rate": "20/s", "burst": 4}}}
    first, second = (spool_factory(mysql_url, name=name, runner={"claim_batch": 10},
                                   shaping=rule) for name in "ab")
    _enqueue_each(first, [f"u{i}@rate.test" for i in range(60)])
    started = time.monotonic()
    first.start()
    second.start()
    first.wait_settled(timeout=30)
    times = _arrivals([sink])
    assert len(times) == 60
    # beyond burst + rate * window: the 0.1 s token lease and a busy machine's latency
    # jitter allow a few recipients; limits per runner went 30 beyond
    assert _excess(times, 20, 4) <= 5
    assert times[-1] - times[0] >= (60 - 4) / 20 - 0.3
    assert sink.max_concurrent <= 2
    assert time.monotonic() - started < 15
    assert log_events(first.log_lines(), "delivery") and \
        log_events(second.log_lines(), "delivery"), "both runners took part"


def test_concurrency_limit_holds_across_two_runners_on_mariadb(world, spool_factory, mysql_url):
    sink, = world.add_domain("conc.test", Behaviour(delay=0.05))
    rule = {"destinations": {"conc.test": {"concurrency": 2}}}
    first, second = (spool_factory(mysql_url, name=name, runner={"claim_batch": 6, "job_size": 2},
                                   smtp={"connection_cache_time": 0.5}, shaping=rule)
                     for name in "ab")
    _enqueue_each(first, [f"u{i}@conc.test" for i in range(20)])
    first.start()
    second.start()
    first.wait_settled(timeout=40)
    assert len(_arrivals([sink])) == 20
    assert sink.max_concurrent == 2  # each runner alone would open 2
    assert log_events(first.log_lines(), "delivery") and \
        log_events(second.log_lines(), "delivery"), "both runners took part"


def test_421_throttles_the_destination_as_a_whole_then_it_recovers(world, spool_factory):
    busy, = world.add_domain("busy.test", Behaviour(
        greeting="421 4.7.0 Too many connections from your IP, slow down"))
    other, = world.add_domain("other.test")
    pause = 3
    spool = spool_factory(runner={"destination_concurrency": 1, "job_size": 2,
                                  "backoff_min": 0.2, "backoff_max": 0.2},
                          shaping={"throttle_pause": pause, "recovery_interval": 0.2})
    _enqueue_each(spool, [f"u{i}@busy.test" for i in range(10)])
    _enqueue_each(spool, [f"u{i}@other.test" for i in range(10)])
    spool.start()
    wait_for(lambda: log_events(spool.log_lines(), "destination_throttled"), 10, "a throttle")
    throttled_at = time.time()
    wait_for(lambda: len(other.messages) == 10, pause - 1, "the unrelated destination's mail")
    shown = spool.cli("shaping").stdout.decode()
    assert busy.sessions == 1, "no new connection while paused: the rest of its mail waits"
    assert time.time() < throttled_at + pause, "the machine is too slow for this test"
    assert "busy.test" in shown and "paused" in shown and "Too many connections" in shown
    busy.behaviour = Behaviour()
    spool.wait_settled(timeout=30)
    assert min(_arrivals([busy])) >= throttled_at + pause - 0.5
    attempts = collections.Counter(d["status"] for d in _deliveries(spool)
                                   if d["recipient"].endswith("@busy.test"))
    assert attempts == {"sent": 10, "deferred": 2}  # only the job that met the 421 failed
    event = log_events(spool.log_lines(), "destination_throttled")[0]
    assert (event["destination"], event["cause"], event["pause"]) == \
        ("busy.test", "speeding", pause)
    wait_for(lambda: log_events(spool.log_lines(), "destination_recovered"), 10, "recovery")
    # Listed until the last kept connection to it closes (its slot goes with it).
    wait_for(lambda: "no throttled destination" in spool.cli("shaping").stdout.decode(), 10,
             "the recovered destination to leave spoold shaping", every=0.3)


def test_mx_pattern_rule_applies_once_the_route_is_known(world, spool_factory):
    sink, = world.add_domain("provider.test", Behaviour(delay=0.03))
    hosted = [f"c{i}.test" for i in range(3)]
    for domain in hosted:
        world.dns.set(domain, {"MX": [(10, "mx1.provider.test")]})
    spool = spool_factory(runner={"job_size": 2}, smtp={"connection_cache_time": 0.3},
                          shaping={"destinations": {"*.provider.test": {"concurrency": 1}}})
    spool.start()
    _enqueue_each(spool, [f"first@{d}" for d in hosted])  # one probe per domain
    spool.wait_settled(timeout=20)
    wait_for(lambda: sink.concurrent == 0, 5, "the probes' connections to close")
    sink.reset()
    _enqueue_each(spool, [f"u{i}@{d}" for d in hosted for i in range(6)])
    spool.wait_settled(timeout=30)
    assert len(_arrivals([sink])) == 18
    assert sink.max_concurrent == 1  # three domains, one provider's limit
    shown = spool.cli("shaping").stdout.decode()
    assert "*.provider.test" in shown and " mx " in shown


def test_a_slow_destination_does_not_hold_up_the_others(world, spool_factory):
    slow, = world.add_domain("slow.test")
    fast, = world.add_domain("fast.test")
    spool = spool_factory(runner={"claim_batch": 20},
                          shaping={"destinations": {"slow.test": {"rate": "2/s", "burst": 1}}})
    _enqueue_each(spool, [f"u{i}@slow.test" for i in range(60)])
    _enqueue_each(spool, [f"u{i}@fast.test" for i in range(10)])
    spool.start()
    wait_for(lambda: len(fast.messages) == 10, 10, "the fast destination's mail")
    assert len(slow.messages) < 30
    counts = spool.counts()
    assert counts["queued"] + counts["active"] > 30
