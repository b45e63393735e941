"""Charts for the admin as plain SVG, drawn on the server: no JavaScript
library, nothing from a CDN, nothing the admin's CSP blocks (no inline
script or style: colours come from classes in static/review.css).

Each function returns the shapes of one chart in viewBox units; the macro in
templates/admin/analytics_chart.html writes them out.  The SVG has a viewBox
and ``width: 100%``, so it scales to any screen, a 360 px phone included;
the viewBox is narrow (WIDTH units) so that its text stays readable there.
"""
from __future__ import annotations

import math

WIDTH = 400
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 10, 26
MAX_X_LABELS = 6


def nice_step(top: float, ticks: int = 4) -> float:
    """A round step (1, 2 or 5 times a power of ten) that covers ``top`` in about ``ticks`` steps."""
    if top <= 0:
        return 1
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _y_axis(top: float, height: int, percent: bool):
    step = nice_step(top) if not percent else max(0.05, nice_step(top))
    ceiling = step * max(1, math.ceil(top / step - 1e-9))
    plot = height - TOP - BOTTOM
    ticks = []
    value = 0.0
    while value <= ceiling + step / 2:
        y = TOP + plot - plot * value / ceiling
        ticks.append({"y": round(y, 1), "label": f"{value * 100:.0f}%" if percent else f"{value:,.0f}"})
        value += step
    return ceiling, ticks


def _x_labels(labels, x_of):
    every = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    return [{"x": round(x_of(i), 1), "label": label} for i, label in enumerate(labels) if i % every == 0]


def stacked_columns(labels, series, height=220):
    """One column per label, the series' counts stacked in it.

    ``series``: [(name, css class, [count per label])].
    """
    totals = [sum(values[i] for _, _, values in series) for i in range(len(labels))]
    ceiling, ticks = _y_axis(max(totals, default=0), height, percent=False)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, height - TOP - BOTTOM
    slot = plot_w / max(1, len(labels))
    bars = []
    for i, label in enumerate(labels):
        y = TOP + plot_h
        for name, css, values in series:
            h = plot_h * values[i] / ceiling if ceiling else 0
            if values[i]:
                bars.append({"x": round(LEFT + i * slot + slot * 0.1, 2), "y": round(y - h, 2),
                             "w": round(slot * 0.8, 2), "h": round(h, 2), "css": css,
                             "title": f"{label} {name}: {values[i]:,}"})
            y -= h
    return {"width": WIDTH, "height": height, "left": LEFT, "right": WIDTH - RIGHT, "bottom": TOP + plot_h,
            "ticks": ticks, "bars": bars, "lines": [], "dots": [],
            "x_labels": _x_labels(labels, lambda i: LEFT + i * slot + slot / 2),
            "legend": [(name, css) for name, css, _ in series]}


def lines(labels, series, height=220):
    """One line per series of fractions (0..1) over the labels; a None (nothing
    to divide by) breaks the line.

    ``series``: [(name, css class, [fraction or None per label])].
    """
    values = [v for _, _, vs in series for v in vs if v is not None]
    ceiling, ticks = _y_axis(max(values, default=0) or 0.05, height, percent=True)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, height - TOP - BOTTOM
    slot = plot_w / max(1, len(labels))

    def point(i, v):
        return round(LEFT + i * slot + slot / 2, 2), round(TOP + plot_h - plot_h * v / ceiling, 2)

    paths, dots = [], []
    for name, css, vs in series:
        run = []
        for i, v in enumerate(list(vs) + [None]):
            if v is not None:
                run.append(point(i, v))
                dots.append({"x": run[-1][0], "y": run[-1][1], "css": css,
                             "title": f"{labels[i]} {name}: {v * 100:.1f}%"})
            elif run:
                paths.append({"css": css, "points": " ".join(f"{x},{y}" for x, y in run)})
                run = []
    return {"width": WIDTH, "height": height, "left": LEFT, "right": WIDTH - RIGHT, "bottom": TOP + plot_h,
            "ticks": ticks, "bars": [], "lines": paths, "dots": dots if len(labels) <= 62 else [],
            "x_labels": _x_labels(labels, lambda i: LEFT + i * slot + slot / 2),
            "legend": [(name, css) for name, css, _ in series]}


def bar_rows(labels, series, bar=9):
    """For a few categories with long names (model versions, channels): the
    name on its own line, then one horizontal bar per series of fractions.

    ``series``: [(name, css class, [fraction or None per label])].
    """
    values = [v for _, _, vs in series for v in vs if v is not None]
    top = max(values, default=0) or 0.05
    step = max(0.05, nice_step(top))
    ceiling = step * max(1, math.ceil(top / step - 1e-9))
    left, plot_w = 8, WIDTH - 8 - RIGHT - 44
    block = 16 + len(series) * (bar + 2) + 6
    height = TOP + block * max(1, len(labels)) + 4
    bars, texts = [], []
    for i, label in enumerate(labels):
        y = TOP + i * block
        texts.append({"x": left, "y": y + 11, "label": label})
        for j, (name, css, vs) in enumerate(series):
            v = vs[i]
            by = y + 16 + j * (bar + 2)
            w = plot_w * v / ceiling if v else 0
            bars.append({"x": left, "y": by, "w": round(w, 2), "h": bar, "css": css,
                         "title": f"{label} {name}: " + ("-" if v is None else f"{v * 100:.1f}%")})
            texts.append({"x": round(left + w + 3, 2), "y": by + bar - 1, "label": "-" if v is None else f"{v * 100:.1f}%",
                          "small": True})
    return {"width": WIDTH, "height": height, "bars": bars, "texts": texts,
            "legend": [(name, css) for name, css, _ in series]}
