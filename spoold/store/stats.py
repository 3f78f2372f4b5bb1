"""Figures for the web UI and /metrics: delivery series, top domains, runners.

Everything here reads the log's rollups (delivery_minute, delivery_domain_day,
delivery_total; see schema.py), which the transaction logging each attempt
keeps exact, so no page scans the delivery log or the queue: the cost is
bounded by the time span shown, not by the size of the tables.  Reads run in
read-only transactions, which on SQLite never hold up the runner's writes.
"""

from __future__ import annotations

from typing import Any

from spoold.store.base import Backend
from spoold.store.schema import (DSN_ROLLUP, DSN_ROLLUP_FILL, MAILOUT_ROLLUP,
                                 MAILOUT_ROLLUP_FILL, ROLLUP_FILL, ROLLUPS)

# Outcomes that are not a delivery: the last of them per domain is its "last error".
_TROUBLE = ("deferred", "bounced", "expired")


class StatsOps(Backend):
    """Read-only figures over the delivery log's rollups and the runner table."""

    def delivery_totals(self) -> dict[str, int]:
        """Attempts by status since the log began."""
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, "SELECT status, n FROM delivery_total").fetchall()
        return {status: int(n) for status, n in rows}

    def dsn_totals(self) -> dict[str, int]:
        """Attempts by the class and subject of their DSN ("5.1", "4.4" ...) since the
        log began."""
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, "SELECT dsn_class, n FROM delivery_dsn_total").fetchall()
        return {dsn_class: int(n) for dsn_class, n in rows}

    def delivery_series(self, since: float, step: int = 3600) -> list[tuple[int, str, int]]:
        """(bucket start, status, attempts) in buckets of ``step`` seconds (a multiple
        of 60, aligned on the epoch) from the one holding ``since`` on."""
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, "SELECT FLOOR(minute / ?) * ?, status, SUM(n) FROM "
                                     "delivery_minute WHERE minute >= ? GROUP BY 1, 2 "
                                     "ORDER BY 1",
                                (step, step, int(since // step * step))).fetchall()
        return [(int(start), status, int(n)) for start, status, n in rows]

    def top_domains(self, since: float, limit: int = 20) -> list[dict[str, Any]]:
        """The destination domains with the most attempts in the UTC days from ``since``
        on, with their attempts by status and their last error."""
        day = int(since // 86400 * 86400)
        with self.transaction(write=False) as cur:
            rows = self.execute(
                cur, "SELECT domain, SUM(n), "
                     "SUM(CASE WHEN status = 'sent' THEN n ELSE 0 END), "
                     "SUM(CASE WHEN status = 'deferred' THEN n ELSE 0 END), "
                     "SUM(CASE WHEN status = 'bounced' THEN n ELSE 0 END), "
                     "SUM(CASE WHEN status = 'expired' THEN n ELSE 0 END) "
                     "FROM delivery_domain_day WHERE day >= ? GROUP BY domain "
                     "ORDER BY 2 DESC, domain LIMIT ?", (day, limit)).fetchall()
            names = ("domain", "attempts", "sent", "deferred", "bounced", "expired")
            domains = [dict(zip(names, (row[0], *map(int, row[1:])))) for row in rows]
            for entry in domains:
                entry["last_error"] = self._last_error(cur, entry["domain"])
        return domains

    def _last_error(self, cur: Any, domain: str) -> dict[str, Any] | None:
        """The newest deferral, bounce or expiry to ``domain`` (index delivery_domain:
        one short descent per status)."""
        latest = None
        for status in _TROUBLE:
            row = self.execute(cur, "SELECT id, status, dsn, reply, at FROM delivery WHERE "
                                    "domain = ? AND status = ? ORDER BY id DESC LIMIT 1",
                               (domain, status)).fetchone()
            if row and (latest is None or row[0] > latest[0]):
                latest = row
        if latest is None:
            return None
        return dict(zip(("id", "status", "dsn", "reply", "at"), latest))

    def runner_rows(self) -> list[dict[str, Any]]:
        """Every column of every runner's heartbeat row, named as in the table."""
        with self.transaction(write=False) as cur:
            cur = self.execute(cur, "SELECT * FROM runner ORDER BY owner")
            names = [column[0] for column in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def rebuild_rollups(self) -> None:
        """Recount the rollups from the delivery log (after filling the log by hand)."""
        with self.transaction() as cur:
            for table in (*ROLLUPS, MAILOUT_ROLLUP, DSN_ROLLUP):
                self.execute(cur, f"DELETE FROM {table}")
            for statement in (*ROLLUP_FILL, MAILOUT_ROLLUP_FILL, DSN_ROLLUP_FILL):
                self.execute(cur, statement)
