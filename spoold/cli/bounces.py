"""Commands about bounces and the SMTP listeners.

    spoold bounces parse FILE...      how spoold reads bounce/complaint messages
    spoold bounces flags [--clear D]  destinations that refused us on policy
    spoold suppression explain ADDR   which reply or report suppressed an address
    spoold submission hash-password   a HASH for [submission] users
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spoold import passwords
from spoold.bounces.report import parse_report
from spoold.cli.common import print_table, when, with_store
from spoold.config import Config
from spoold.errors import ConfigError, MessageError, NotFound, ReportError
from spoold.store import Store


def cmd_parse(args: argparse.Namespace, config: Config) -> int:
    rows, failed = [], 0
    for name in args.files:
        try:
            report = parse_report(Path(name).read_bytes())
        except OSError as exc:
            raise MessageError(f"{name}: {exc.strerror}") from None
        except ReportError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        rows.extend((name, report.format, b.recipient or "-", b.action, b.status or "-",
                     b.verdict.kind, b.verdict.reason, b.diagnostic[:60])
                    for b in report.bounces)
    print_table(("file", "format", "recipient", "action", "status", "kind", "reason",
                 "diagnostic"), rows)
    return 1 if failed else 0


@with_store
def cmd_flags(args: argparse.Namespace, config: Config, store: Store) -> int:
    if args.clear:
        if not store.clear_destination_flag(args.clear):
            raise NotFound(f"{args.clear} is not flagged")
        print(f"{args.clear}: flag cleared")
        return 0
    print_table(("domain", "cause", "dsn", "hits", "first", "last", "reply"),
                [(f["domain"], f["cause"], f["dsn"], f["hits"], when(f["first_at"]),
                  when(f["last_at"]), (f["reply"] or "")[:70])
                 for f in store.destination_flags()])
    return 0


def explain(store: Store, address: str) -> int:
    """``spoold suppression explain ADDRESS``: what suppressed it, when, from which delivery."""
    found = store.suppression_explained(address)
    if found is None:
        raise NotFound(f"{address} is not suppressed")
    print(f"{found['address']}: suppressed since {when(found['created_at'])}, "
          f"reason {found['reason']}" + (f" ({found['cause']})" if found["cause"] else ""))
    if found["dsn"] or found["reply"]:
        print(f"  by: {found['dsn'] or '-'} {found['reply'] or ''}".rstrip())
    delivery = found["delivery"]
    if delivery is not None:
        print(f"  delivery: queue id {found['notify_id']}, attempt {delivery['attempt']}, "
              f"{delivery['status']} at {when(delivery['at'])} via {delivery['relay']}")
    elif found["notify_id"] is not None:
        print(f"  delivery: queue id {found['notify_id']} (no longer in the log)")
    soft = found["soft"]
    if soft is not None:
        print(f"  soft bounces: {soft['bounces']} from {when(soft['first_at'])} "
              f"to {when(soft['last_at'])}")
    print(f"  lift it with: spoold suppression remove {found['address']}")
    return 0


def cmd_hash_password(args: argparse.Namespace, config: Config) -> int:
    if not args.user or any(c in args.user for c in ": \t"):
        raise ConfigError(f"user name {args.user!r}: no colon or blank may appear in it")
    print(f"{args.user}:{passwords.hash_password(passwords.read_new(args.password_stdin))}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bounces", help="read bounce reports; destinations flagged on policy")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("parse", help="show how spoold reads bounce or complaint messages")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.set_defaults(handler=cmd_parse)
    q = actions.add_parser("flags", help="destinations that refused us on policy")
    q.add_argument("--clear", metavar="DOMAIN", help="forget one destination's flag")
    q.set_defaults(handler=cmd_flags)

    p = sub.add_parser("submission", help="the SMTP submission listener")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("hash-password", help="print NAME:HASH for [submission] users "
                                                 "(password asked twice on the terminal)")
    q.add_argument("user")
    q.add_argument("--password-stdin", action="store_true",
                   help="read the password as one line from stdin")
    q.set_defaults(handler=cmd_hash_password)
