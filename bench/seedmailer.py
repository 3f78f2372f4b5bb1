"""The seed mailer's process model, for the fan-out scenario: a fresh process per mail.

    python -m bench.seedmailer CONFIG

The tracker spoold grew from had a single-instance queue runner that started
one program per mail from its notify table.  This reproduces that model over
spoold's own queue and delivery agent, so that the benchmark measures the
process model and nothing else: it claims due rows one at a time and, for
each, starts a fresh ``python -m sender`` (interpreter start-up and imports
included, as an exec'd program pays them), gives it the configuration and a
one-message job, reads its result and records it, at most
``runner.max_children`` at once, until it is stopped.  Nothing in spoold
runs this way; ``spoold run`` forks warm children and reuses them.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time

from sender.protocol import Job, Message, Recipient, Result, decode_reply, encode_config, \
    encode_job
from spoold import config as config_mod
from spoold import outcome
from spoold.runner import sender_config
from spoold.store import QueueRow, Store, store_for

OWNER = "bench-seedmailer"


def start(store: Store, config: config_mod.Config, row: QueueRow) -> subprocess.Popen:
    """One program for one mail, fed its whole job on stdin."""
    body = store.bodies([row.message_id])[row.message_id]
    job = Job(row.id, row.domain, [Message(row.sender, body, [Recipient(row.id, row.recipient)])])
    proc = subprocess.Popen([sys.executable, "-m", "sender"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    proc.stdin.write(encode_config(sender_config(config)) + encode_job(job))  # type: ignore
    proc.stdin.close()  # type: ignore[union-attr]
    return proc


def finish(store: Store, config: config_mod.Config, row: QueueRow,
           proc: subprocess.Popen) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        reply = decode_reply(line)
        if isinstance(reply, Result):
            runner = config.runner
            store.record([outcome.from_result(row, reply, time.time(), runner.backoff_min,
                                              runner.backoff_max)], OWNER)
    proc.wait()


def main() -> None:
    config = config_mod.load(sys.argv[1])
    store = store_for(config)
    running: dict[int, tuple[QueueRow, subprocess.Popen]] = {}
    while True:  # until the benchmark stops it
        while len(running) < config.runner.max_children:
            rows = store.claim(OWNER, 1, time.time() + config.runner.lease)
            if not rows:
                break
            running[rows[0].id] = (rows[0], start(store, config, rows[0]))
        by_output = {proc.stdout: row_id for row_id, (_, proc) in running.items()}
        ready, _, _ = select.select(list(by_output), [], [], 0.005)
        for stream in ready:
            row, proc = running.pop(by_output[stream])
            finish(store, config, row, proc)


if __name__ == "__main__":
    main()
