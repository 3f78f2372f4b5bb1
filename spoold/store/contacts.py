"""Contacts, lists and templates: what mailouts are made of.

Contacts are keyed by their lower-cased address (``email_key``); the
address itself is stored as spoold.address.parse_address normalised it.
``upsert_contacts`` is the bulk path of ``spoold contacts import``: per
chunk, one SELECT finds who exists, then one batched INSERT and one batched
UPDATE (attributes merged, the file's values win), so re-importing a file
updates and never duplicates.  ``record_unsubscribe`` is what an
unsubscribe link (spoold.unsubscribe) ends in: the contact is marked, its
address suppressed with reason ``unsubscribe``, and the mailout it came
from counts one more unsubscribe, all in one transaction.  Every attribute
name a contact ever had is kept in ``contact_attribute`` so that a template
naming an unknown one is refused when it is saved.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable, Sequence

from spoold.address import domain_of
from spoold.errors import NotFound, SpooldError
from spoold.store.base import Backend, _chunks, _keyset, _marks

_CONTACT_COLUMNS = ("id", "email", "name", "attributes", "created_at", "updated_at",
                    "unsubscribed_at")


@dataclass
class ContactIn:
    """One contact to create or update; ``name`` None keeps the stored name."""

    email: str  # normalised (spoold.address.parse_address)
    name: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class UpsertCounts:
    inserted: int = 0
    updated: int = 0


def _contact(row: Sequence[Any]) -> dict[str, Any]:
    contact = dict(zip(_CONTACT_COLUMNS, row))
    contact["attributes"] = json.loads(contact["attributes"])
    return contact


class ContactOps(Backend):
    """Contacts, lists, templates and unsubscribes."""

    # -- contacts -------------------------------------------------------------

    def upsert_contacts(self, contacts: Sequence[ContactIn], list_name: str | None = None,
                        chunk: int = 2000) -> UpsertCounts:
        """Create or update contacts (by address), adding them to ``list_name`` if given."""
        counts = UpsertCounts()
        unique = {c.email.lower(): c for c in contacts}  # a later row for an address wins
        names = sorted({k for c in unique.values() for k in c.attributes})
        with self.transaction() as cur:
            list_id = self._list_id(cur, list_name, create=True) if list_name else None
            self.executemany(cur, f"{self.insert_ignore} INTO contact_attribute (name) "
                                  "VALUES (?)", [(n,) for n in names])
            for part in _chunks(list(unique.items()), chunk):
                self._upsert_chunk(cur, dict(part), list_id, counts)
        return counts

    def _upsert_chunk(self, cur: Any, part: dict[str, ContactIn], list_id: int | None,
                      counts: UpsertCounts) -> None:
        now = time.time()
        keys = list(part)
        existing = {key: (cid, attrs) for cid, key, attrs in self.execute(
            cur, f"SELECT id, email_key, attributes FROM contact WHERE email_key IN "
                 f"({_marks(keys)})", keys).fetchall()}
        new = [(c.email, key, domain_of(c.email), c.name or "", json.dumps(c.attributes),
                now, now) for key, c in part.items() if key not in existing]
        self.executemany(cur, "INSERT INTO contact (email, email_key, domain, name, attributes, "
                              "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)", new)
        changed = []
        for key, (cid, attrs) in existing.items():
            c = part[key]
            merged = {**json.loads(attrs), **c.attributes}
            changed.append((c.email, c.name, json.dumps(merged), now, cid))
        self.executemany(cur, "UPDATE contact SET email = ?, name = COALESCE(?, name), "
                              "attributes = ?, updated_at = ? WHERE id = ?", changed)
        counts.inserted += len(new)
        counts.updated += len(changed)
        if list_id is not None:
            ids = [r[0] for r in self.execute(cur, f"SELECT id FROM contact WHERE email_key IN "
                                                   f"({_marks(keys)})", keys).fetchall()]
            self.executemany(cur, f"{self.insert_ignore} INTO list_member (list_id, contact_id) "
                                  "VALUES (?, ?)", [(list_id, i) for i in ids])

    def contacts(self, list_name: str | None = None, search: str | None = None,
                 limit: int = 100, after: int | None = None,
                 before: int | None = None) -> list[dict[str, Any]]:
        """Contacts in id order, optionally of one list and/or whose address or name
        contains ``search``: the first ``limit``, or those right after / before an id."""
        joins, clauses, params = "", [], []
        with self.transaction(write=False) as cur:
            if list_name is not None:
                joins = " JOIN list_member lm ON lm.contact_id = c.id"
                clauses.append("lm.list_id = ?")
                params.append(self._list_id(cur, list_name))
            if search:
                # LIKE ignores the case of ASCII letters (SQLite) or by collation (MariaDB);
                # LOWER(name) would double the cost of a search that reads every contact.
                clauses.append("(c.email_key LIKE ? OR c.name LIKE ?)")
                pattern = "%" + search.lower().replace("%", "").replace("_", "") + "%"
                params.extend((pattern, pattern))
            where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
            where, params, order, backwards = _keyset(where, params, after, before, key="c.id")
            rows = self.execute(cur, f"SELECT c.{', c.'.join(_CONTACT_COLUMNS)} FROM contact c"
                                     f"{joins}{where} ORDER BY c.id {order} LIMIT ?",
                                [*params, limit]).fetchall()
        found = [_contact(r) for r in rows]
        return found[::-1] if backwards else found

    def contact_count(self) -> int:
        with self.transaction(write=False) as cur:
            return self.execute(cur, "SELECT COUNT(*) FROM contact").fetchone()[0]

    def contact(self, email: str | None = None, contact_id: int | None = None) -> dict[str, Any]:
        """One contact (by address or id) with its lists; NotFound if there is none."""
        with self.transaction(write=False) as cur:
            contact = self._contact_row(cur, email, contact_id)
            contact["lists"] = [r[0] for r in self.execute(
                cur, "SELECT l.name FROM contact_list l JOIN list_member lm ON "
                     "lm.list_id = l.id WHERE lm.contact_id = ? ORDER BY l.name",
                (contact["id"],)).fetchall()]
        return contact

    def _contact_row(self, cur: Any, email: str | None,
                     contact_id: int | None = None) -> dict[str, Any]:
        if email is not None:
            found = self.execute(cur, f"SELECT {', '.join(_CONTACT_COLUMNS)} FROM contact "
                                      "WHERE email_key = ?", (email.strip().lower(),))
        else:
            found = self.execute(cur, f"SELECT {', '.join(_CONTACT_COLUMNS)} FROM contact "
                                      "WHERE id = ?", (contact_id,))
        row = found.fetchone()
        if row is None:
            raise NotFound(f"no contact {email}" if email is not None
                           else f"no contact with id {contact_id}")
        return _contact(row)

    def update_contact(self, email: str, name: str, attributes: dict[str, str]) -> None:
        """Replace a contact's name and attributes (an attribute left out is removed)."""
        with self.transaction() as cur:
            contact_id = self._contact_row(cur, email)["id"]
            self.executemany(cur, f"{self.insert_ignore} INTO contact_attribute (name) "
                                  "VALUES (?)", [(n,) for n in sorted(attributes)])
            self.execute(cur, "UPDATE contact SET name = ?, attributes = ?, updated_at = ? "
                              "WHERE id = ?",
                         (name, json.dumps(attributes), time.time(), contact_id))

    def contact_ids(self, emails: Iterable[str]) -> dict[str, int]:
        """{address as given: contact id}; NotFound naming every unknown one."""
        wanted = {e: e.strip().lower() for e in emails}
        found: dict[str, int] = {}
        with self.transaction() as cur:
            for chunk in _chunks(sorted(set(wanted.values()))):
                found.update((k, i) for i, k in self.execute(
                    cur, f"SELECT id, email_key FROM contact WHERE email_key IN "
                         f"({_marks(chunk)})", chunk).fetchall())
        missing = [e for e, k in wanted.items() if k not in found]
        if missing:
            raise NotFound(f"no contact {', '.join(missing)}")
        return {e: found[k] for e, k in wanted.items()}

    def delete_contact(self, email: str) -> int:
        """Forget a contact, its memberships and its queued mailout rows (logged deleted).

        Returns how many queue rows went with it.
        """
        with self.transaction() as cur:
            contact_id = self._contact_row(cur, email)["id"]
            for table in ("list_member", "mailout_contact"):
                self.execute(cur, f"DELETE FROM {table} WHERE contact_id = ?", (contact_id,))
            self.execute(cur, "DELETE FROM contact WHERE id = ?", (contact_id,))
            return self._drop_rows(cur, "contact_id = ?", (contact_id,), "deleted",
                                   "contact deleted")

    def _drop_rows(self, cur: Any, where: str, params: Sequence[Any], status: str,
                   reply: str) -> int:
        """Remove the queued and held rows ``where`` selects, logging each as ``status``
        and counting them into the log's rollups."""
        now = time.time()
        where = f"{where} AND state IN ('queued', 'held')"
        self._add_tallies(cur, now, Counter({
            (domain, mailout_id, status): n for domain, mailout_id, n in self.execute(
                cur, f"SELECT domain, mailout_id, COUNT(*) FROM notify WHERE {where} "
                     "GROUP BY domain, mailout_id", params).fetchall()}))
        self.execute(cur, "INSERT INTO delivery (notify_id, message_id, sender, recipient, "
                          "domain, status, code, dsn, reply, relay, delay, attempt, at, "
                          "mailout_id) SELECT id, message_id, sender, recipient, domain, ?, "
                          "NULL, '', ?, 'none', ? - created_at, attempts + 1, ?, mailout_id "
                          f"FROM notify WHERE {where}", (status, reply, now, now, *params))
        return self.execute(cur, f"DELETE FROM notify WHERE {where}", params).rowcount

    # -- unsubscribes ---------------------------------------------------------

    def unsubscribe_contact(self, email: str) -> bool:
        """Mark a contact unsubscribed (operator's doing); False if it already was."""
        with self.transaction() as cur:
            contact = self._contact_row(cur, email)
            return self._unsubscribe(cur, contact["id"], None)

    def record_unsubscribe(self, contact_id: int, mailout_id: int) -> bool:
        """An unsubscribe link was followed: the one store call its endpoint makes.

        Marks the contact unsubscribed, suppresses its address (reason
        ``unsubscribe``) and counts it on the mailout, once: following the
        link again returns False and changes nothing.  NotFound if the
        contact no longer exists; a test send (contact id 0) changes nothing.
        """
        if contact_id == 0:
            return False
        with self.transaction() as cur:
            return self._unsubscribe(cur, contact_id, mailout_id)

    def _unsubscribe(self, cur: Any, contact_id: int, mailout_id: int | None) -> bool:
        row = self.execute(cur, "SELECT email_key, unsubscribed_at FROM contact WHERE id = ?",
                           (contact_id,)).fetchone()
        if row is None:
            raise NotFound(f"no contact with id {contact_id}")
        if row[1] is not None:
            return False
        now = time.time()
        self.execute(cur, "UPDATE contact SET unsubscribed_at = ? WHERE id = ?", (now, contact_id))
        self.execute(cur, f"{self.insert_ignore} INTO suppression (address, reason, dsn, reply, "
                          "created_at) VALUES (?, 'unsubscribe', NULL, ?, ?)",
                     (row[0], "unsubscribed" + (f" from mailout {mailout_id}" if mailout_id
                                                else " by operator"), now))
        if mailout_id is not None:
            self.execute(cur, "UPDATE mailout SET unsubscribed = unsubscribed + 1 WHERE id = ?",
                         (mailout_id,))
        return True

    def attribute_names(self) -> set[str]:
        with self.transaction() as cur:
            return {r[0] for r in self.execute(cur, "SELECT name FROM contact_attribute")}

    # -- lists ----------------------------------------------------------------

    def _list_id(self, cur: Any, name: str, create: bool = False) -> int:
        row = self.execute(cur, "SELECT id FROM contact_list WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return row[0]
        if not create:
            raise NotFound(f"no list {name!r}")
        self.execute(cur, "INSERT INTO contact_list (name, created_at) VALUES (?, ?)",
                     (name, time.time()))
        return self.last_id(cur)

    def list_id(self, name: str) -> int:
        with self.transaction() as cur:
            return self._list_id(cur, name)

    def create_list(self, name: str) -> int:
        if not name.strip():
            raise SpooldError("a list needs a name")
        with self.transaction() as cur:
            if self.execute(cur, "SELECT 1 FROM contact_list WHERE name = ?",
                            (name,)).fetchone():
                raise SpooldError(f"list {name!r} exists already")
            return self._list_id(cur, name, create=True)

    def lists(self) -> list[dict[str, Any]]:
        """Every list with its member count."""
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT l.id, l.name, l.created_at, COUNT(lm.contact_id) "
                                     "FROM contact_list l LEFT JOIN list_member lm ON "
                                     "lm.list_id = l.id GROUP BY l.id, l.name, l.created_at "
                                     "ORDER BY l.name").fetchall()
        return [dict(zip(("id", "name", "created_at", "members"), r)) for r in rows]

    def list_names(self) -> list[str]:
        """Every list's name (without counting members, unlike ``lists``)."""
        with self.transaction(write=False) as cur:
            return [r[0] for r in self.execute(cur, "SELECT name FROM contact_list "
                                                    "ORDER BY name").fetchall()]

    def add_to_list(self, name: str, emails: Sequence[str]) -> int:
        ids = list(self.contact_ids(emails).values())
        with self.transaction() as cur:
            list_id = self._list_id(cur, name, create=True)
            before = self._members(cur, list_id)
            self.executemany(cur, f"{self.insert_ignore} INTO list_member (list_id, contact_id) "
                                  "VALUES (?, ?)", [(list_id, i) for i in ids])
            return self._members(cur, list_id) - before

    def remove_from_list(self, name: str, emails: Sequence[str]) -> int:
        ids = list(self.contact_ids(emails).values())
        with self.transaction() as cur:
            list_id = self._list_id(cur, name)
            return self.execute(cur, f"DELETE FROM list_member WHERE list_id = ? AND "
                                     f"contact_id IN ({_marks(ids)})", [list_id, *ids]).rowcount

    def _members(self, cur: Any, list_id: int) -> int:
        return self.execute(cur, "SELECT COUNT(*) FROM list_member WHERE list_id = ?",
                            (list_id,)).fetchone()[0]

    def delete_list(self, name: str) -> None:
        """Delete a list (its contacts stay); refused while a campaign uses it."""
        with self.transaction() as cur:
            list_id = self._list_id(cur, name)
            if self.execute(cur, "SELECT 1 FROM campaign WHERE list_id = ?",
                            (list_id,)).fetchone():
                raise SpooldError(f"list {name!r} belongs to a campaign")
            self.execute(cur, "DELETE FROM list_member WHERE list_id = ?", (list_id,))
            self.execute(cur, "DELETE FROM contact_list WHERE id = ?", (list_id,))

    # -- templates ------------------------------------------------------------

    def save_template(self, name: str, subject: str, text: str, html: str | None,
                      create: bool) -> int:
        """Insert (``create``) or replace a template's content; check it first (templates.py)."""
        now = time.time()
        with self.transaction() as cur:
            row = self.execute(cur, "SELECT id FROM template WHERE name = ?", (name,)).fetchone()
            if create:
                if row is not None:
                    raise SpooldError(f"template {name!r} exists already (use templates edit)")
                self.execute(cur, "INSERT INTO template (name, subject, text_body, html_body, "
                                  "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (name, subject, text, html, now, now))
                return self.last_id(cur)
            if row is None:
                raise NotFound(f"no template {name!r}")
            self.execute(cur, "UPDATE template SET subject = ?, text_body = ?, html_body = ?, "
                              "updated_at = ? WHERE id = ?", (subject, text, html, now, row[0]))
            return row[0]

    def templates(self) -> list[dict[str, Any]]:
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT id, name, subject, html_body IS NOT NULL, "
                                     "updated_at FROM template ORDER BY name").fetchall()
        return [dict(zip(("id", "name", "subject", "has_html", "updated_at"), r)) for r in rows]

    def template(self, name: str) -> dict[str, Any]:
        with self.transaction() as cur:
            row = self.execute(cur, "SELECT id, name, subject, text_body, html_body, created_at, "
                                    "updated_at FROM template WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no template {name!r}")
        return dict(zip(("id", "name", "subject", "text", "html", "created_at", "updated_at"),
                        row))

    def delete_template(self, name: str) -> None:
        """Refused while a mailout or scenario still uses the template."""
        with self.transaction() as cur:
            row = self.execute(cur, "SELECT id FROM template WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no template {name!r}")
            for table in ("mailout", "scenario"):
                if self.execute(cur, f"SELECT 1 FROM {table} WHERE template_id = ?",
                                (row[0],)).fetchone():
                    raise SpooldError(f"template {name!r} is used by a {table}")
            self.execute(cur, "DELETE FROM template WHERE id = ?", (row[0],))
