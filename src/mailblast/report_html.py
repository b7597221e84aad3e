"""Render a campaign report as one self-contained HTML file with inline SVG charts.

matplotlib draws the charts (Agg backend, saved as SVG with text as paths), so the file needs no
font, script or style sheet from anywhere else. Every value from the store (reply texts,
domains, relay names) goes through Jinja2's autoescaping.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
import matplotlib
from markupsafe import Markup
from matplotlib.figure import Figure

# Never pick an interactive backend, even if MPLBACKEND requests one.
matplotlib.use("Agg")

CHART_SIZE = (9.0, 3.2)  # inches
# Parts of matplotlib's SVG output that do not belong inside an HTML document.
_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def render_html(figures: dict[str, Any]) -> str:
    """Return the report page for figures made by :func:`mailblast.report.build_report`."""
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["utc"] = _utc
    environment.filters["seconds"] = _seconds
    environment.filters["number"] = _number
    text = resources.files("mailblast").joinpath("report_template.html").read_text("utf-8")
    template = environment.from_string(text)
    return template.render(report=figures, charts=_charts(figures))


def _charts(figures: dict[str, Any]) -> dict[str, Markup]:
    offsets = [start - figures["bucket_starts"][0] for start in figures["bucket_starts"]]
    throughput = dict(figures["throughput"]["relays"])
    if len(throughput) > 1:
        throughput["all relays"] = figures["throughput"]["total"]
    return {
        "throughput": _line_chart(
            "chart-throughput", offsets, throughput, "messages sent per second"
        ),
        "reply_classes": _line_chart(
            "chart-reply-classes",
            offsets,
            figures["reply_classes"]["series"],
            f"attempts per {figures['bucket_seconds']} s",
            log_scale=True,
        ),
        "status_codes": _line_chart(
            "chart-status-codes",
            offsets,
            figures["status_codes"]["series"],
            f"replies per {figures['bucket_seconds']} s",
            log_scale=True,
        ),
    }


def _line_chart(
    chart_id: str,
    offsets: Sequence[float],
    series: dict[str, Sequence[float]],
    label: str,
    *,
    log_scale: bool = False,
) -> Markup:
    """Draw one line per series against the time since the first attempt; return inline SVG.

    ``log_scale`` keeps a few deferrals visible next to thousands of successes: the y axis is
    linear up to 1 and logarithmic above.
    """
    minutes = bool(offsets) and offsets[-1] > 600
    xs = [offset / 60 if minutes else offset for offset in offsets]
    figure = Figure(figsize=CHART_SIZE)
    axes = figure.subplots()
    for name, values in series.items():
        axes.plot(xs, values, label=name, marker="." if len(xs) < 30 else None)
    if not series:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    unit = "minutes" if minutes else "seconds"
    axes.set_xlabel(f"{unit} since the first attempt")
    axes.set_ylabel(label)
    if log_scale:
        axes.set_yscale("symlog", linthresh=1)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    if series:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.tight_layout()
    return Markup(_svg(figure, chart_id))


def _svg(figure: Figure, chart_id: str) -> str:
    """Return the figure as an <svg> element with an id, fit to be placed inside HTML."""
    buffer = io.StringIO()
    # A salt per chart keeps the clip-path ids of different charts on one page distinct.
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": chart_id}):
        figure.savefig(buffer, format="svg")
    svg = _METADATA.sub("", _PROLOGUE.sub("", buffer.getvalue(), count=1))
    return svg.replace("<svg ", f'<svg id="{chart_id}" role="img" ', 1)


def _utc(value: float | None) -> str:
    if value is None:
        return "–"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    hours, rest = divmod(round(value), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d} ({value:.1f} s)"


def _number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"
