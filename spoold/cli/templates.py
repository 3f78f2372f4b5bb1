"""Commands on templates.

    spoold templates add NAME --subject S --text FILE [--html FILE]
    spoold templates edit NAME [--subject S] [--text FILE] [--html FILE | --no-html]
    spoold templates list | show NAME
    spoold templates preview NAME --contact EMAIL
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spoold import templates
from spoold.cli.common import print_table, when, with_store
from spoold.config import Config
from spoold.errors import SpooldError, TemplateError
from spoold.store import Store


def _read(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None


def _name(args: argparse.Namespace) -> str:
    if not args.name:
        raise SpooldError(f"templates {args.action}: name the template")
    return args.name


@with_store
def cmd_templates(args: argparse.Namespace, config: Config, store: Store) -> int:
    if args.action == "list":
        print_table(("name", "subject", "html", "changed"),
                    [(t["name"], t["subject"][:50], "yes" if t["has_html"] else "no",
                      when(t["updated_at"])) for t in store.templates()])
    elif args.action == "add":
        if args.subject is None or args.text is None:
            raise SpooldError("templates add: give --subject and --text FILE")
        templates.save_template(store, _name(args), args.subject, _read(args.text),
                                _read(args.html) if args.html else None, create=True)
        print(f"template {args.name}: added")
    elif args.action == "edit":
        old = store.template(_name(args))
        html = None if args.no_html else (_read(args.html) if args.html else old["html"])
        templates.save_template(store, args.name, args.subject or old["subject"],
                                _read(args.text) if args.text else old["text"], html,
                                create=False)
        print(f"template {args.name}: saved")
    elif args.action == "show":
        template = store.template(_name(args))
        print(f"Subject: {template['subject']}\n\n--- text ---\n{template['text']}")
        if template["html"] is not None:
            print(f"--- html ---\n{template['html']}")
    else:
        if not args.contact:
            raise SpooldError("templates preview: give --contact EMAIL")
        message = templates.preview(config, store, _name(args), args.contact)
        sys.stdout.buffer.write(message)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("templates", help="mail templates (Jinja2): add, edit, preview")
    p.add_argument("action", choices=("add", "edit", "list", "show", "preview"))
    p.add_argument("name", nargs="?")
    p.add_argument("--subject", help="the subject line (a template too)")
    p.add_argument("--text", metavar="FILE", help="the text body ('-': stdin)")
    p.add_argument("--html", metavar="FILE", help="the HTML body, optional")
    p.add_argument("--no-html", action="store_true", help="edit: drop the HTML body")
    p.add_argument("--contact", metavar="EMAIL", help="preview: as this contact gets it")
    p.set_defaults(handler=cmd_templates)
