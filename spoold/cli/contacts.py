"""Commands on contacts and lists.

    spoold contacts import FILE.csv [--list NAME] [--strict]
    spoold contacts add EMAIL [--name N] [--attr KEY=VALUE ...] [--list NAME]
    spoold contacts list [--list NAME] [--search TEXT] [--limit N]
    spoold contacts show|unsubscribe|delete EMAIL
    spoold lists list | create NAME | delete NAME | add|remove NAME EMAIL...
"""

from __future__ import annotations

import argparse
import json
import sys

from spoold.address import parse_address
from spoold.cli.common import print_table, when, with_store
from spoold.config import Config
from spoold.contacts_import import import_contacts, parse_attributes
from spoold.errors import SpooldError
from spoold.store import Store
from spoold.store.contacts import ContactIn


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


@with_store
def cmd_contacts(args: argparse.Namespace, config: Config, store: Store) -> int:
    return _CONTACT_ACTIONS[args.action](args, store)


def _import(args: argparse.Namespace, store: Store) -> int:
    if not args.target:
        raise SpooldError("contacts import: name the CSV file")
    report = import_contacts(store, args.target, args.list, args.strict)
    for line in report.bad:
        print(line, file=sys.stderr)
    print(f"{_plural(report.inserted, 'contact')} added, {report.updated} updated"
          + (f", {_plural(len(report.bad), 'bad line')} skipped" if report.bad else "")
          + (f" (list {args.list})" if args.list else ""))
    return 1 if report.bad else 0


def _add(args: argparse.Namespace, store: Store) -> int:
    attributes = parse_attributes(args.attr)
    counts = store.upsert_contacts([ContactIn(parse_address(_one(args)), args.name, attributes)],
                                   args.list)
    print(f"{args.target}: {'added' if counts.inserted else 'updated'}")
    return 0


def _one(args: argparse.Namespace) -> str:
    if not args.target:
        raise SpooldError(f"contacts {args.action}: name the contact's address")
    return args.target


def _list(args: argparse.Namespace, store: Store) -> int:
    rows = store.contacts(list_name=args.list, search=args.search, limit=args.limit)
    print_table(("id", "email", "name", "unsubscribed", "attributes"),
                [(c["id"], c["email"], c["name"], when(c["unsubscribed_at"]),
                  json.dumps(c["attributes"], ensure_ascii=False)[:60]) for c in rows])
    return 0


def _show(args: argparse.Namespace, store: Store) -> int:
    contact = store.contact(_one(args))
    print(f"email:        {contact['email']}")
    print(f"name:         {contact['name']}")
    print(f"added:        {when(contact['created_at'])}")
    print(f"unsubscribed: {when(contact['unsubscribed_at'])}")
    print(f"lists:        {', '.join(contact['lists']) or '-'}")
    for key, value in sorted(contact["attributes"].items()):
        print(f"  {key}: {value}")
    return 0


def _unsubscribe(args: argparse.Namespace, store: Store) -> int:
    changed = store.unsubscribe_contact(_one(args))
    print(f"{args.target}: {'unsubscribed' if changed else 'was already unsubscribed'}")
    return 0


def _delete(args: argparse.Namespace, store: Store) -> int:
    dropped = store.delete_contact(_one(args))
    print(f"{args.target}: deleted" + (f", {_plural(dropped, 'queued row')} removed"
                                       if dropped else ""))
    return 0


_CONTACT_ACTIONS = {"import": _import, "add": _add, "list": _list, "show": _show,
                    "unsubscribe": _unsubscribe, "delete": _delete}


@with_store
def cmd_lists(args: argparse.Namespace, config: Config, store: Store) -> int:
    if args.action == "list":
        print_table(("name", "members", "created"),
                    [(r["name"], r["members"], when(r["created_at"])) for r in store.lists()])
        return 0
    if not args.name:
        raise SpooldError(f"lists {args.action}: name the list")
    if args.action == "create":
        store.create_list(args.name)
        print(f"list {args.name}: created")
    elif args.action == "delete":
        store.delete_list(args.name)
        print(f"list {args.name}: deleted (its contacts stay)")
    else:
        if not args.emails:
            raise SpooldError(f"lists {args.action}: name the contacts' addresses")
        method = store.add_to_list if args.action == "add" else store.remove_from_list
        count = method(args.name, args.emails)
        print(f"list {args.name}: {_plural(count, 'contact')} "
              f"{'added' if args.action == 'add' else 'removed'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("contacts", help="contacts: import a CSV file, list, show, unsubscribe")
    p.add_argument("action", choices=tuple(_CONTACT_ACTIONS))
    p.add_argument("target", nargs="?", metavar="FILE|EMAIL")
    p.add_argument("--list", help="import/add: into this list (made if new); list: only it")
    p.add_argument("--strict", action="store_true",
                   help="import: refuse the whole file if any line is bad")
    p.add_argument("--name", help="add: the contact's name")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                   help="add: an attribute (repeatable)")
    p.add_argument("--search", help="list: addresses or names containing this")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(handler=cmd_contacts)

    p = sub.add_parser("lists", help="contact lists")
    p.add_argument("action", choices=("list", "create", "delete", "add", "remove"))
    p.add_argument("name", nargs="?")
    p.add_argument("emails", nargs="*", metavar="EMAIL")
    p.set_defaults(handler=cmd_lists)
