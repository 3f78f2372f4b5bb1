"""Mailouts and campaigns: creation, expansion into queue rows, counters, verbs.

A mailout is one send of one template to a selection of contacts (a list,
named contacts, all, or a --where filter).  Its life::

    scheduled --send_at--> expanding --cursor reached the end--> sending --no rows--> done
        |  (test mode: the test addresses are queued at once)  ^
        '--------- pause <-> resume (rows held / released) ----'
    any live one --cancel--> cancelled (its queued rows removed, logged cancelled)
    any live one --expires_at--> expired (its queued rows removed, logged expired)

Expansion (``mailout_step``, called by the runner through spoold/mailout.py)
is one INSERT ... SELECT per chunk of contact ids, written once for SQLite
and MariaDB: the contacts of the selection whose id lies in (cursor,
cursor + chunk], not unsubscribed, not suppressed, become queue rows
(message_id MAILOUT_MESSAGE, priority and expiry of the mailout, not_before
spread by the rate limit).  The chunk's skip counts and the new cursor are
written in the same transaction, and ``notify`` has a unique key on
(mailout_id, contact_id), so an expansion interrupted at any point (kill -9)
resumes where its last commit left it and never queues a contact twice.
Nothing is loaded into Python: the rows go from table to table.

Campaigns have a list and a timeline (starts_at..ends_at); each scenario
(template, at) becomes a mailout when ``at`` comes while the campaign is
still running, or is marked missed when the campaign ended first.
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Sequence

from spoold.address import domain_of
from spoold.errors import NotFound, SpooldError
from spoold.store.base import MAILOUT_MESSAGE, PRIORITIES, _chunks, _keyset, _marks
from spoold.store.contacts import ContactOps
from spoold.store.filters import compile_filter

LIVE = ("scheduled", "expanding", "sending")
ACTIVE = (*LIVE, "paused")
ENDED = ("done", "cancelled", "expired")
# Outcomes that end a recipient's part in a mailout (the log's statuses).
DONE = ("sent", "bounced", "expired", "cancelled", "deleted")
SELECTIONS = ("list", "contacts", "all", "where")

_MAILOUT_COLUMNS = ("id", "template_id", "sender", "selection", "list_id", "where_filter",
                    "status", "send_at", "expires_at", "rate", "priority", "test_to",
                    "test_contact_id", "campaign_id", "expand_cursor", "expand_until",
                    "expanded", "skipped_unsubscribed", "skipped_suppressed", "unsubscribed",
                    "created_at", "started_at", "finished_at")


@dataclass
class MailoutSpec:
    """What ``create_mailout`` needs; times are epoch seconds."""

    template: str
    sender: str
    selection: str  # list | contacts | all | where
    send_at: float
    expires_at: float
    list_name: str | None = None
    contacts: Sequence[str] = ()
    where: str | None = None
    rate: int | None = None  # most rows per hour; None: as fast as delivery goes
    priority: int = PRIORITIES["bulk"]
    test_to: Sequence[str] = ()  # test mode: only these addresses receive it
    test_contact: str | None = None  # whose fields a test send shows (default: the first)
    campaign_id: int | None = None


@dataclass
class MailoutStep:
    """What one ``mailout_step`` did: rows queued, and whether expansion work is left."""

    queued: int = 0
    more: bool = False
    started: list[int] = field(default_factory=list)
    expanded: list[int] = field(default_factory=list)  # expansion ended in this step
    finished: list[int] = field(default_factory=list)


@dataclass
class _Selection:
    source: str  # FROM clause; the contact is alias c
    key: str  # the contact id column the chunks are cut on
    where: str
    params: list[Any]


def _mailout(row: Sequence[Any]) -> dict[str, Any]:
    mailout = dict(zip(_MAILOUT_COLUMNS, row))
    mailout["test_to"] = json.loads(mailout["test_to"]) if mailout["test_to"] else []
    return mailout


class MailoutOps(ContactOps):
    """Mailouts, their expansion and counters; campaigns and scenarios."""

    # -- creating -------------------------------------------------------------

    def create_mailout(self, spec: MailoutSpec) -> int:
        """Check and store a mailout (status scheduled); returns its id."""
        if spec.selection not in SELECTIONS:
            raise SpooldError(f"selection {spec.selection!r}: use one of {', '.join(SELECTIONS)}")
        if spec.expires_at <= spec.send_at:
            raise SpooldError("the mailout would expire before it is sent (expires-at <= "
                              "send-at)")
        if spec.rate is not None and spec.rate < 1:
            raise SpooldError("rate: at least 1 per hour")
        if spec.where is not None:
            compile_filter(spec.where, self.json_value)  # FilterError names the bad token
        contact_ids = list(self.contact_ids(spec.contacts).values()) if spec.contacts else []
        now = time.time()
        with self.transaction() as cur:
            template_id = self._template_id(cur, spec.template)
            list_id = self._list_id(cur, spec.list_name) if spec.selection == "list" else None
            self.execute(cur, "INSERT INTO mailout (template_id, sender, selection, list_id, "
                              "where_filter, status, send_at, expires_at, rate, priority, "
                              "test_to, campaign_id, created_at) "
                              "VALUES (?, ?, ?, ?, ?, 'scheduled', ?, ?, ?, ?, ?, ?, ?)",
                         (template_id, spec.sender, spec.selection, list_id, spec.where,
                          spec.send_at, spec.expires_at, spec.rate, spec.priority,
                          json.dumps(list(spec.test_to)) if spec.test_to else None,
                          spec.campaign_id, now))
            mailout_id = self.last_id(cur)
            self.executemany(cur, "INSERT INTO mailout_contact (mailout_id, contact_id) "
                                  "VALUES (?, ?)", [(mailout_id, c) for c in set(contact_ids)])
            if spec.test_to:
                sample = (self._contact_row(cur, spec.test_contact)["id"] if spec.test_contact
                          else self._first_contact(cur, mailout_id))
                self.execute(cur, "UPDATE mailout SET test_contact_id = ? WHERE id = ?",
                             (sample, mailout_id))
        return mailout_id

    def _template_id(self, cur: Any, name: str) -> int:
        row = self.execute(cur, "SELECT id FROM template WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no template {name!r}")
        return row[0]

    def _selection(self, cur: Any, mailout_id: int) -> _Selection:
        kind, list_id, where = self.execute(cur, "SELECT selection, list_id, where_filter FROM "
                                                 "mailout WHERE id = ?", (mailout_id,)).fetchone()
        if kind == "list":
            return _Selection("list_member sel JOIN contact c ON c.id = sel.contact_id",
                              "sel.contact_id", "sel.list_id = ?", [list_id])
        if kind == "contacts":
            return _Selection("mailout_contact sel JOIN contact c ON c.id = sel.contact_id",
                              "sel.contact_id", "sel.mailout_id = ?", [mailout_id])
        if kind == "where":
            sql, params = compile_filter(where, self.json_value)
            return _Selection("contact c", "c.id", sql, params)
        return _Selection("contact c", "c.id", "1 = 1", [])

    def _first_contact(self, cur: Any, mailout_id: int) -> int | None:
        sel = self._selection(cur, mailout_id)
        return self.execute(cur, f"SELECT MIN({sel.key}) FROM {sel.source} WHERE {sel.where}",
                            sel.params).fetchone()[0]

    # -- reading --------------------------------------------------------------

    def mailouts(self, limit: int = 100, before: int | None = None,
                 after: int | None = None) -> list[dict[str, Any]]:
        """Mailouts newest first, a page at a time (keyset: ``before`` / ``after`` an
        id), with their template's name and progress (``_with_progress``)."""
        where, params, order, backwards = _keyset("", [], after, before, newest_first=True,
                                                  key="m.id")
        found = self._mailout_list(where, params, f"m.id {order}", limit)
        return found[::-1] if backwards else found

    def active_mailouts(self, ended_since: float, limit: int = 20) -> list[dict[str, Any]]:
        """Mailouts under way or paused, and those that ended since ``ended_since``,
        newest first, with their progress: the dashboard's list."""
        return self._mailout_list(f" WHERE m.status IN ({_marks(ACTIVE)}) OR m.finished_at >= ?",
                                  [*ACTIVE, ended_since], "m.id DESC", limit)

    def _mailout_list(self, where: str, params: list[Any], order: str,
                      limit: int) -> list[dict[str, Any]]:
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, f"SELECT m.{', m.'.join(_MAILOUT_COLUMNS)}, t.name "
                                     "FROM mailout m JOIN template t ON t.id = m.template_id"
                                     f"{where} ORDER BY {order} LIMIT ?",
                                [*params, limit]).fetchall()
            out = []
            for row in rows:
                mailout = _mailout(row[:-1])
                mailout["template"] = row[-1]
                out.append(mailout)
            return self._with_progress(cur, out)

    def _with_progress(self, cur: Any, mailouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add each mailout's ``outcomes`` (attempts by status, from the rollup),
        ``total`` (recipients so far: queued by expansion or skipped) and ``done``
        (those with a final outcome, skipped ones included)."""
        outcomes: dict[int, dict[str, int]] = {}
        for chunk in _chunks([m["id"] for m in mailouts]):
            for mailout_id, status, n in self.execute(
                    cur, "SELECT mailout_id, status, n FROM delivery_by_mailout WHERE "
                         f"mailout_id IN ({_marks(chunk)})", chunk).fetchall():
                outcomes.setdefault(mailout_id, {})[status] = int(n)
        for mailout in mailouts:
            skipped = mailout["skipped_unsubscribed"] + mailout["skipped_suppressed"]
            mailout["outcomes"] = outcomes.get(mailout["id"], {})
            mailout["total"] = mailout["expanded"] + skipped
            # A bounce report for a message already sent counts twice: done <= total.
            mailout["done"] = min(mailout["total"], skipped + sum(
                mailout["outcomes"].get(status, 0) for status in DONE))
        return mailouts

    def mailout(self, mailout_id: int) -> dict[str, Any]:
        """One mailout with its template and list names and its counters."""
        with self.transaction() as cur:
            mailout = self._mailout_row(cur, mailout_id)
            mailout["template"] = self.execute(cur, "SELECT name FROM template WHERE id = ?",
                                               (mailout["template_id"],)).fetchone()[0]
            row = self.execute(cur, "SELECT name FROM contact_list WHERE id = ?",
                               (mailout["list_id"],)).fetchone()
            mailout["list"] = row[0] if row else None
            mailout["counters"] = self._counters(cur, mailout)
        return mailout

    def _mailout_row(self, cur: Any, mailout_id: int) -> dict[str, Any]:
        row = self.execute(cur, f"SELECT {', '.join(_MAILOUT_COLUMNS)} FROM mailout "
                                "WHERE id = ?", (mailout_id,)).fetchone()
        if row is None:
            raise NotFound(f"no mailout {mailout_id}")
        return _mailout(row)

    def mailout_counters(self, mailout_id: int) -> dict[str, int]:
        with self.transaction() as cur:
            return self._counters(cur, self._mailout_row(cur, mailout_id))

    def _counters(self, cur: Any, mailout: dict[str, Any]) -> dict[str, int]:
        """Where every recipient of the mailout is, from the queue and the log.

        total = queued by expansion + skipped; queued counts rows waiting
        (deferred ones included, also shown apart), sending rows in a
        child's hands, held rows of a paused mailout; sent, bounced,
        expired, cancelled and deleted are final outcomes from the log (its
        rollup delivery_by_mailout).
        """
        counts = dict.fromkeys(("total", "queued", "sending", "held", "deferred", "sent",
                                "bounced", "expired", "cancelled", "deleted",
                                "skipped_unsubscribed", "skipped_suppressed",
                                "unsubscribed"), 0)
        # Grouped in the order of index notify_mailout_state, which covers it.
        for state, attempts, n in self.execute(
                cur, "SELECT state, attempts, COUNT(*) FROM notify WHERE mailout_id = ? "
                     "GROUP BY state, attempts", (mailout["id"],)).fetchall():
            counts[{"active": "sending"}.get(state, state)] += n
            if state == "queued" and attempts:
                counts["deferred"] += n
        for status, n in self.execute(cur, "SELECT status, n FROM delivery_by_mailout WHERE "
                                           "mailout_id = ? AND status <> 'deferred'",
                                      (mailout["id"],)).fetchall():
            counts[status] = counts.get(status, 0) + int(n)
        for key in ("skipped_unsubscribed", "skipped_suppressed", "unsubscribed"):
            counts[key] = mailout[key]
        counts["total"] = (mailout["expanded"] + mailout["skipped_unsubscribed"]
                           + mailout["skipped_suppressed"])
        return counts

    # -- operator verbs -------------------------------------------------------

    def pause_mailout(self, mailout_id: int) -> int:
        """Stop expanding and hold the mailout's queued rows; returns how many."""
        with self.transaction() as cur:
            self._require(cur, mailout_id, LIVE, "pause")
            self.execute(cur, "UPDATE mailout SET status = 'paused' WHERE id = ?", (mailout_id,))
            return self._hold(cur, mailout_id)

    def _hold(self, cur: Any, mailout_id: int) -> int:
        return self.execute(cur, "UPDATE notify SET state = 'held' WHERE mailout_id = ? AND "
                                 "state = 'queued'", (mailout_id,)).rowcount

    def resume_mailout(self, mailout_id: int) -> int:
        """Release the paused mailout's held rows and carry on; returns how many."""
        with self.transaction() as cur:
            mailout = self._require(cur, mailout_id, ("paused",), "resume")
            if mailout["started_at"] is None:
                status = "scheduled"
            elif mailout["test_to"] or mailout["expand_cursor"] >= mailout["expand_until"]:
                status = "sending"
            else:
                status = "expanding"
            self.execute(cur, "UPDATE mailout SET status = ? WHERE id = ?", (status, mailout_id))
            return self.execute(cur, "UPDATE notify SET state = 'queued' WHERE mailout_id = ? "
                                     "AND state = 'held'", (mailout_id,)).rowcount

    def cancel_mailout(self, mailout_id: int) -> int:
        """Stop the mailout for good: its queued and held rows go, each logged cancelled.

        Rows a child is sending finish; should one be deferred, the runner
        removes it the same way (``mailout_step``).  Returns the rows removed.
        """
        with self.transaction() as cur:
            self._require(cur, mailout_id, (*LIVE, "paused"), "cancel")
            self.execute(cur, "UPDATE mailout SET status = 'cancelled' WHERE id = ?",
                         (mailout_id,))
            return self._drop_rows(cur, "mailout_id = ?", (mailout_id,), "cancelled",
                                   "mailout cancelled")

    def _require(self, cur: Any, mailout_id: int, states: Sequence[str],
                 verb: str) -> dict[str, Any]:
        mailout = self._mailout_row(cur, mailout_id)
        if mailout["status"] not in states:
            raise SpooldError(f"mailout {mailout_id} is {mailout['status']}: cannot {verb} it")
        return mailout

    # -- the runner's side ----------------------------------------------------

    def mailout_step(self, now: float, chunk: int, lifetime: float) -> MailoutStep:
        """One slice of mailout work: fire scenarios, start due mailouts, expand one chunk.

        Also keeps paused mailouts' rows held, removes a cancelled or
        expired mailout's stragglers (rows deferred after the verb) and
        marks mailouts with nothing left done.  ``lifetime`` bounds the
        expiry of mailouts made from scenarios.
        """
        step = MailoutStep()
        with self.transaction() as cur:
            self._fire_scenarios(cur, now, lifetime)
            step.started = self._start_due(cur, now, step)
            step.finished = self._settle(cur, now)
        with self.transaction() as cur:
            row = self.execute(cur, "SELECT id FROM mailout WHERE status = 'expanding' "
                                    f"ORDER BY priority, id LIMIT 1{self.claim_lock}").fetchone()
            if row is not None:
                step.queued += self._expand_chunk(cur, self._mailout_row(cur, row[0]), chunk,
                                                  now, step)
            step.more = self.execute(cur, "SELECT 1 FROM mailout WHERE status = 'expanding' "
                                          "LIMIT 1").fetchone() is not None
        return step

    def _start_due(self, cur: Any, now: float, step: MailoutStep) -> list[int]:
        started = []
        due = self.execute(cur, "SELECT id FROM mailout WHERE status = 'scheduled' AND "
                                f"send_at <= ?{self.claim_lock}", (now,)).fetchall()
        for (mailout_id,) in due:
            mailout = self._mailout_row(cur, mailout_id)
            if mailout["expires_at"] <= now:
                self.execute(cur, "UPDATE mailout SET status = 'expired', finished_at = ? "
                                  "WHERE id = ?", (now, mailout_id))
                continue
            until = self.execute(cur, "SELECT COALESCE(MAX(id), 0) FROM contact").fetchone()[0]
            self.execute(cur, "UPDATE mailout SET status = 'expanding', started_at = ?, "
                              "expand_until = ? WHERE id = ?", (now, until, mailout_id))
            if mailout["test_to"]:
                step.queued += self._queue_test(cur, mailout, now)
                step.expanded.append(mailout_id)
            started.append(mailout_id)
        return started

    def _queue_test(self, cur: Any, mailout: dict[str, Any], now: float) -> int:
        """Test mode: one row per test address (no contact), the sample contact's fields."""
        addresses = mailout["test_to"]
        suppressed = self._suppressed(cur, addresses)
        rows = [(MAILOUT_MESSAGE, mailout["id"], _envelope(mailout), a, domain_of(a),
                 mailout["priority"], now, now, mailout["expires_at"])
                for a in addresses if a not in suppressed]
        self.executemany(cur, "INSERT INTO notify (message_id, mailout_id, sender, recipient, "
                              "domain, priority, state, attempts, created_at, not_before, "
                              "expires_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)", rows)
        self.execute(cur, "UPDATE mailout SET status = 'sending', expanded = ?, "
                          "skipped_suppressed = ? WHERE id = ?",
                     (len(rows), len(suppressed), mailout["id"]))
        return len(rows)

    def _expand_chunk(self, cur: Any, mailout: dict[str, Any], chunk: int, now: float,
                      step: MailoutStep) -> int:
        """Queue the selected contacts with ids in (cursor, cursor + chunk]; returns how many."""
        low = mailout["expand_cursor"]
        high = min(low + chunk, mailout["expand_until"])
        sel = self._selection(cur, mailout["id"])
        where = f"{sel.where} AND {sel.key} > ? AND {sel.key} <= ?"
        params = [*sel.params, low, high]
        unsubscribed, suppressed = self.execute(
            cur, "SELECT COALESCE(SUM(CASE WHEN c.unsubscribed_at IS NOT NULL THEN 1 ELSE 0 END), "
                 "0), COALESCE(SUM(CASE WHEN c.unsubscribed_at IS NULL AND s.address IS NOT NULL "
                 f"THEN 1 ELSE 0 END), 0) FROM {sel.source} LEFT JOIN suppression s ON "
                 f"s.address = c.email_key WHERE {where}", params).fetchone()
        if mailout["rate"]:
            # Row k of the mailout (from 0) is due k hours/rate after the start.
            not_before = "? + (ROW_NUMBER() OVER (ORDER BY c.id) + ?) * ?"
            spread = [mailout["started_at"], mailout["expanded"] - 1, 3600.0 / mailout["rate"]]
        else:
            not_before, spread = "?", [now]
        queued = self.execute(
            cur, f"{self.insert_ignore} INTO notify (message_id, mailout_id, contact_id, sender, "
                 "recipient, domain, priority, state, attempts, created_at, not_before, "
                 f"expires_at) SELECT {MAILOUT_MESSAGE}, ?, c.id, ?, c.email, c.domain, ?, "
                 f"'queued', 0, ?, {not_before}, ? FROM {sel.source} WHERE {where} AND "
                 "c.unsubscribed_at IS NULL AND NOT EXISTS (SELECT 1 FROM suppression s "
                 "WHERE s.address = c.email_key)",
            [mailout["id"], _envelope(mailout), mailout["priority"], now, *spread,
             mailout["expires_at"], *params]).rowcount
        done = high >= mailout["expand_until"]
        if done:
            step.expanded.append(mailout["id"])
        self.execute(cur, "UPDATE mailout SET expand_cursor = ?, expanded = expanded + ?, "
                          "skipped_unsubscribed = skipped_unsubscribed + ?, "
                          "skipped_suppressed = skipped_suppressed + ?, status = ? WHERE id = ?",
                     (high, queued, unsubscribed, suppressed, "sending" if done else "expanding",
                      mailout["id"]))
        return queued

    def _settle(self, cur: Any, now: float) -> list[int]:
        """Hold, drop or finish the rows of mailouts that changed state; returns those done."""
        for (mailout_id,) in self.execute(cur, "SELECT id FROM mailout WHERE status = "
                                               "'paused'").fetchall():
            self._hold(cur, mailout_id)
        for (mailout_id,) in self.execute(
                cur, f"SELECT id FROM mailout WHERE status IN ({_marks(LIVE)}, 'paused') AND "
                     "expires_at <= ?", (*LIVE, now)).fetchall():
            self.execute(cur, "UPDATE mailout SET status = 'expired' WHERE id = ?", (mailout_id,))
        for (mailout_id, status) in self.execute(
                cur, "SELECT id, status FROM mailout WHERE status IN ('cancelled', 'expired') "
                     "AND finished_at IS NULL").fetchall():
            self._drop_rows(cur, "mailout_id = ?", (mailout_id,), status,
                            f"mailout {'cancelled' if status == 'cancelled' else 'expired'}")
        finished = []
        for (mailout_id, status) in self.execute(
                cur, "SELECT id, status FROM mailout WHERE status IN ('sending', 'cancelled', "
                     "'expired') AND finished_at IS NULL").fetchall():
            if self.execute(cur, "SELECT 1 FROM notify WHERE mailout_id = ? LIMIT 1",
                            (mailout_id,)).fetchone() is None:
                self.execute(cur, "UPDATE mailout SET status = ?, finished_at = ? WHERE id = ?",
                             ("done" if status == "sending" else status, now, mailout_id))
                finished.append(mailout_id)
        return finished

    def mailout_recipients(self, row_ids: Sequence[int]) -> dict[int, tuple]:
        """{queue id: (mailout id, contact id or 0, email, name, attributes JSON)}.

        A test row (no contact) shows the mailout's sample contact; a row
        whose contact was deleted meanwhile shows only its address.
        """
        out: dict[int, tuple] = {}
        with self.transaction() as cur:
            for chunk in _chunks(list(row_ids)):
                for nid, mid, cid, email, name, attrs, recipient in self.execute(
                        cur, "SELECT n.id, n.mailout_id, n.contact_id, c.email, c.name, "
                             "c.attributes, n.recipient FROM notify n JOIN mailout m ON "
                             "m.id = n.mailout_id LEFT JOIN contact c ON c.id = "
                             f"COALESCE(n.contact_id, m.test_contact_id) WHERE n.id IN "
                             f"({_marks(chunk)})", chunk).fetchall():
                    out[nid] = (mid, cid or 0, email or recipient, name or "", attrs or "{}")
        return out

    def mailout_mailings(self, mailout_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """{mailout id: its sender and its template's subject, text and html}."""
        ids = sorted(set(mailout_ids))
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT m.id, m.sender, t.subject, t.text_body, t.html_body "
                                     "FROM mailout m JOIN template t ON t.id = m.template_id "
                                     f"WHERE m.id IN ({_marks(ids)})", ids).fetchall()
        return {r[0]: dict(zip(("sender", "subject", "text", "html"), r[1:])) for r in rows}

    # -- campaigns ------------------------------------------------------------

    def create_campaign(self, name: str, list_name: str, sender: str, starts_at: float,
                        ends_at: float) -> int:
        if ends_at <= starts_at:
            raise SpooldError(f"campaign {name!r}: it must end after it starts")
        with self.transaction() as cur:
            if self.execute(cur, "SELECT 1 FROM campaign WHERE name = ?", (name,)).fetchone():
                raise SpooldError(f"campaign {name!r} exists already")
            list_id = self._list_id(cur, list_name)
            self.execute(cur, "INSERT INTO campaign (name, list_id, sender, starts_at, ends_at, "
                              "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                         (name, list_id, sender, starts_at, ends_at, time.time()))
            return self.last_id(cur)

    def add_scenario(self, campaign: str, template: str, at: float) -> int:
        """A scenario of ``campaign``; refused outside the campaign's start..end."""
        with self.transaction() as cur:
            row = self.execute(cur, "SELECT id, starts_at, ends_at FROM campaign WHERE name = ?",
                               (campaign,)).fetchone()
            if row is None:
                raise NotFound(f"no campaign {campaign!r}")
            campaign_id, starts_at, ends_at = row
            if not starts_at <= at <= ends_at:
                raise SpooldError(f"scenario time is outside campaign {campaign!r}'s timeline "
                                  f"({_iso(starts_at)} .. {_iso(ends_at)}): {_iso(at)}")
            template_id = self._template_id(cur, template)
            self.execute(cur, "INSERT INTO scenario (campaign_id, template_id, at, status) "
                              "VALUES (?, ?, ?, 'scheduled')", (campaign_id, template_id, at))
            return self.last_id(cur)

    def campaigns(self) -> list[dict[str, Any]]:
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT c.id, c.name, l.name, c.sender, c.starts_at, "
                                     "c.ends_at, (SELECT COUNT(*) FROM scenario s WHERE "
                                     "s.campaign_id = c.id) FROM campaign c JOIN contact_list l "
                                     "ON l.id = c.list_id ORDER BY c.starts_at, c.id").fetchall()
        return [dict(zip(("id", "name", "list", "sender", "starts_at", "ends_at", "scenarios"),
                         r)) for r in rows]

    def campaign(self, name: str) -> dict[str, Any]:
        """One campaign with its scenarios (template, at, status, mailout id)."""
        campaign = next((c for c in self.campaigns() if c["name"] == name), None)
        if campaign is None:
            raise NotFound(f"no campaign {name!r}")
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT s.id, t.name, s.at, s.status, s.mailout_id FROM "
                                     "scenario s JOIN template t ON t.id = s.template_id WHERE "
                                     "s.campaign_id = ? ORDER BY s.at, s.id",
                                (campaign["id"],)).fetchall()
        campaign["scenario_list"] = [dict(zip(("id", "template", "at", "status", "mailout_id"),
                                              r)) for r in rows]
        return campaign

    def _fire_scenarios(self, cur: Any, now: float, lifetime: float) -> None:
        due = self.execute(cur, "SELECT s.id, s.template_id, s.at, c.id, c.list_id, c.sender, "
                                "c.ends_at FROM scenario s JOIN campaign c ON c.id = "
                                "s.campaign_id WHERE s.status = 'scheduled' AND s.at <= ?"
                                f"{self.claim_lock}", (now,)).fetchall()
        for scenario_id, template_id, at, campaign_id, list_id, sender, ends_at in due:
            if now > ends_at:
                self.execute(cur, "UPDATE scenario SET status = 'missed' WHERE id = ?",
                             (scenario_id,))
                continue
            self.execute(cur, "INSERT INTO mailout (template_id, sender, selection, list_id, "
                              "status, send_at, expires_at, priority, campaign_id, created_at) "
                              "VALUES (?, ?, 'list', ?, 'scheduled', ?, ?, ?, ?, ?)",
                         (template_id, sender, list_id, at, at + lifetime, PRIORITIES["bulk"],
                          campaign_id, now))
            self.execute(cur, "UPDATE scenario SET status = 'fired', mailout_id = ? WHERE id = ?",
                         (self.last_id(cur), scenario_id))


def _envelope(mailout: dict[str, Any]) -> str:
    """The envelope sender: the address of the mailout's From."""
    return email.utils.parseaddr(mailout["sender"])[1]


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
