"""Server-side SVG charts: no chart library, no JavaScript, nothing fetched at run time.

Two small charts, each returned as :class:`markupsafe.Markup` ready to place inline in a template:

- :func:`probability_chart`: each utterance's pain probability at its place in the call (seconds
  from the start of the stream), joined by a line, with the flag threshold drawn across. One
  ``<circle class="utterance">`` per utterance, so tests (and screen readers, through each point's
  ``<title>``) can count them; the threshold is a ``<line class="threshold">``.
- :func:`measures_plot`: a patient's baseline measures against the population's, one row per
  measure. Measures have different units, so every row is drawn on its own scale: the population's
  mean in the middle, one standard deviation either side shaded, and the patient's value as a dot,
  placed by how many population standard deviations it lies from the mean (clipped at three). The
  numbers in their own units are printed beside each row, because the picture alone hides units.

Everything interpolated into the SVG is either a number formatted here or text escaped with
:func:`markupsafe.escape`. Colours come from CSS classes (``dashboard/static/painline.css``), so
the charts follow the page's contrast and print styles; the few inline colours are fallbacks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape


@dataclass(frozen=True)
class ChartPoint:
    """One utterance on the probability chart."""

    seq: int
    start_s: float
    end_s: float
    probability: float
    speaker_mismatch: bool = False


@dataclass(frozen=True)
class MeasureRow:
    """One measure on the baseline plot: the patient's mean against the population's mean and spread."""

    key: str
    label: str
    unit: str
    patient: float | None
    population_mean: float | None
    population_sd: float | None
    decimals: int = 1


def _num(value: float) -> str:
    """A coordinate with two decimals: short SVG, sub-pixel precision."""
    return f"{value:.2f}"


def _nice_step(span_s: float) -> float:
    """A round tick spacing (1, 2, 5 x 10^k seconds) giving about five ticks over ``span_s``."""
    if span_s <= 0:
        return 1.0
    raw = span_s / 5.0
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return float(mult * power)
    return float(10 * power)


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def probability_chart(
    points: Sequence[ChartPoint],
    threshold: float | None,
    *,
    duration_s: float | None = None,
    width: int = 640,
    height: int = 240,
    title: str = "Pain probability of each utterance over the call",
) -> Markup:
    """An inline SVG of utterance probabilities over call time, with the threshold line.

    ``duration_s`` widens the time axis to the whole call (for a finished call); otherwise the axis
    ends just after the last utterance. Points whose speaker check failed are drawn hollow, since
    they were scored without this caller's baseline.
    """
    left, right, top, bottom = 48, 16, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    last = max((p.end_s for p in points), default=0.0)
    span = max(duration_s or 0.0, last, 10.0)
    step = _nice_step(span)
    span = math.ceil(span / step) * step

    def x(t: float) -> float:
        return left + plot_w * (t / span)

    def y(p: float) -> float:
        return top + plot_h * (1.0 - min(max(p, 0.0), 1.0))

    ordered = sorted(points, key=lambda p: (p.start_s, p.seq))
    desc = (
        f"{len(ordered)} utterances scored"
        + (f"; threshold {threshold:.2f}" if threshold is not None else "; no threshold known")
        + (f"; highest {max(p.probability for p in ordered):.2f}" if ordered else "")
    )
    parts: list[str] = [
        f'<svg class="chart probability-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}"'
        f' width="100%" role="img" aria-labelledby="pc-title pc-desc" preserveAspectRatio="xMidYMid meet">',
        f'<title id="pc-title">{escape(title)}</title>',
        f'<desc id="pc-desc">{escape(desc)}</desc>',
        f'<rect class="plot-area" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none"/>',
    ]
    # y grid: 0, .25, .5, .75, 1
    for i in range(5):
        p = i / 4
        yy = _num(y(p))
        parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{yy}" y2="{yy}"/>')
        parts.append(f'<text class="tick" x="{left - 6}" y="{yy}" text-anchor="end" dy="0.35em">{p:.2f}</text>')
    # x ticks every `step` seconds
    t = 0.0
    while t <= span + 1e-9:
        xx = _num(x(t))
        parts.append(f'<line class="tick-mark" x1="{xx}" x2="{xx}" y1="{top + plot_h}" y2="{top + plot_h + 4}"/>')
        parts.append(f'<text class="tick" x="{xx}" y="{top + plot_h + 16}" text-anchor="middle">{_clock(t)}</text>')
        t += step
    parts.append(
        f'<text class="axis-label" x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">'
        "time into call (min:s)</text>"
    )
    parts.append(
        f'<text class="axis-label" transform="translate(12 {top + plot_h / 2:.0f}) rotate(-90)" '
        'text-anchor="middle">probability</text>'
    )
    if threshold is not None:
        ty = _num(y(threshold))
        parts.append(
            f'<line class="threshold" x1="{left}" x2="{left + plot_w}" y1="{ty}" y2="{ty}" '
            f'stroke="#b00020" stroke-dasharray="6 4" data-threshold="{threshold:.4f}"/>'
        )
        parts.append(
            f'<text class="threshold-label" x="{left + plot_w - 4}" y="{ty}" dy="-0.4em" text-anchor="end">'
            f"threshold {threshold:.2f}</text>"
        )
    if len(ordered) > 1:
        path = " ".join(f"{_num(x((pt.start_s + pt.end_s) / 2))},{_num(y(pt.probability))}" for pt in ordered)
        parts.append(f'<polyline class="trace" fill="none" points="{path}"/>')
    for pt in ordered:
        mid = (pt.start_s + pt.end_s) / 2
        over = threshold is not None and pt.probability >= threshold
        classes = "utterance" + (" over" if over else "") + (" other-speaker" if pt.speaker_mismatch else "")
        label = f"utterance {pt.seq + 1} at {_clock(pt.start_s)}: probability {pt.probability:.2f}"
        if pt.speaker_mismatch:
            label += " (speaker check failed)"
        parts.append(
            f'<circle class="{classes}" cx="{_num(x(mid))}" cy="{_num(y(pt.probability))}" r="5" '
            f'data-seq="{pt.seq}" data-probability="{pt.probability:.4f}"><title>{escape(label)}</title></circle>'
        )
    if not ordered:
        parts.append(
            f'<text class="empty" x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" text-anchor="middle">'
            "no utterance scored yet</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _fmt(value: float | None, decimals: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def measures_plot(
    rows: Sequence[MeasureRow],
    *,
    width: int = 720,
    row_height: int = 34,
    title: str = "Baseline voice measures against the population",
) -> Markup:
    """An inline SVG dot plot: per measure, the patient's value against population mean ± 1 SD.

    A row without a population spread (one caller, or none) places the dot on the mean line and
    says so; a row without a patient value draws the population only.
    """
    label_w, value_w = 230, 170
    left, right = label_w, value_w
    plot_w = width - left - right
    top = 24
    height = top + row_height * len(rows) + 28
    limit = 3.0

    def x(z: float) -> float:
        return left + plot_w * (min(max(z, -limit), limit) + limit) / (2 * limit)

    parts: list[str] = [
        f'<svg class="chart measures-plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}"'
        f' width="100%" role="img" aria-labelledby="mp-title mp-desc">',
        f'<title id="mp-title">{escape(title)}</title>',
    ]
    summary = []
    for r in rows:
        summary.append(
            f"{r.label}: patient {_fmt(r.patient, r.decimals)} {r.unit}, population "
            f"{_fmt(r.population_mean, r.decimals)} ± {_fmt(r.population_sd, r.decimals)} {r.unit}"
        )
    parts.append(f'<desc id="mp-desc">{escape("; ".join(summary) or "no measures")}</desc>')
    for sd_tick in (-2, -1, 0, 1, 2):
        xx = _num(x(sd_tick))
        cls = "axis-zero" if sd_tick == 0 else "grid"
        parts.append(f'<line class="{cls}" x1="{xx}" x2="{xx}" y1="{top - 6}" y2="{height - 24}"/>')
        label = "mean" if sd_tick == 0 else f"{sd_tick:+d} SD"
        parts.append(f'<text class="tick" x="{xx}" y="{top - 10}" text-anchor="middle">{label}</text>')
    for i, r in enumerate(rows):
        cy = top + row_height * i + row_height / 2
        parts.append(f'<g class="measure-row" data-measure="{escape(r.key)}">')
        parts.append(
            f'<text class="measure-label" x="{label_w - 10}" y="{_num(cy)}" text-anchor="end" dy="0.35em">'
            f"{escape(r.label)} ({escape(r.unit)})</text>"
        )
        parts.append(
            f'<rect class="band" x="{_num(x(-1))}" y="{_num(cy - 7)}" width="{_num(x(1) - x(-1))}" height="14" rx="3"/>'
        )
        if r.patient is not None and math.isfinite(r.patient) and r.population_mean is not None:
            sd = r.population_sd
            z = (r.patient - r.population_mean) / sd if sd is not None and sd > 0 else 0.0
            clipped = abs(z) > limit
            parts.append(
                f'<circle class="patient-dot{" clipped" if clipped else ""}" cx="{_num(x(z))}" cy="{_num(cy)}" '
                f'r="6" data-z="{z:.2f}"><title>{escape(r.label)}: {z:+.1f} SD from the population'
                f"</title></circle>"
            )
        elif r.patient is not None and math.isfinite(r.patient):
            parts.append(f'<circle class="patient-dot" cx="{_num(x(0))}" cy="{_num(cy)}" r="6"/>')
        text = (
            f"{_fmt(r.patient, r.decimals)} vs {_fmt(r.population_mean, r.decimals)}"
            f" ± {_fmt(r.population_sd, r.decimals)}"
        )
        parts.append(
            f'<text class="measure-value" x="{left + plot_w + 10}" y="{_num(cy)}" dy="0.35em">{escape(text)}</text>'
        )
        parts.append("</g>")
    legend_y = height - 8
    parts.append(f'<circle class="patient-dot" cx="{left + 6}" cy="{legend_y - 4}" r="5"/>')
    parts.append(f'<text class="legend" x="{left + 16}" y="{legend_y}">this patient</text>')
    parts.append(f'<rect class="band" x="{left + 110}" y="{legend_y - 10}" width="24" height="12" rx="3"/>')
    parts.append(f'<text class="legend" x="{left + 140}" y="{legend_y}">population mean ± 1 SD</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


__all__ = ["ChartPoint", "MeasureRow", "measures_plot", "probability_chart"]
