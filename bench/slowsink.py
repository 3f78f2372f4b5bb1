"""aiosmtpd sinks in a process of their own, printing each arrival's time.

    python -m bench.slowsink PORT DELAY COUNT

Puts COUNT spoold.fakenet sinks on 127.0.2.1 ... at PORT, each waiting
DELAY seconds before its replies to MAIL, RCPT and the final dot, prints
"ready", then one line per accepted message: the time.time() it arrived.
A process of its own, so that the sinks' Python does not share a core (and
a GIL) with the benchmark that watches them.
"""

from __future__ import annotations

import sys
import time

from bench.net import sink_host
from spoold.fakenet import Behaviour, SinkPool


def main() -> None:
    port, delay, count = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    pool = SinkPool().start()
    sinks = [pool.add(sink_host(i), port, Behaviour(delay=delay)) for i in range(count)]
    print("ready", flush=True)
    seen = [0] * count
    while True:
        for index, sink in enumerate(sinks):
            with sink.lock:
                new = sink.messages[seen[index]:]
            seen[index] += len(new)
            for received in new:
                sys.stdout.write(f"{received.at:.6f}\n")
        sys.stdout.flush()
        time.sleep(0.002)


if __name__ == "__main__":
    main()
