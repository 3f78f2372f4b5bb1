"""Traffic shaping's shared state: rate tokens, throttles and connection slots.

The policy lives in spoold/shaping.py; this module keeps its state in the
database, so that every runner sharing it sees the same limits:

- ``destination()`` opens one transaction on one destination_shaping row:
  it locks the row (SELECT ... FOR UPDATE on MariaDB; SQLite's BEGIN
  IMMEDIATE holds the whole database), creates it when missing (no tokens
  counted yet: a full bucket), adds up the live slots of the other runners
  when asked, lets the caller decide, and writes back what it changed and
  this runner's slot count.  One transaction per grant or throttle; a
  runner's competitors for the same destination wait on the row lock.
- ``set_slots``, ``renew_slots``, ``drop_slots``: this runner's rows in
  destination_slot (a count per destination under a lease; rows whose lease
  ran out belong to a runner that died and count for nothing).
- ``throttled_destinations``, ``clear_throttle``, ``reset_destination``:
  the runners' poll, the recovery, the operator's reset.
- ``postpone``: rows the runner claimed but a shaped destination cannot
  take soon go back to the queue, due later, with no attempt counted.

Tokens and slots are written without waiting for the disk
(``transaction(durable=False)``): a power cut costs a few tokens, never a
message.  Times are the runners' wall clocks, which must agree (NTP), as
for the queue's leases.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from spoold.store.base import Backend

_STATE = ("tokens", "filled_at", "factor", "paused_until", "throttles", "throttled_at", "cause",
          "reply", "relay")
_STALE = 60.0  # slot rows whose lease ended this long ago are deleted


@dataclass
class DestinationState:
    """One destination_shaping row, as the caller of ``destination()`` may change it."""

    name: str
    tokens: float = 0.0  # rate tokens left at filled_at (may be negative: a debt)
    filled_at: float = 0.0  # 0: never counted, i.e. a full bucket
    factor: float = 1.0  # fraction of the configured limits in force at paused_until
    paused_until: float = 0.0  # no new connection before this time
    throttles: int = 0
    throttled_at: float | None = None
    cause: str | None = None  # why it was last throttled (a classifier reason, or "421")
    reply: str | None = None  # the reply that throttled it
    relay: str | None = None
    others: int = 0  # live slots of the other runners (when asked for)
    slots: int | None = None  # set by the caller: this runner's slots now

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, column) for column in _STATE)


class ShapingOps(Backend):
    """Rate tokens, throttle state and connection slots per shaping key."""

    @contextmanager
    def destination(self, name: str, owner: str, now: float, lease_until: float,
                    count_slots: bool = False) -> Iterator[DestinationState]:
        """The locked state of one destination, written back when the block ends."""
        with self.transaction(durable=False) as cur:
            state = self._locked_destination(cur, name)
            if count_slots:
                found = self.execute(cur, "SELECT COALESCE(SUM(slots), 0) FROM destination_slot "
                                          "WHERE name = ? AND owner <> ? AND lease_until >= ?",
                                     (name, owner, now)).fetchone()
                state.others = int(found[0])
            before = state.values()
            yield state
            if state.values() != before:
                self.execute(cur, f"UPDATE destination_shaping SET "
                                  f"{', '.join(f'{c} = ?' for c in _STATE)} WHERE name = ?",
                             [*state.values(), name])
            if state.slots is not None:
                self._set_slot(cur, name, owner, state.slots, lease_until)

    def _locked_destination(self, cur: Any, name: str) -> DestinationState:
        select = (f"SELECT {', '.join(_STATE)} FROM destination_shaping WHERE name = ?"
                  f"{self.row_lock}")
        row = self.execute(cur, select, (name,)).fetchone()
        if row is None:
            self.execute(cur, f"{self.insert_ignore} INTO destination_shaping (name, tokens, "
                              "filled_at, factor, paused_until, throttles) VALUES "
                              "(?, 0, 0, 1, 0, 0)", (name,))
            row = self.execute(cur, select, (name,)).fetchone()
        return DestinationState(name, *row)

    def _set_slot(self, cur: Any, name: str, owner: str, slots: int, lease_until: float) -> None:
        if slots <= 0:
            self.execute(cur, "DELETE FROM destination_slot WHERE name = ? AND owner = ?",
                         (name, owner))
            return
        self._upsert(cur,
                     "UPDATE destination_slot SET slots = ?, lease_until = ? "
                     "WHERE name = ? AND owner = ?",
                     "INTO destination_slot (name, owner, slots, lease_until) VALUES (?, ?, ?, ?)",
                     (slots, lease_until, name, owner), (name, owner, slots, lease_until))

    def set_slots(self, owner: str, counts: Mapping[str, int], lease_until: float) -> None:
        """Record how many slots this runner holds now, per destination."""
        with self.transaction(durable=False) as cur:
            for name in sorted(counts):
                self._set_slot(cur, name, owner, counts[name], lease_until)

    def renew_slots(self, owner: str, lease_until: float, now: float) -> None:
        """Extend this runner's slot leases; forget those of runners long dead."""
        with self.transaction(durable=False) as cur:
            self.execute(cur, "UPDATE destination_slot SET lease_until = ? WHERE owner = ?",
                         (lease_until, owner))
            self.execute(cur, "DELETE FROM destination_slot WHERE lease_until < ?",
                         (now - _STALE,))

    def drop_slots(self, owner: str) -> None:
        """This runner holds no slot (it starts, or it stops)."""
        with self.transaction(durable=False) as cur:
            self.execute(cur, "DELETE FROM destination_slot WHERE owner = ?", (owner,))

    def throttled_destinations(self, now: float) -> list[DestinationState]:
        """Destinations paused now or with less than their whole limits."""
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, f"SELECT name, {', '.join(_STATE)} FROM destination_shaping "
                                     "WHERE factor < 1 OR paused_until > ?", (now,)).fetchall()
        return [DestinationState(*row) for row in rows]

    def clear_throttle(self, state: DestinationState) -> bool:
        """Mark a destination whole again, unless a runner throttled it since ``state``."""
        with self.transaction(durable=False) as cur:
            return self.execute(cur, "UPDATE destination_shaping SET factor = 1, paused_until = 0 "
                                     "WHERE name = ? AND factor = ? AND paused_until = ?",
                                (state.name, state.factor, state.paused_until)).rowcount > 0

    def reset_destination(self, name: str) -> bool:
        """The operator lifts a throttle: whole limits, no pause."""
        with self.transaction() as cur:
            return self.execute(cur, "UPDATE destination_shaping SET factor = 1, paused_until = 0 "
                                     "WHERE name = ? AND (factor < 1 OR paused_until > 0)",
                                (name,)).rowcount > 0

    def shaping_rows(self, now: float) -> tuple[list[DestinationState], dict[str, int]]:
        """Every destination's state, and the live slots per destination."""
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, f"SELECT name, {', '.join(_STATE)} FROM destination_shaping "
                                     "ORDER BY name").fetchall()
            slots = self.execute(cur, "SELECT name, SUM(slots) FROM destination_slot WHERE "
                                      "lease_until >= ? GROUP BY name", (now,)).fetchall()
        return [DestinationState(*row) for row in rows], {n: int(s) for n, s in slots}

    def postpone(self, owner: str, rows: Sequence[tuple[int, float]]) -> None:
        """Give claimed rows (id, due) back to the queue, due then; no attempt is counted."""
        with self.transaction() as cur:
            self.executemany(cur, "UPDATE notify SET state = 'queued', not_before = ?, "
                                  "lease_owner = NULL, lease_until = NULL WHERE id = ? AND "
                                  "lease_owner = ? AND state = 'active'",
                             [(due, row_id, owner) for row_id, due in rows])

