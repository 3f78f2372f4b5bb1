"""Commands on the web UI's users and their API tokens.

    spoold users add NAME --role admin|viewer [--password-stdin]
    spoold users passwd NAME [--password-stdin]
    spoold users list
    spoold users delete NAME
    spoold users token NAME [--revoke]

Passwords are asked for twice on the terminal (never echoed, never an
argument: it would show in ps and the shell history), or read as one line
from stdin with --password-stdin.  ``token`` prints a new API token once;
only its digest is stored, so a lost token is revoked and made anew.
Viewers may look at everything; admins may also act (hold, release,
requeue, delete, enqueue).
"""

from __future__ import annotations

import argparse

from spoold import passwords
from spoold.cli.common import print_table, when, with_store
from spoold.config import Config
from spoold.store import Store
from spoold.store.users import ROLES


def _new_hash(args: argparse.Namespace) -> str:
    return passwords.hash_password(passwords.read_new(args.password_stdin))


@with_store
def cmd_add(args: argparse.Namespace, config: Config, store: Store) -> int:
    store.add_user(args.name, args.role, _new_hash(args))
    print(f"user {args.name} added ({args.role})")
    return 0


@with_store
def cmd_passwd(args: argparse.Namespace, config: Config, store: Store) -> int:
    store.set_password(args.name, _new_hash(args))
    print(f"password of {args.name} changed; their sessions have ended")
    return 0


@with_store
def cmd_list(args: argparse.Namespace, config: Config, store: Store) -> int:
    print_table(("name", "role", "created", "last login", "tokens"),
                [(u["name"], u["role"], when(u["created_at"]), when(u["last_login_at"]),
                  u["tokens"]) for u in store.users()])
    return 0


@with_store
def cmd_delete(args: argparse.Namespace, config: Config, store: Store) -> int:
    store.delete_user(args.name)
    print(f"user {args.name} deleted, with their API tokens")
    return 0


@with_store
def cmd_token(args: argparse.Namespace, config: Config, store: Store) -> int:
    if args.revoke:
        count = store.revoke_tokens(args.name)
        print(f"{count} token{'s' if count != 1 else ''} of {args.name} revoked")
        return 0
    token, digest = passwords.new_token()
    store.add_token(args.name, digest)
    print(token)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    users = sub.add_parser("users", help="web UI users and API tokens")
    verbs = users.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("add", help="add a user")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=ROLES,
                   help="viewer: read-only; admin: may also act on the queue")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(handler=cmd_add)

    p = verbs.add_parser("passwd", help="set a user's password (ends their sessions)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(handler=cmd_passwd)

    p = verbs.add_parser("list", help="list the users")
    p.set_defaults(handler=cmd_list)

    p = verbs.add_parser("delete", help="delete a user and their API tokens")
    p.add_argument("name")
    p.set_defaults(handler=cmd_delete)

    p = verbs.add_parser("token", help="make an API token for a user (printed once)")
    p.add_argument("name")
    p.add_argument("--revoke", action="store_true", help="revoke every token of the user")
    p.set_defaults(handler=cmd_token)
