"""The loss curves of a training run as an SVG file, drawn without matplotlib.

Why not matplotlib: importing it and drawing the figure took about a second of every
``inclust-train`` run, against ~15 s of training for one network on the standard MERFISH split.
Line plots of a few hundred points are a few lines of SVG, which every browser, Jupyter
(``IPython.display.SVG``) and GitHub show as they are.

One panel per loss term that is not zero throughout, against the epoch; the validation loss is
overlaid on the total. A value that is not finite (a diverged epoch) breaks the line there.
"""

from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape

PANEL_W, PANEL_H = 260, 210  # one panel, pixels
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 26, 34  # the plot area's margins inside a panel
TITLE_H = 24  # above the panels, when there is a title
COLORS = {"training": "#1f77b4", "validation": "#ff7f0e"}
TERMS = ("total", "reconstruction", "kl", "label", "categorical")


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round tick values inside [lo, hi]: the finest step of 1, 2 or 5 times a power of ten that
    gives at most ``most`` ticks."""
    if not hi > lo:
        return [lo]
    top = math.floor(math.log10(hi - lo))
    for step in (m * 10.0 ** p for p in range(top - 2, top + 2) for m in (1, 2, 5)):
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        if last - first + 1 <= most:
            return [round(i * step, 12) + 0.0 for i in range(first, last + 1)]
    return [lo, hi]


def _label(v: float) -> str:
    return f"{v:.4g}"


def _value_range(series: list[list[float]]) -> tuple[float, float]:
    finite = [v for s in series for v in s if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi == lo:  # a flat line: give it room
        pad = abs(lo) * 0.05 or 0.5
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.04
    return lo - pad, hi + pad


def _paths(values: list[float], x_of, y_of) -> list[list[tuple[float, float]]]:
    """The line through ``values`` (epoch 1, 2, ...) as runs of points, broken at non-finite values."""
    runs: list[list[tuple[float, float]]] = [[]]
    for i, v in enumerate(values):
        if math.isfinite(v):
            runs[-1].append((x_of(i + 1), y_of(v)))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _panel(term: str, lines: dict[str, list[float]], n_epochs: int, dx: float, dy: float) -> list[str]:
    """SVG elements of one panel whose top-left corner is (dx, dy)."""
    x0, x1 = dx + LEFT, dx + PANEL_W - RIGHT
    y0, y1 = dy + TOP, dy + PANEL_H - BOTTOM  # y0 top, y1 bottom
    lo, hi = _value_range(list(lines.values()))
    pad = 0.5 if n_epochs <= 1 else 0.03 * (n_epochs - 1)  # the first and last epoch clear of the frame
    e_lo, e_hi = 1.0 - pad, max(n_epochs, 1) + pad

    def x_of(epoch: float) -> float:
        return x0 + (epoch - e_lo) / (e_hi - e_lo) * (x1 - x0)

    def y_of(v: float) -> float:
        return y1 - (v - lo) / (hi - lo) * (y1 - y0)

    out = [f'<text x="{(x0 + x1) / 2:.1f}" y="{dy + 16}" text-anchor="middle" font-size="12">{escape(term)}</text>',
           f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" fill="none" stroke="#444"/>']
    for v in nice_ticks(lo, hi):
        y = y_of(v)
        out.append(f'<line x1="{x0 - 4:.1f}" y1="{y:.1f}" x2="{x0:.1f}" y2="{y:.1f}" stroke="#444"/>')
        out.append(f'<text x="{x0 - 6:.1f}" y="{y + 3.5:.1f}" text-anchor="end" font-size="9">{_label(v)}</text>')
    for e in [t for t in nice_ticks(1, max(n_epochs, 1), 5) if float(t).is_integer()]:
        x = x_of(e)
        out.append(f'<line x1="{x:.1f}" y1="{y1:.1f}" x2="{x:.1f}" y2="{y1 + 4:.1f}" stroke="#444"/>')
        out.append(f'<text x="{x:.1f}" y="{y1 + 14:.1f}" text-anchor="middle" font-size="9">{int(e)}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{y1 + 27:.1f}" text-anchor="middle" font-size="10">epoch</text>')
    for name, values in lines.items():
        for run in _paths(values, x_of, y_of):
            if len(run) == 1:
                (x, y), = run
                out.append(f'<circle class="{name}" cx="{x:.2f}" cy="{y:.2f}" r="2" fill="{COLORS[name]}"/>')
            else:
                pts = " ".join(f"{x:.2f},{y:.2f}" for x, y in run)
                out.append(f'<polyline class="{name}" points="{pts}" fill="none" stroke="{COLORS[name]}" stroke-width="1.5"/>')
    if len(lines) > 1:  # the legend, top right inside the plot area
        for i, name in enumerate(lines):
            y = y0 + 12 + 13 * i
            out.append(f'<line x1="{x1 - 78:.1f}" y1="{y - 3:.1f}" x2="{x1 - 62:.1f}" y2="{y - 3:.1f}" stroke="{COLORS[name]}" stroke-width="1.5"/>')
            out.append(f'<text x="{x1 - 58:.1f}" y="{y:.1f}" font-size="9">{name}</text>')
    return out


def loss_curves_svg(history: dict[str, list[float]], title: str = "") -> str:
    """The SVG document: one panel per non-zero term of ``history`` (an epoch's value per entry)."""
    terms = [t for t in TERMS if any(v != 0 for v in history.get(t, []))] or ["total"]
    n_epochs = max((len(history.get(t, [])) for t in terms), default=0)
    top = TITLE_H if title else 0
    width, height = PANEL_W * len(terms), PANEL_H + top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             'font-family="DejaVu Sans, Arial, sans-serif">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        parts.append(f'<text x="{width / 2:.1f}" y="17" text-anchor="middle" font-size="13">{escape(title)}</text>')
    for i, term in enumerate(terms):
        lines = {"training": list(history.get(term, []))}
        if term == "total" and history.get("validation"):
            lines["validation"] = list(history["validation"])
        parts.extend(_panel(term, lines, n_epochs, PANEL_W * i, top))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def loss_curves(history: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """Write the loss curves of ``history`` to ``path`` (an .svg file)."""
    Path(path).write_text(loss_curves_svg(history, title), encoding="utf-8")
    return Path(path)
