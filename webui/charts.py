"""Charts of attempts over time, drawn on the server as SVG (pygal).

No chart library reaches the browser: the statistics page shows each chart
as an ``<img>`` of an SVG made here, so it works offline and under the UI's
Content-Security-Policy.  pygal's optional tooltip script is left out
(``js=[]``); the little configuration script it always embeds cannot run in
an image, and the SVG responses forbid scripts anyway (stats.py).
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Sequence

import pygal
from pygal.style import Style

SERIES = ("sent", "deferred", "bounced", "expired")
_STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#333",
    foreground_strong="#111",
    foreground_subtle="#ccc",
    font_family="system-ui, -apple-system, 'Segoe UI', sans-serif",
    colors=("#2e7d32", "#f9a825", "#c62828", "#757575"),
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
)


def _stacked(labels: Sequence[str], counts: dict[str, list[int]], every: int) -> str:
    chart = pygal.StackedBar(js=[], style=_STYLE, width=900, height=300, legend_at_bottom=True,
                             legend_at_bottom_columns=len(SERIES), show_minor_x_labels=False,
                             x_label_rotation=0, print_values=False, margin=10,
                             explicit_size=True, truncate_label=-1)
    chart.x_labels = list(labels)
    chart.x_labels_major = list(labels)[::every]
    for status in SERIES:
        chart.add(status, counts[status])
    return chart.render(is_unicode=True)


def hourly(series: Sequence[tuple[int, str, int]], start: float, hours: int) -> str:
    """Attempts per hour for ``hours`` hours from the hour holding ``start``."""
    first = int(start // 3600 * 3600)
    slots = [first + 3600 * i for i in range(hours)]
    index = {hour: i for i, hour in enumerate(slots)}
    counts = {status: [0] * hours for status in SERIES}
    for hour, status, n in series:
        if status in counts and hour in index:
            counts[status][index[hour]] += n
    labels = [datetime.datetime.fromtimestamp(h).strftime("%H:00") for h in slots]
    return _stacked(labels, counts, every=6)


def daily(series: Sequence[tuple[int, str, int]], days: Sequence[datetime.date]) -> str:
    """Attempts per local day from hourly ``series``, for the ``days`` given."""
    per_day: dict[tuple[datetime.date, str], int] = defaultdict(int)
    for hour, status, n in series:
        per_day[datetime.datetime.fromtimestamp(hour).date(), status] += n
    counts = {status: [per_day[day, status] for day in days] for status in SERIES}
    return _stacked([day.strftime("%d %b") for day in days], counts, every=5)
