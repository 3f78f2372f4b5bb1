"""Fan-out model benchmark: one process per job (max_use = 1) against reused children.

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
    rates: dict[int, list[float]] = {1: [], 100: []}
    for _ in range(args.runs):
        for max_use in rates:
            result = run_once(args.messages, 20, max_use=max_use, max_children=args.children,
                              show=False)
            if not result.ok:
                raise SystemExit(f"max_use={max_use}: outcomes {result.outcomes} "
                                 f"!= expected {result.expected}")
            rates[max_use].append(result.rate)
    print(f"{platform.node()}, {args.messages} messages, {args.children} children, "
          f"{args.runs} runs each")
    for max_use, values in rates.items():
        print(f"max_use={max_use:<4d} median {statistics.median(values):7.1f} msg/s "
              f"(min {min(values):.1f}, max {max(values):.1f})")
    ratio = statistics.median(rates[100]) / statistics.median(rates[1])
    print(f"reuse / one-process-per-job: {ratio:.1f}x")


if __name__ == "__main__":
    main()
