"""Templates as users handle them: checked before they are saved, previewed as sent.

``save_template`` refuses a template that does not compile, that names
a placeholder or contact attribute nobody provides, or that holds text
which is not UTF-8 (TemplateError, every problem with its part and line),
then stores it.  ``preview`` renders a
template for one contact with sender.render.render_message, the very code
the sender child runs, with the settings a mailout would use: what it
returns is what that contact would receive, headers included (only Date,
Message-ID and the token's mailout id, 0 here, differ); ``render_preview``
does the same for a draft (the web UI's live preview).  The CLI (spoold
templates ...) and the web UI both call these.
"""

from __future__ import annotations

import re
from typing import Any

from sender.render import RENDER_ERRORS, check_template, render_message
from spoold.config import Config
from spoold.errors import TemplateError
from spoold.mailout import mailing, personal
from spoold.store import Store
from spoold.unsubscribe import secret_for

_SURROGATE = re.compile("[\ud800-\udfff]")  # what decoding left of bytes that are not UTF-8


def save_template(store: Store, name: str, subject: str, text: str, html: str | None,
                  create: bool) -> int:
    """Check and store a template (``create``: a new one, else replace); returns its id."""
    if not name.strip():
        raise TemplateError("a template needs a name")
    if _SURROGATE.search(name):
        raise TemplateError(f"template name {name!r}: not UTF-8 text")
    problems = [f"{part}, line {source.count(chr(10), 0, bad.start()) + 1}: not UTF-8 text "
                f"(undecodable byte {bad.group()!r})"
                for part, source in (("subject", subject), ("text", text), ("html", html or ""))
                if (bad := _SURROGATE.search(source))]
    problems = problems or check_template(subject, text, html, store.attribute_names())
    if problems:
        raise TemplateError(f"template {name!r} refused:\n  " + "\n  ".join(problems))
    return store.save_template(name, subject, text, html, create)


def preview(config: Config, store: Store, name: str, email: str) -> bytes:
    """The message the contact ``email`` would receive from template ``name``."""
    return render_preview(config, store, store.template(name), email)


def render_preview(config: Config, store: Store, template: dict[str, Any], email: str) -> bytes:
    """The message the contact ``email`` would receive from ``template`` (its subject,
    text and html, saved or not: the web UI's editor previews a draft).

    TemplateError when the template is refused (as ``save_template`` would) or
    cannot be rendered for this contact (an attribute it lacks, say); NotFound
    for an unknown contact.
    """
    problems = check_template(template["subject"], template["text"], template["html"],
                              store.attribute_names())
    if problems:
        raise TemplateError("\n".join(problems))
    contact = store.contact(email)
    shared = mailing(config, {"sender": config.mailout_sender, **template})
    fields = personal(secret_for(config, store), 0, contact["id"], contact["email"],
                      contact["name"], contact["attributes"])
    try:
        return render_message(shared, fields, contact["email"])
    except RENDER_ERRORS as exc:
        raise TemplateError(f"cannot render it for {contact['email']}: {exc}") from None
