"""Commands on mailouts and campaigns.

    spoold mailout create --template T (--list L | --contacts a@x,b@y | --all | --where F)
                          [--send-at TIME] [--expires-at TIME] [--rate N/h]
                          [--priority bulk|normal] [--from ADDRESS]
                          [--test-to ADDRESS ... [--test-contact EMAIL]]
    spoold mailout list | show ID | pause ID | resume ID | cancel ID
    spoold campaign create NAME --list L --start TIME --end TIME [--from ADDRESS]
    spoold campaign add-scenario NAME --template T --at TIME
    spoold campaign list | show NAME

TIME is ISO 8601 (2026-12-01T09:00, 2026-12-01 09:00:00+01:00, ...Z); a
time without an offset is local time on the machine running the command
(its TZ).  Also "now" and +DURATION (+90s, +15m, +2h, +1d).  The runner
starts a mailout on its own once send_at has come (no cron).  Creating one
goes through spoold/mailout_request.py, as the web UI and the API do.
"""

from __future__ import annotations

import argparse

from spoold.cli.common import print_table, when, with_store
from spoold.config import Config
from spoold.errors import SpooldError
from spoold.mailout_request import MailoutRequest, create_mailout, parse_from, parse_time
from spoold.poke import poke
from spoold.store import PRIORITIES, Store

_COUNTERS = ("total", "queued", "sending", "held", "deferred", "sent", "bounced", "expired",
             "cancelled", "deleted", "skipped_unsubscribed", "skipped_suppressed",
             "unsubscribed")
# Errors name the command's flags.
_FLAGS = {"send_at": "--send-at", "expires_at": "--expires-at", "rate": "--rate",
          "sender": "--from", "test_to": "--test-to"}


def _selection(args: argparse.Namespace) -> dict:
    chosen = [k for k in ("list", "contacts", "all", "where") if getattr(args, k)]
    if len(chosen) != 1:
        raise SpooldError("mailout create: choose the recipients with one of --list, "
                          "--contacts, --all, --where")
    kind = chosen[0]
    return {"selection": kind, "list_name": args.list, "where": args.where,
            "contacts": args.contacts.split(",") if args.contacts else ()}


@with_store
def cmd_mailout(args: argparse.Namespace, config: Config, store: Store) -> int:
    if args.action == "create":
        return _create(args, config, store)
    if args.action == "list":
        rows = store.mailouts(limit=args.limit)
        print_table(("id", "status", "template", "selection", "send at", "queued by expansion",
                     "campaign"),
                    [(m["id"], m["status"] + (" (test)" if m["test_to"] else ""), m["template"],
                      m["selection"], when(m["send_at"]), m["expanded"], m["campaign_id"])
                     for m in rows])
        return 0
    if args.id is None:
        raise SpooldError(f"mailout {args.action}: name the mailout id")
    if args.action == "show":
        _show(store.mailout(args.id))
        return 0
    verb = {"pause": store.pause_mailout, "resume": store.resume_mailout,
            "cancel": store.cancel_mailout}[args.action]
    count = verb(args.id)
    past, rows = {"pause": ("paused", "held"), "resume": ("resumed", "released"),
                  "cancel": ("cancelled", "removed")}[args.action]
    print(f"mailout {args.id}: {past}, {count} queued row{'s' * (count != 1)} {rows}")
    if args.action == "resume":
        poke(config.runner.run_dir)
    return 0


def _create(args: argparse.Namespace, config: Config, store: Store) -> int:
    if not args.template:
        raise SpooldError("mailout create: give --template NAME")
    request = MailoutRequest(template=args.template, send_at=args.send_at,
                             expires_at=args.expires_at, rate=args.rate,
                             priority=args.priority, sender=args.sender, test_to=args.test_to,
                             test_contact=args.test_contact, **_selection(args))
    mailout_id, spec = create_mailout(config, store, request, _FLAGS)
    mode = f"test to {', '.join(spec.test_to)}" if spec.test_to else spec.selection
    print(f"mailout {mailout_id}: scheduled for {when(spec.send_at)} ({mode})")
    return 0


def _show(mailout: dict) -> None:
    fields = [("status", mailout["status"]), ("template", mailout["template"]),
              ("from", mailout["sender"]), ("selection", mailout["selection"]),
              ("list", mailout["list"]), ("where", mailout["where_filter"]),
              ("send at", when(mailout["send_at"])), ("expires at", when(mailout["expires_at"])),
              ("rate", f"{mailout['rate']}/h" if mailout["rate"] else None),
              ("priority", {v: k for k, v in PRIORITIES.items()}[mailout["priority"]]),
              ("test to", ", ".join(mailout["test_to"]) or None),
              ("campaign", mailout["campaign_id"]), ("started", when(mailout["started_at"])),
              ("finished", when(mailout["finished_at"]))]
    print(f"mailout {mailout['id']}")
    for label, value in fields:
        if value not in (None, "-"):
            print(f"  {label + ':':12s}{value}")
    print("counters")
    for key in _COUNTERS:
        print(f"  {key.replace('_', ' ') + ':':22s}{mailout['counters'][key]}")


@with_store
def cmd_campaign(args: argparse.Namespace, config: Config, store: Store) -> int:
    if args.action == "list":
        print_table(("name", "list", "start", "end", "scenarios"),
                    [(c["name"], c["list"], when(c["starts_at"]), when(c["ends_at"]),
                      c["scenarios"]) for c in store.campaigns()])
        return 0
    if not args.name:
        raise SpooldError(f"campaign {args.action}: name the campaign")
    if args.action == "create":
        if not (args.list and args.start and args.end):
            raise SpooldError("campaign create: give --list, --start and --end")
        store.create_campaign(args.name, args.list, parse_from(args.sender, config),
                              parse_time(args.start, "--start"), parse_time(args.end, "--end"))
        print(f"campaign {args.name}: created")
    elif args.action == "add-scenario":
        if not (args.template and args.at):
            raise SpooldError("campaign add-scenario: give --template and --at")
        at = parse_time(args.at, "--at")
        scenario_id = store.add_scenario(args.name, args.template, at)
        print(f"campaign {args.name}: scenario {scenario_id} at {when(at)}")
    else:
        campaign = store.campaign(args.name)
        print(f"campaign {campaign['name']}: list {campaign['list']}, from {campaign['sender']}, "
              f"{when(campaign['starts_at'])} .. {when(campaign['ends_at'])}")
        print_table(("scenario", "template", "at", "status", "mailout"),
                    [(s["id"], s["template"], when(s["at"]), s["status"], s["mailout_id"])
                     for s in campaign["scenario_list"]])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mailout", help="send a template to contacts: create, pause, cancel")
    p.add_argument("action", choices=("create", "list", "show", "pause", "resume", "cancel"))
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--template")
    p.add_argument("--list", help="every contact of this list")
    p.add_argument("--contacts", metavar="A,B,...", help="these contacts")
    p.add_argument("--all", action="store_true", help="every contact")
    p.add_argument("--where", metavar="FILTER",
                   help="contacts matching FILTER, e.g. 'city = Paris and plan != free'")
    p.add_argument("--send-at", metavar="TIME", help="not before (default: now)")
    p.add_argument("--expires-at", metavar="TIME",
                   help="give up what is unsent by then (default: send-at + max_lifetime)")
    p.add_argument("--rate", metavar="N/h", help="at most N messages per hour (or N/m, N/s)")
    p.add_argument("--priority", choices=("bulk", "normal"), default="bulk")
    p.add_argument("--from", dest="sender", metavar="ADDRESS",
                   help="From and envelope sender (default: [mailout] sender)")
    p.add_argument("--test-to", nargs="+", default=[], metavar="ADDRESS",
                   help="test mode: send only to these addresses")
    p.add_argument("--test-contact", metavar="EMAIL",
                   help="test mode: render with this contact's fields (default: the first)")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(handler=cmd_mailout)

    p = sub.add_parser("campaign", help="campaigns: scenarios on a timeline")
    p.add_argument("action", choices=("create", "add-scenario", "list", "show"))
    p.add_argument("name", nargs="?")
    p.add_argument("--list")
    p.add_argument("--start", metavar="TIME")
    p.add_argument("--end", metavar="TIME")
    p.add_argument("--from", dest="sender", metavar="ADDRESS")
    p.add_argument("--template")
    p.add_argument("--at", metavar="TIME")
    p.set_defaults(handler=cmd_campaign)
