"""Turn the scenarios' figures into a table, the targets, docs/BENCHMARKS.md and a chart.

The generated part of docs/BENCHMARKS.md sits between two marker comments;
what is written around them by hand (the profile findings) is kept.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.scenarios import Results

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    text = f"{median(values):,.1f}"
    if len(values) > 1:
        text += f" ({min(values):,.1f}-{max(values):,.1f})"
    return text


def metric_values(results: Results, system: str, metric: str) -> list[float]:
    return [run[metric] for run in results.get(system, []) if metric in run]


# Scenarios whose first column is the baseline (the ratio is second/first, as in
# the growth target); elsewhere the first is spoold and the second its baseline.
BASELINE_FIRST = {"growth"}


def table(all_results: dict[str, Results]) -> list[list[str]]:
    """Rows: scenario, metric, each system's median (min-max), ratio to the baseline."""
    rows = []
    for scenario, results in all_results.items():
        systems = list(results)
        metrics = list(dict.fromkeys(m for runs in results.values() for run in runs
                                     for m in run))
        for metric in metrics:
            cells = [f"{s}: {spread(metric_values(results, s, metric))}" for s in systems]
            ratio = ""
            if len(systems) == 2:
                a, b = (metric_values(results, s, metric) for s in systems)
                if scenario in BASELINE_FIRST:
                    a, b = b, a
                if a and b and median(b):
                    ratio = f"{median(a) / median(b):.2f}"
            rows.append([scenario, metric, " / ".join(cells), ratio])
    return rows


@dataclass
class Target:
    name: str
    wanted: str
    measure: Callable[[dict[str, Results]], float]
    met: Callable[[float], bool] | None  # None: a figure shown beside the targets


def _ratio(scenario: str, metric: str, a: str, b: str) -> Callable[[dict[str, Results]], float]:
    def measure(res: dict[str, Results]) -> float:
        return (median(metric_values(res[scenario], a, metric))
                / median(metric_values(res[scenario], b, metric)))
    return measure


def _value(scenario: str, system: str, metric: str, scale: float = 1.0
           ) -> Callable[[dict[str, Results]], float]:
    def measure(res: dict[str, Results]) -> float:
        return scale * median(metric_values(res[scenario], system, metric))
    return measure


def _growth_ratio(metric: str) -> Callable[[dict[str, Results]], float]:
    def measure(res: dict[str, Results]) -> float:
        small, large = (median(metric_values(res["growth"], label, metric))
                        for label in res["growth"])
        return large / small
    return measure


def _peak_rss(res: dict[str, Results]) -> float:
    return max(v for label in res["growth"]
               for v in metric_values(res["growth"], label, "runner_peak_rss_mb"))


TARGETS = [
    Target("throughput spoold/Postfix", ">= 1.5", _ratio("throughput", "rate", "spoold",
                                                        "postfix"), lambda v: v >= 1.5),
    Target("throughput spoold msg/hour", ">= 1,000,000",
           _value("throughput", "spoold", "rate", 3600), lambda v: v >= 1e6),
    Target("WAN-like spoold/Postfix", ">= 1.0", _ratio("wan", "rate", "spoold", "postfix"),
           lambda v: v >= 1.0),
    Target("pickup p50 (ms)", "<= 200", _value("pickup", "spoold", "p50_ms"),
           lambda v: v <= 200),
    Target("pickup p99 (ms)", "<= 1000", _value("pickup", "spoold", "p99_ms"),
           lambda v: v <= 1000),
    Target("claim+dispatch 1M/10k", "<= 1.2", _growth_ratio("ms_per_msg"),
           lambda v: v <= 1.2),
    Target("claim alone 1M/10k", "<= 1.2", _growth_ratio("claim_us_per_msg"),
           lambda v: v <= 1.2),
    Target("runner peak RSS (MB)", "<= 80", _peak_rss, lambda v: v <= 80),
    Target("fan-out reuse/seed model", ">= 10", _ratio("fanout", "rate", "reuse", "seed model"),
           lambda v: v >= 10),
    Target("fan-out reuse/max_use=1", "(shown)", _ratio("fanout", "rate", "reuse", "max_use=1"),
           None),
    Target("CPU per 1000 msgs spoold/Postfix", "<= 1.0",
           _ratio("throughput", "cpu_per_1000", "spoold", "postfix"), lambda v: v <= 1.0),
]


def targets(all_results: dict[str, Results]) -> list[list[str]]:
    rows = []
    for target in TARGETS:
        try:
            value = target.measure(all_results)
        except (KeyError, ValueError, statistics.StatisticsError, ZeroDivisionError):
            continue  # its scenario was not run
        verdict = "" if target.met is None else "met" if target.met(value) else "NOT met"
        shown = f"{value:,.0f}" if value >= 1000 else f"{value:,.2f}"
        rows.append([target.name, target.wanted, shown, verdict])
    return rows


def render_text(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_document(path: Path, preamble: str, all_results: dict[str, Results],
                   chart: Path | None) -> None:
    generated = [preamble, "",
                 render_markdown(["scenario", "figure", "median (min-max)", "ratio"],
                                 table(all_results)), "",
                 "Ratio: spoold against Postfix; in growth, the queue with 1M more rows "
                 "against the one without. CPU counts every process of the system "
                 "measured, the injecting ones included (smtp-source, or the "
                 "applications calling `spoold.enqueue`).", ""]
    target_rows = targets(all_results)
    if target_rows:
        generated += ["Targets (ratios from this run):", "",
                      render_markdown(["target", "wanted", "measured", ""], target_rows), ""]
    if chart:
        generated += [f"![benchmark chart]({chart.name})", ""]
    block = f"{BEGIN}\n" + "\n".join(generated) + f"\n{END}"
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def draw_chart(path: Path, all_results: dict[str, Results]) -> Path | None:
    """One panel per scenario that compares systems: median with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("throughput", "rate", "throughput (msg/s)"),
              ("throughput", "cpu_per_1000", "CPU s per 1000 msgs"),
              ("wan", "rate", "WAN-like, 100 ms replies (msg/s)"),
              ("pickup", "p50_ms", "pickup latency p50 (ms)"),
              ("fanout", "rate", "spoold fan-out (msg/s)")]
    panels = [p for p in panels if p[0] in all_results]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (scenario, metric, title) in zip(axes if len(panels) > 1 else [axes], panels):
        names = list(all_results[scenario])
        values = [metric_values(all_results[scenario], n, metric) for n in names]
        mids = [median(v) for v in values]
        errors = [[m - min(v) for m, v in zip(mids, values)],
                  [max(v) - m for m, v in zip(mids, values)]]
        ax.bar(names, mids, yerr=errors, capsize=4,
               color=["#2b7bba", "#d9822b", "#5aa469"][:len(names)])
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
