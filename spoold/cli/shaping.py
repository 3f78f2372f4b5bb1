"""``spoold shaping``: each shaped destination's limits, tokens, slots and backoff state.

    spoold shaping                 one line per rule and per throttled destination
    spoold shaping --reset NAME    lift a throttle: whole limits, no pause

What each column means is in README.md ("Traffic shaping"); the mechanism is
described in spoold/shaping.py.
"""

from __future__ import annotations

import argparse
import time

from spoold.cli.common import print_table, when, with_store
from spoold.config import Config
from spoold.errors import NotFound
from spoold.shaping import Rule, factor_now, rules_of
from spoold.store import Store
from spoold.store.shaping import DestinationState


def _rate(per_second: float) -> str:
    if per_second >= 1:
        return f"{per_second:.4g}/s"
    return f"{per_second * 60:.4g}/min"


def _state(state: DestinationState, factor: float, now: float) -> str:
    if now < state.paused_until:
        return f"paused {state.paused_until - now:.0f}s"
    return "ok" if factor >= 1 else f"recovering {factor:.0%}"


def _row(rule: Rule, kind: str, state: DestinationState, slots: int, interval: float,
         now: float) -> tuple:
    factor = factor_now(state, now, interval)
    concurrency, rate, burst = rule.limits(factor)
    if rate is None:
        rate_cell = tokens = "-"
    else:
        rate_cell = _rate(rate) if factor >= 1 else f"{_rate(rate)} of {_rate(rule.rate)}"
        tokens = f"{min(burst, state.tokens + (now - state.filled_at) * rate):.1f}/{burst:g}"
    why = f"{state.cause}: {state.reply}" if state.cause else "-"
    return (rule.name, kind, f"{slots}/{concurrency}", rate_cell, tokens,
            _state(state, factor, now), state.throttles, when(state.throttled_at), why[:70])


@with_store
def cmd_shaping(args: argparse.Namespace, config: Config, store: Store) -> int:
    if args.reset:
        if not store.reset_destination(args.reset.lower()):
            raise NotFound(f"{args.reset} is not throttled")
        print(f"{args.reset}: limits whole again, not paused")
        return 0
    now = time.time()
    states, slots = store.shaping_rows(now)
    known = {state.name: state for state in states}
    rules = rules_of(config)
    rows = []
    for name in sorted(rules.keys() | known.keys()):
        rule = rules.get(name) or Rule(name, config.runner.destination_concurrency)
        kind = "mx" if name.startswith("*.") else "domain" if name in rules else "throttled"
        if kind == "throttled" and name not in slots and \
                factor_now(known[name], now, config.shaping.recovery_interval) >= 1:
            continue  # an unshaped destination that has recovered
        rows.append(_row(rule, kind, known.get(name) or DestinationState(name), slots.get(name, 0),
                         config.shaping.recovery_interval, now))
    if not rows:
        print("no shaping rules, no throttled destination "
              f"(destination_concurrency {config.runner.destination_concurrency} per runner)")
        return 0
    print_table(("destination", "rule", "slots", "rate", "tokens", "state", "throttles",
                 "last throttled", "why"), rows)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shaping", help="per-destination limits, tokens, slots and throttles")
    p.add_argument("--reset", metavar="NAME", help="lift the throttle of one destination")
    p.set_defaults(handler=cmd_shaping)
