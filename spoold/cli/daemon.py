"""Commands that run things: the daemon, the demo, schema upgrades, settings.

    spoold run [--drain]        the queue runner (spoold/runner.py)
    spoold demo [--keep-ui]     delivery to a fake internet on loopback, with the web UI
    spoold db upgrade           create or upgrade the schema
    spoold config [--show|--defaults]
"""

from __future__ import annotations

import argparse

from spoold import config as config_mod
from spoold.config import Config
from spoold.log import configure as configure_log
from spoold.log import log_file
from spoold.store import open_store


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from spoold.runner import Runner

    configure_log(config.log.format, config.log.level, log_file(config))
    return Runner(config, drain=args.drain).run()


def cmd_db(args: argparse.Namespace, config: Config) -> int:
    store = open_store(config.database.url, config.base_dir, config.database.busy_timeout)
    try:
        before, after = store.upgrade()
    finally:
        store.close()
    print(f"schema version {after}" + ("" if before == after else f" (was {before})"))
    return 0


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    print(config_mod.render_defaults() if args.defaults else config_mod.render_effective(config),
          end="")
    return 0


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from spoold.demo import run_demo

    return run_demo(messages=args.messages, domains=args.domains, contacts=args.contacts,
                    keep_ui=args.keep_ui)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the queue runner daemon")
    p.add_argument("--drain", action="store_true", help="deliver what is due, then exit")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("db", help="database schema")
    p.add_argument("action", choices=("upgrade",))
    p.set_defaults(handler=cmd_db)

    p = sub.add_parser("config", help="print the settings")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--show", action="store_true", help="the effective settings (default)")
    group.add_argument("--defaults", action="store_true", help="the documented defaults")
    p.set_defaults(handler=cmd_config)

    p = sub.add_parser("demo", help="deliver mail to a fake internet on loopback")
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--domains", type=int, default=20)
    p.add_argument("--contacts", type=int, default=100, help="contacts of the demo mailout")
    p.add_argument("--keep-ui", action="store_true",
                   help="keep the web UI running after the delivery, until Ctrl-C")
    p.set_defaults(handler=cmd_demo)
