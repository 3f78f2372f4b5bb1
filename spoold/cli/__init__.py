"""The ``spoold`` command: daemon, enqueue, queue inspection and operator verbs.

Each module of this package holds one group of sub-commands, each a small
function taking the parsed arguments and the loaded configuration, and a
``register(subparsers)`` that declares them; GROUPS lists the modules.
Errors a user can act on arrive as SpooldError subclasses and leave as one
line on stderr with the error's exit status; anything else is reported as an
internal error in one line too (set SPOOLD_DEBUG=1 to see the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from spoold import config as config_mod
from spoold.cli import (bounces, contacts, daemon, dkim, mailouts, queue, shaping, templates,
                        users)
from spoold.errors import SpooldError
from spoold.log import configure as configure_log

GROUPS = (daemon, queue, contacts, templates, mailouts, dkim, bounces, shaping, users)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spoold", description="Mail spooler daemon.")
    parser.add_argument("--config", help="settings file (default: $SPOOLD_CONFIG or "
                                         f"{config_mod.DEFAULT_PATH})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_mod.load(args.config)
        configure_log(config.log.format, config.log.level)
        return args.handler(args, config)
    except SpooldError as exc:
        print(f"spoold: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("SPOOLD_DEBUG"):
            traceback.print_exc()
        print(f"spoold: internal error: {type(exc).__name__}: {exc} "
              "(SPOOLD_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 70
