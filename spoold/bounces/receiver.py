"""The bounce receiver: an SMTP listener that turns bounces into verdicts.

NAME
    spoold bounce receiver - take DSNs and complaints for the bounce domain

DESCRIPTION
    An aiosmtpd server, run by ``spoold run`` as a supervised child process
    (spoold/listeners.py) when ``[bounces] listen_port`` is set.  Point the
    MX of the bounce domain at it.  It accepts RCPT only for LOCAL@DOMAIN
    and LOCAL+anything@DOMAIN of ``[bounces]``; any other recipient is
    refused at RCPT (550 5.7.1), so it relays nothing.

    Each message is read by spoold.bounces.report.  The queue row it is about
    comes from the VERP address it was sent to (or, for a complaint, the
    Return-Path of the enclosed original); without a valid VERP address, from
    the most recent delivery that was sent to the reported recipient.  Mail
    spoold never sent changes nothing.  For that row it records, in one
    transaction, a delivery row -- ``bounced`` with the report's status,
    diagnostic and remote MTA, or ``complaint`` for a feedback report -- and
    the verdict's consequence (suppression, soft count, destination flag:
    spoold/store/bounces.py).  Delayed-delivery warnings, delivery reports and
    auto-replies are logged only.

DIAGNOSTICS
    Events: bounce (id, to, status, dsn, kind, cause, format), bounce_unmatched,
    bounce_unreadable (a message no reading fits: accepted and dropped, with
    the reason), database_unavailable.  A database outage answers 451 4.3.0,
    so the sender keeps the report and retries: nothing is lost.

CONFIGURATION PARAMETERS
    [bounces] domain, local_part (bounces), secret, listen_address
    (127.0.0.1), listen_port (0: off), max_size (10 MiB), soft_limit (5),
    soft_span (3 d); [database] url.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from spoold.bounces.classify import NONE
from spoold.bounces.report import Bounce, Report, parse_report
from spoold.bounces.verp import verp_id
from spoold.config import Config
from spoold.errors import ReportError, StoreError
from spoold.log import get_logger
from spoold.store import Attempt, QueueRow, Store, store_for


class BounceHandler:
    """aiosmtpd handler; the store lives in one worker thread of its own."""

    def __init__(self, config: Config):
        self.config = config
        self.settings = config.bounces
        self.log = get_logger(listener="bounces")
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bounce-store")
        self.store: Store | None = None

    # -- SMTP ---------------------------------------------------------------------

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        local, _, domain = address.rpartition("@")
        if domain.lower() != self.settings.domain.lower():
            return f"550 5.7.1 <{address}>: relay access denied"
        mine = self.settings.local_part.lower()
        if local.lower() != mine and not local.lower().startswith(mine + "+"):
            return f"550 5.1.1 <{address}>: no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = bytes(envelope.original_content or envelope.content or b"")
        loop = asyncio.get_running_loop()
        try:
            said = await loop.run_in_executor(self.worker, self.take, envelope.rcpt_tos, data)
        except StoreError as exc:
            self.log.error("database_unavailable", error=str(exc))
            return "451 4.3.0 Database unavailable, try again later"
        return f"250 2.0.0 Ok: {said}"

    # -- the report ---------------------------------------------------------------

    def take(self, rcpt_tos: list[str], data: bytes) -> str:
        """Read one report and record what it says; a short summary for the reply."""
        try:
            report = parse_report(data)
        except ReportError as exc:
            self.log.warning("bounce_unreadable", error=str(exc), size=len(data))
            return "unreadable report dropped"
        queue_id = self._queue_id([*rcpt_tos, report.return_path])
        store = self._store()
        try:
            recorded = [self._record(store, report, bounce, row)
                        for bounce, row in self._rows(store, report, queue_id)]
        except StoreError:
            store.close()
            self.store = None
            raise
        return f"{len(recorded)} recorded" if recorded else "nothing to record"

    def _queue_id(self, addresses: list[str]) -> int | None:
        settings = self.settings
        for address in addresses:
            if address:
                found = verp_id(address, settings.secret, settings.domain, settings.local_part)
                if found is not None:
                    return found
        return None

    def _rows(self, store: Store, report: Report,
              queue_id: int | None) -> list[tuple[Bounce, QueueRow]]:
        """(bounce, queue row) pairs: the row a VERP address names, else by recipient."""
        failures = [b for b in report.bounces if b.verdict.kind != NONE and b.action != "delayed"]
        for bounce in report.bounces:
            if bounce not in failures:
                self.log.info("report_ignored", to=bounce.recipient, action=bounce.action,
                              format=report.format)
        if queue_id is not None:
            row = store.delivered_row(notify_id=queue_id)
            if row is None or not failures:
                return self._unmatched(failures[:1], queue_id)
            named = [b for b in failures if b.recipient.lower() == row.recipient.lower()]
            return [((named or failures)[0], row)]
        pairs = []
        for bounce in failures:
            row = store.delivered_row(recipient=bounce.recipient) if bounce.recipient else None
            if row is None:
                self._unmatched([bounce], None)
            else:
                pairs.append((bounce, row))
        return pairs

    def _unmatched(self, bounces: list[Bounce], queue_id: int | None) -> list[Any]:
        for bounce in bounces:
            self.log.warning("bounce_unmatched", id=queue_id, to=bounce.recipient,
                             dsn=bounce.status, note="no delivery of ours to match")
        return []

    def _record(self, store: Store, report: Report, bounce: Bounce, row: QueueRow) -> int:
        status = "complaint" if bounce.action == "complaint" else "bounced"
        verdict = bounce.verdict
        reply = bounce.diagnostic or f"{report.format} report: {bounce.feedback_type or status}"
        relay = bounce.remote_mta or report.reporting_mta or f"{report.format} report"
        store.record_report(Attempt(row, status, bounce.code, bounce.status or None, reply,
                                    relay[:300], suppress=verdict.suppresses, kind=verdict.kind,
                                    cause=verdict.reason))
        self.log.info("bounce", id=row.id, to=row.recipient, status=status, dsn=bounce.status,
                      kind=verdict.kind, cause=verdict.reason, format=report.format,
                      reply=reply[:200])
        return row.id

    def _store(self) -> Store:
        if self.store is None:
            self.store = store_for(self.config)
        return self.store


def listener(config: Config) -> tuple[BounceHandler, dict[str, Any], str, int]:
    """The handler, SMTP options, address and port of the bounce receiver."""
    settings = config.bounces
    return (BounceHandler(config), {"data_size_limit": settings.max_size},
            settings.listen_address, settings.listen_port)
