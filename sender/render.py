"""A mailout's message for one recipient, rendered from its template: the one renderer.

The sender child renders every mailout message with ``render_message``;
``spoold templates preview`` calls the same function, so a preview is what
the contact would receive, headers included.  ``check_template`` is what
``spoold templates add|edit`` runs before a template is saved.

Templates are Jinja2 in a SandboxedEnvironment (a template cannot reach
Python internals) with StrictUndefined (a missing value is an error, never
an empty string).  The HTML body is autoescaped; the subject and the text
body are not.  A template sees:

    email, name          the contact's address and name
    attributes           the contact's attributes: {{ attributes.city }}
    unsubscribe_url      the recipient's own unsubscribe link

The message is multipart/alternative (text, then HTML) when there is an HTML
body, else text/plain, with From, To, Subject, Date, Message-ID,
List-Unsubscribe (<mailto:...>, <https://...>) and List-Unsubscribe-Post:
List-Unsubscribe=One-Click (RFC 8058).  Every header value has its control
characters (CR and LF among them) replaced by spaces before it is set, and
Python's email package folds and encodes it: no contact or template value
can add a header line.  A recipient whose copy cannot be rendered (say an
attribute it lacks) fails alone: ``render_job`` reports it and the child
bounces it with dsn 5.6.0.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import re
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from urllib.parse import quote

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from sender.protocol import Job, Mailing, Message, Personal

PLACEHOLDERS = ("email", "name", "attributes", "unsubscribe_url")
RENDER_FAILED = "5.6.0"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_DICT_METHODS = set(dir(dict))
RENDER_ERRORS = (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError)


@functools.cache
def _environment(html: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=html,
                                keep_trailing_newline=True)


@functools.lru_cache(maxsize=64)
def _compile(source: str, html: bool) -> jinja2.Template:
    return _environment(html).from_string(source)


def _parts(subject: str, text: str, html: str | None) -> list[tuple[str, str, bool]]:
    parts = [("subject", subject, False), ("text", text, False)]
    if html is not None:
        parts.append(("html", html, True))
    return parts


def check_template(subject: str, text: str, html: str | None,
                   attributes: set[str] | None = None) -> list[str]:
    """What is wrong with a template, one "part, line N: reason" each (empty if nothing).

    Syntax errors, placeholders that are not PLACEHOLDERS, and (when
    ``attributes`` is given) ``attributes.X`` / ``attributes['X']`` for an
    X no contact has.
    """
    problems = []
    for part, source, html_part in _parts(subject, text, html):
        try:
            tree = _environment(html_part).parse(source)
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"{part}, line {exc.lineno}: {exc.message}")
            continue
        unknown = meta.find_undeclared_variables(tree) - set(PLACEHOLDERS)
        for node in tree.find_all(nodes.Name):
            if node.name in unknown:
                problems.append(f"{part}, line {node.lineno}: unknown placeholder "
                                f"{node.name!r} (use {', '.join(PLACEHOLDERS)})")
                unknown.discard(node.name)
        if attributes is not None:
            problems.extend(f"{part}, line {line}: unknown attribute {name!r} (known: "
                            f"{', '.join(sorted(attributes)) or 'none yet'})"
                            for line, name in _attribute_uses(tree) if name not in attributes)
    return problems


def _attribute_uses(tree: nodes.Template) -> list[tuple[int, str]]:
    uses = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "attributes"):
            continue
        if isinstance(node, nodes.Getattr) and node.attr not in _DICT_METHODS:
            uses.append((node.lineno, node.attr))
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            uses.append((node.lineno, str(node.arg.value)))
    return uses


def _header_text(value: str) -> str:
    """A header value with no control character left: CR/LF cannot start a new header."""
    return _CONTROL.sub(" ", value).strip()


def unsubscribe_links(mailing: Mailing, token: str) -> tuple[str, str | None]:
    """The recipient's https unsubscribe URL and mailto URL (None without an address)."""
    url = mailing.unsubscribe_url.replace("{token}", quote(token, safe=""))
    mailto = None
    if mailing.unsubscribe_mailto:
        mailto = f"mailto:{mailing.unsubscribe_mailto}?subject=" + quote(f"unsubscribe {token}")
    return url, mailto


def render_message(mailing: Mailing, personal: Personal, to: str) -> bytes:
    """The message ``to`` receives; jinja2 errors and the like propagate."""
    contact = personal.contact
    url, mailto = unsubscribe_links(mailing, personal.token)
    context = {"email": contact.get("email", to), "name": contact.get("name", ""),
               "attributes": contact.get("attributes", {}), "unsubscribe_url": url}
    subject = _compile(mailing.subject, False).render(context)
    text = _compile(mailing.text, False).render(context)
    html = None if mailing.html is None else _compile(mailing.html, True).render(context)

    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = _header_text(mailing.sender)
    msg["To"] = Address(display_name=_header_text(context["name"]), addr_spec=to)
    msg["Subject"] = _header_text(subject)
    msg["Date"] = email.utils.formatdate(localtime=True)
    domain = email.utils.parseaddr(msg["From"])[1].rpartition("@")[2] or "localhost"
    msg["Message-ID"] = email.utils.make_msgid(domain=domain)
    links = [f"<{_header_text(link)}>" for link in (mailto, url) if link]
    msg["List-Unsubscribe"] = ", ".join(links)
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def render_job(job: Job) -> tuple[Job, list[tuple[int, str]]]:
    """The job with every mailout message rendered, and (recipient id, reason) of failures."""
    messages: list[Message] = []
    failed: list[tuple[int, str]] = []
    for message in job.messages:
        if message.mailing is None:
            messages.append(message)
            continue
        mailing = job.mailings[message.mailing]
        for recipient in message.recipients:
            try:
                data = render_message(mailing, message.personal, recipient.to)
            except RENDER_ERRORS as exc:
                failed.append((recipient.id, f"template error: {type(exc).__name__}: {exc}"))
                continue
            messages.append(dataclasses.replace(message, data=data, recipients=[recipient],
                                                mailing=None, personal=None))
    return dataclasses.replace(job, messages=messages, mailings={}), failed
