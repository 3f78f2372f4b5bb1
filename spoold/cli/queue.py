"""Commands on the queue: enqueue, mailq-style listing, status, operator verbs, log.

    spoold enqueue ...          queue a message (like sendmail)
    spoold queue | status | log [--follow]
    spoold hold|release|requeue|delete ID... | --all | --domain D | --mailout ID
    spoold flush
    spoold suppression list|explain|remove ADDRESS
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any

import psutil

import sender
from spoold.cli.bounces import explain
from spoold.cli.common import Handler, print_table, when, with_store
from spoold.cli.follow import follow
from spoold.config import Config
from spoold.enqueue import enqueue
from spoold.errors import MessageError, SpooldError
from spoold.lock import running_pid
from spoold.poke import poke
from spoold.store import Store


def _read_message(path: str | None) -> bytes:
    if path in (None, "-"):
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise MessageError(f"{path}: {exc.strerror}") from None


def cmd_enqueue(args: argparse.Namespace, config: Config) -> int:
    quick = args.subject is not None or args.body is not None
    if quick and args.file:
        raise MessageError("give either a message file or --subject/--body, not both")
    if not quick and not args.to and not args.t:
        raise MessageError("no recipients: give --to ADDRESS or -t to read them from the headers")
    message = None if quick else _read_message(args.file)
    result = enqueue(message, sender=args.sender, recipients=None if args.t else args.to,
                     subject=args.subject, body=args.body, priority=args.priority,
                     config=config)
    for address in result.suppressed:
        print(f"skipped {address}: suppressed", file=sys.stderr)
    for queue_id, address in zip(result.ids, result.queued):
        print(f"{queue_id} {address}")
    return 0 if result.ids or not result.suppressed else 1


@with_store
def cmd_queue(args: argparse.Namespace, config: Config, store: Store) -> int:
    if args.summary:
        print_table(("domain", "state", "count"), store.summary())
        counts = store.state_counts()
        print("total: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    rows = store.queue_rows(state=args.state, domain=args.domain, mailout=args.mailout,
                            limit=args.limit)
    now = time.time()
    print_table(
        ("id", "size", "arrival", "sender", "recipient", "state", "tries", "next", "last reply"),
        [(r["id"], r["size"], when(r["created_at"]), r["sender"] or "<>", r["recipient"],
          r["state"], r["attempts"],
          when(r["not_before"]) if r["state"] == "queued" and r["not_before"] > now else "-",
          (r["last_reply"] or "")[:80]) for r in rows])
    if not rows:
        print("no match" if args.state or args.domain or args.mailout else "queue is empty")
    return 0


@with_store
def cmd_status(args: argparse.Namespace, config: Config, store: Store) -> int:
    pid = running_pid(config.runner.run_dir)
    if pid:
        proc = psutil.Process(pid)
        uptime = int(time.time() - proc.create_time())
        children = [c for c in proc.children() if sender.TITLE in " ".join(c.cmdline())]
        print(f"runner: running, pid {pid}, up {datetime.timedelta(seconds=uptime)}, "
              f"children {len(children)}/{config.runner.max_children}")
    else:
        print(f"runner: not running (run dir {config.runner.run_dir})")
    for runner in store.runners():
        _print_runner(runner)
    counts = store.state_counts()
    print("queue: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    since = time.time() - 86400
    done = store.delivery_counts(since)
    print("last 24h: " + ", ".join(f"{k} {done.get(k, 0)}"
                                   for k in ("sent", "deferred", "bounced", "expired", "deleted")))
    return 0 if pid else 3


def _average(count: int, seconds: float) -> str:
    return f"{count} (avg {seconds / count * 1000:.1f} ms)" if count else "0"


def _print_runner(r: dict[str, Any]) -> None:
    """One runner's heartbeat row: its children, backlog and counters since it started."""
    age = time.time() - r["heartbeat_at"]
    up = datetime.timedelta(seconds=int(r["heartbeat_at"] - r["started_at"]))
    print(f"  {r['owner']}: pid {r['pid']}, heartbeat {age:.0f}s ago, up {up}")
    print(f"    children {r['busy_children']} busy, {r['children']} alive, "
          f"{r['max_children']} max; backlog {r['backlog']} rows, "
          f"results waiting {r['results_waiting']}")
    print(f"    since start: sent {r['sent']}, deferred {r['deferred']}, "
          f"bounced {r['bounced']}, expired {r['expired']}")
    print(f"    claims {_average(r['claims'], r['claim_seconds'])} for {r['claimed']} rows; "
          f"dispatch wait {_average(r['dispatched'], r['dispatch_seconds'])}; "
          f"writes {_average(r['writes'], r['write_seconds'])}")


def _targets(args: argparse.Namespace) -> dict[str, Any]:
    if bool(args.ids) + bool(args.all) + bool(args.domain) + bool(args.mailout) != 1:
        raise SpooldError("name queue ids, or --all, or --domain DOMAIN, or --mailout ID "
                          "(one of them)")
    return {"ids": args.ids or None, "domain": args.domain, "mailout": args.mailout}


def _admin(verb: str, method: str) -> Handler:
    @with_store
    def handler(args: argparse.Namespace, config: Config, store: Store) -> int:
        count = getattr(store, method)(**_targets(args))
        print(f"{verb}: {count} row{'s' if count != 1 else ''}")
        if method in ("release_held", "requeue"):
            poke(config.runner.run_dir)
        return 0
    return handler


@with_store
def cmd_flush(args: argparse.Namespace, config: Config, store: Store) -> int:
    count = store.flush()
    running = poke(config.runner.run_dir)
    print(f"flush: {count} deferred row{'s' if count != 1 else ''} due now"
          + ("" if running else " (no runner is listening)"))
    return 0


_LOG_COLUMNS = ("time", "id", "to", "status", "dsn", "relay", "delay", "reply")


def _log_cells(r: dict[str, Any]) -> tuple[Any, ...]:
    return (when(r["at"]), r["notify_id"], r["recipient"], r["status"], r["dsn"] or "-",
            r["relay"] or "-", f"{r['delay']:.1f}", (r["reply"] or "")[:80])


@with_store
def cmd_log(args: argparse.Namespace, config: Config, store: Store) -> int:
    if args.follow:
        return follow(store, args.to, args.limit, args.interval,
                      lambda r: "  ".join(map(str, _log_cells(r))))
    rows = store.deliveries(recipient=args.to, limit=args.limit)
    print_table(_LOG_COLUMNS, [_log_cells(r) for r in reversed(rows)])
    return 0


@with_store
def cmd_suppression(args: argparse.Namespace, config: Config, store: Store) -> int:
    if args.action == "explain":
        if not args.address:
            raise SpooldError("suppression explain: name the address")
        return explain(store, args.address)
    if args.action == "remove":
        if not args.address:
            raise SpooldError("suppression remove: name the address")
        if not store.unsuppress(args.address):
            raise SpooldError(f"{args.address} is not suppressed")
        print(f"{args.address}: no longer suppressed")
        return 0
    print_table(("address", "reason", "dsn", "since", "reply"),
                 [(r["address"], r["reason"], r["dsn"], when(r["created_at"]),
                   (r["reply"] or "")[:80]) for r in store.suppressions()])
    return 0


def _add_targets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="queue ids")
    parser.add_argument("--all", action="store_true", help="every row it applies to")
    parser.add_argument("--domain", help="every row for this recipient domain")
    parser.add_argument("--mailout", type=int, metavar="ID", help="every row of this mailout")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enqueue", help="queue a message")
    p.add_argument("file", nargs="?", help="RFC 5322 message file (default: stdin)")
    p.add_argument("-f", dest="sender", help="envelope sender (default: the From address)")
    p.add_argument("--to", action="append", default=[], help="recipient (repeatable)")
    p.add_argument("-t", action="store_true", help="recipients from To/Cc/Bcc")
    p.add_argument("--subject", help="compose a text message with this subject")
    p.add_argument("--body", help="... and this body")
    p.add_argument("--priority", default="normal", choices=("high", "normal", "bulk"))
    p.set_defaults(handler=cmd_enqueue)

    p = sub.add_parser("queue", help="list the queue (like mailq)")
    p.add_argument("--summary", action="store_true", help="counts by domain and state")
    p.add_argument("--state", choices=("queued", "active", "held"))
    p.add_argument("--domain")
    p.add_argument("--mailout", type=int, metavar="ID", help="only this mailout's rows")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(handler=cmd_queue)

    p = sub.add_parser("status", help="runner and queue counters")
    p.set_defaults(handler=cmd_status)

    for verb, method, text in (("hold", "hold", "set queued rows aside"),
                               ("release", "release_held", "put held rows back in the queue"),
                               ("requeue", "requeue", "make rows due now, fresh retry schedule"),
                               ("delete", "delete", "remove rows (logged as deleted)")):
        p = sub.add_parser(verb, help=text)
        _add_targets(p)
        p.set_defaults(handler=_admin(verb, method))

    p = sub.add_parser("flush", help="make every deferred row due now")
    p.set_defaults(handler=cmd_flush)

    p = sub.add_parser("log", help="recent delivery attempts")
    p.add_argument("--to", help="only this recipient")
    p.add_argument("--limit", type=int, default=50, help="how many recent attempts to show")
    p.add_argument("-f", "--follow", action="store_true",
                   help="then print new attempts as they are logged, until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="with --follow: how often to look for new attempts (default 1)")
    p.set_defaults(handler=cmd_log)

    p = sub.add_parser("suppression", help="addresses never mailed again")
    p.add_argument("action", choices=("list", "explain", "remove"))
    p.add_argument("address", nargs="?")
    p.set_defaults(handler=cmd_suppression)
