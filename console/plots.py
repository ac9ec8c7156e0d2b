"""The report's figures drawn as PNG with matplotlib, headless (Agg: no display, no Qt).

A figure is described by a `Plot` (what to draw, from the report's numbers) so that the same numbers
go into the table under it; this module only draws.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass

COLOURS = ("#e8a87c", "#85c1cc", "#9b8ec4", "#b5c97a", "#d98b9b", "#8aa6c9", "#c9b27a", "#7ac9a3")


@dataclass(frozen=True)
class Plot:
    """Grouped bars (categories along x, one bar per series; optional [low, high] per bar) or lines
    (one (xs, ys) per series)."""
    kind: str  # "bars" | "lines"
    y_label: str
    categories: tuple[str, ...] = ()  # bars: along the x axis
    series: tuple[tuple[str, tuple], ...] = ()  # (label, values per category) or (label, (xs, ys))
    errors: tuple[tuple, ...] = ()  # bars: per series, (low, high) per category, or None for none
    x_label: str = ""
    percent: bool = False  # values are shares from 0 to 1
    dashed: tuple[bool, ...] = ()  # lines: per series; when given, series come in pairs sharing a colour


def render_png(plot: Plot, width_in: float = 7.5, height_in: float = 3.4) -> bytes:
    # matplotlib loads here, not with the module: only an HTML report needs it (half a second to import)
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: the report is written by a CLI or a worker, never on a screen
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width_in, height_in), dpi=100)
    try:
        if plot.kind == "bars":
            _bars(axes, plot)
        elif plot.kind == "lines":
            for i, (label, (xs, ys)) in enumerate(plot.series):
                colour = COLOURS[(i // 2 if plot.dashed else i) % len(COLOURS)]
                dashed = plot.dashed[i] if plot.dashed else False
                axes.plot(xs, ys, label=label, color=colour, linestyle="--" if dashed else "-", marker=".")
            axes.set_xlabel(plot.x_label)
        else:
            raise ValueError(f"plot kind {plot.kind!r}")
        axes.set_ylabel(plot.y_label)
        if plot.percent:
            axes.set_ylim(0, 1.05)
            axes.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        axes.grid(axis="y", alpha=0.3)
        if plot.series:
            axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        figure.tight_layout()
        out = io.BytesIO()
        figure.savefig(out, format="png")
        return out.getvalue()
    finally:
        plt.close(figure)


def _bars(axes, plot: Plot) -> None:
    count = max(1, len(plot.series))
    width = 0.8 / count
    positions = range(len(plot.categories))
    for i, (label, values) in enumerate(plot.series):
        xs = [p - 0.4 + width * (i + 0.5) for p in positions]
        axes.bar(xs, values, width, label=label, color=COLOURS[i % len(COLOURS)])
        bounds = plot.errors[i] if i < len(plot.errors) else None
        if bounds:
            pairs = [(v - lo, hi - v) if lo is not None else (0, 0) for v, (lo, hi) in zip(values, bounds)]
            axes.errorbar(xs, values, yerr=list(zip(*pairs)), fmt="none", ecolor="#444", capsize=3, linewidth=1)
    axes.set_xticks(list(positions), [textwrap.fill(c, 12) for c in plot.categories], fontsize=7)
