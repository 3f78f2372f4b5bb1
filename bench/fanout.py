"""Fan-out model benchmark: one process per mail against reused children.

"One process per mail" is the seed mailer's model: max_use = 1 and
job_size = 1, so every message gets a fresh ``python -m sender``.  "Reuse"
is the default: children serve up to 100 jobs of up to 20 messages each.

Runs the demo's fake internet (spoold.fakenet) and the real daemon several
times in each mode, alternating, and prints messages/s with the ratio, since
only a ratio measured in one run means anything on a shared machine.

    python bench/fanout.py [--messages 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics

from spoold.demo import run_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--children", type=int, default=20)
    args = parser.parse_args()
    modes = {"one process per mail": (1, 1), "reuse": (100, 20)}
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.runs):
        for mode, (max_use, job_size) in modes.items():
            result = run_once(args.messages, 20, max_use=max_use, max_children=args.children,
                              job_size=job_size, show=False)
            if not result.ok:
                raise SystemExit(f"{mode}: outcomes {result.outcomes} "
                                 f"!= expected {result.expected}")
            rates[mode].append(result.rate)
    print(f"{platform.node()}, {args.messages} messages, {args.children} children, "
          f"{args.runs} runs each")
    for mode, values in rates.items():
        max_use, job_size = modes[mode]
        print(f"{mode:22s} (max_use={max_use}, job_size={job_size}): median "
              f"{statistics.median(values):7.1f} msg/s (min {min(values):.1f}, "
              f"max {max(values):.1f})")
    ratio = statistics.median(rates["reuse"]) / statistics.median(rates["one process per mail"])
    print(f"reuse / one process per mail: {ratio:.1f}x")


if __name__ == "__main__":
    main()
