"""Run the benchmark: ``python3 -m bench`` (bench/run.sh installs what it needs first).

Prints each run as it finishes, then the table and the targets, and writes
docs/BENCHMARKS.md and docs/benchmarks.png.  Every process started is
stopped by PID on the way out, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from bench import net, postfix, report, spool
from bench.procs import Procs
from bench.scenarios import SCENARIOS, BenchError, Setting

DOCS = Path(__file__).resolve().parent.parent / "docs"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario and system")
    parser.add_argument("--messages", type=int, default=20_000,
                        help="messages in the throughput scenario")
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--sinks", type=int, default=10, help="smtp-sink MX hosts")
    parser.add_argument("--children", type=int, default=100,
                        help="process cap: spoold max_children = Postfix default_process_limit")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true",
                        help="1 run, 2,000 messages: a smoke test, not figures to keep")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/spoold-bench"),
                        help="scratch directory, emptied before and after (one fixed path, "
                             "since Postfix must list its config directory)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.messages = 1, 2000
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {model}, {os.cpu_count()} cores, {memory:.0f} GiB"


def preamble(args: argparse.Namespace, seconds: float) -> str:
    return "\n".join([
        f"Run of {datetime.date.today().isoformat()} on {machine()}, "
        f"{platform.system()} {platform.release()}.",
        f"Versions: spoold {spool.version()}, Postfix {postfix.version()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}.",
        f"Settings: {args.runs} runs per system, alternating; {args.messages:,} messages of "
        f"2 KB in the throughput scenario over {args.domains} domains and {args.sinks} "
        f"smtp-sink hosts; process cap {args.children} for both (spoold max_children, "
        "Postfix default_process_limit), 20 per destination for both.",
        f"Command: `{' '.join(['bench/run.sh', *sys.argv[1:]])}` ({seconds / 60:.1f} min).",
    ])


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    procs = Procs()
    shutil.rmtree(args.workdir, ignore_errors=True)
    setting = Setting(procs, args.workdir, args.runs, args.messages,
                      net.domains(args.domains), args.sinks, args.children)
    results = {}
    try:
        setting.start()
        for name in args.only.split(","):
            print(f"{name}:", flush=True)
            results[name] = SCENARIOS[name](setting)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        setting.stop()
        shutil.rmtree(args.workdir, ignore_errors=True)
    print()
    print(report.render_text([["scenario", "figure", "median (min-max)", "ratio"],
                              *report.table(results)]))
    target_rows = report.targets(results)
    if target_rows:
        print()
        print(report.render_text([["target", "wanted", "measured", ""], *target_rows]))
    if not args.no_write:
        chart = report.draw_chart(DOCS / "benchmarks.png", results)
        report.write_document(DOCS / "BENCHMARKS.md",
                              preamble(args, time.monotonic() - started), results, chart)
        print(f"\nwrote {DOCS / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
