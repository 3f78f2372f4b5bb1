"""Enqueue one benchmark message per recipient read from stdin, through spoold.enqueue.

    python -m bench.inject CONFIG SIZE < recipients

Runs as its own process so that the benchmark can count its CPU as
spoold's: this is what an application pays to hand mail to spoold.  Like
smtp-source on the Postfix side, it submits whole messages (headers and a
body of SIZE bytes) that it formats itself, as an application would.
"""

from __future__ import annotations

import email.utils
import sys

from spoold import config as config_mod
from spoold.enqueue import enqueue
from spoold.store import store_for

DOMAIN = "spoold.bench.test"  # of Message-IDs too: make_msgid() would look the host up each time
SENDER = f"bench@{DOMAIN}"
CLIENTS = 4  # injecting processes at once, for spoold and for Postfix alike


def body_of(size: int) -> str:
    line = "La-la-la, a benchmark line of text to fill the message body.\n"
    return (line * (size // len(line) + 1))[:size]


def message(index: int, recipient: str, body: str) -> bytes:
    return (f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: Benchmark {index}\r\n"
            f"Date: {email.utils.formatdate()}\r\n"
            f"Message-ID: <{index}.{email.utils.make_msgid(domain=DOMAIN)[1:]}\r\n\r\n"
            f"{body}").encode()


def main() -> None:
    config = config_mod.load(sys.argv[1])
    body = body_of(int(sys.argv[2]))
    store = store_for(config)
    for index, recipient in enumerate(sys.stdin.read().split()):
        enqueue(message(index, recipient, body), sender=SENDER, recipients=[recipient],
                config=config, store=store)
    store.close()


if __name__ == "__main__":
    main()
