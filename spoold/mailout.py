"""The runner's side of mailouts: expansion when due, and messages for the children.

The runner (spoold/runner.py) holds one ``Mailouts`` and calls it at four
points of its loop, so that no cron job is needed and delivery never waits
long:

``tick()``
    at most every ``[mailout] interval`` seconds, and back to back while an
    expansion is under way: one ``Store.mailout_step`` (campaign scenarios
    due become mailouts, due mailouts start, one chunk of at most
    ``expand_chunk`` contacts becomes queue rows; see
    spoold/store/mailouts.py).  Chunks run one per loop turn, between the
    children's results, so a million-contact mailout never holds delivery
    up for more than one chunk (about 0.1 s).  Returns True when rows were
    queued, so the runner claims at once.
``claimed()``
    after a claim: the fields of the claimed mailout rows' contacts, and
    the mailings (sender + template) of their mailouts, in two queries.
``message()`` / ``mailings()``
    when a job is built: each mailout row becomes a Message with no data
    but the contact's fields and unsubscribe token; the job carries each
    mailing once.  The child renders (sender/render.py).

Memory stays flat whatever the size of a mailout: expansion runs in SQL,
and only claimed rows (at most ``claim_batch``) are held here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from sender.protocol import Mailing, Message, Personal, Recipient
from spoold.config import Config
from spoold.log import get_logger
from spoold.store import QueueRow, Store
from spoold.unsubscribe import make_token, secret_for


def mailing(config: Config, row: dict) -> Mailing:
    """A mailout's shared rendering data from its store row (sender, subject, text, html)."""
    return Mailing(sender=row["sender"], subject=row["subject"], text=row["text"],
                   html=row["html"], unsubscribe_url=config.mailout.unsubscribe_url,
                   unsubscribe_mailto=config.mailout.unsubscribe_mailto)


def personal(secret: str, mailout_id: int, contact_id: int, email: str, name: str,
             attributes: dict) -> Personal:
    """One recipient's fields and token (contact id 0: a test send)."""
    return Personal({"email": email, "name": name, "attributes": attributes},
                    make_token(secret, contact_id, mailout_id))


class Mailouts:
    def __init__(self) -> None:
        self.log = get_logger()
        self.next_tick = 0.0  # monotonic
        self.more = False  # an expansion is under way
        self._recipients: dict[int, tuple] = {}  # queue id -> fields, claimed, not yet sent
        self._mailings: dict[int, Mailing] = {}
        self._secret: tuple[str, str] | None = None  # (configured value, secret in use)

    def tick(self, store: Store, config: Config, now: float) -> bool:
        """Do the mailout work that is due (one expansion chunk at most)."""
        if now < self.next_tick:
            return False
        step = store.mailout_step(time.time(), config.mailout.expand_chunk,
                                  config.runner.max_lifetime)
        for mailout_id in step.started:
            self.log.info("mailout_start", mailout=mailout_id)
        for mailout_id in step.expanded:
            self.log.info("mailout_expanded", mailout=mailout_id)
        for mailout_id in step.finished:
            self.log.info("mailout_end", mailout=mailout_id)
        self.more = step.more
        self.next_tick = now if step.more else now + config.mailout.interval
        return step.queued > 0

    def claimed(self, store: Store, config: Config, rows: Sequence[QueueRow]) -> None:
        """Fetch what the children need to render these claimed mailout rows."""
        if not rows:
            return
        if self._secret is None or self._secret[0] != config.mailout.secret:
            self._secret = (config.mailout.secret, secret_for(config, store))
        self._recipients.update(store.mailout_recipients([r.id for r in rows]))
        for mailout_id, row in store.mailout_mailings([r.mailout_id for r in rows]).items():
            self._mailings[mailout_id] = mailing(config, row)

    def message(self, row: QueueRow, mail_from: str) -> Message:
        """The claimed mailout row as a message for the child to render, sent as ``mail_from``."""
        mailout_id, contact_id, email, name, attributes = self._recipients.pop(
            row.id, (row.mailout_id, 0, row.recipient, "", "{}"))
        return Message(mail_from, b"", [Recipient(row.id, row.recipient)],
                       mailing=str(mailout_id),
                       personal=personal(self._secret[1], mailout_id, contact_id, email, name,
                                         json.loads(attributes)))

    def mailings(self, messages: Sequence[Message]) -> dict[str, Mailing]:
        return {m.mailing: self._mailings[int(m.mailing)] for m in messages}

    def forget(self) -> None:
        """Drop what is held for claimed rows (they were given back)."""
        self._recipients.clear()
