"""Enqueue one benchmark message per recipient read from stdin, through spoold.enqueue.

    python -m bench.inject CONFIG SIZE < recipients

Runs as its own process so that the benchmark can count its CPU as
spoold's: this is what an application pays to hand mail to spoold.
"""

from __future__ import annotations

import sys

from spoold import config as config_mod
from spoold.enqueue import enqueue
from spoold.store import store_for

SENDER = "bench@spoold.bench.test"


def body_of(size: int) -> str:
    line = "La-la-la, a benchmark line of text to fill the message body.\n"
    return (line * (size // len(line) + 1))[:size]


def main() -> None:
    config = config_mod.load(sys.argv[1])
    body = body_of(int(sys.argv[2]))
    store = store_for(config)
    for index, recipient in enumerate(sys.stdin.read().split()):
        enqueue(sender=SENDER, recipients=[recipient], subject=f"Benchmark {index}",
                body=body, config=config, store=store)
    store.close()


if __name__ == "__main__":
    main()
