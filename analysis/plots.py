"""Evaluation figures written straight to PNG files.

Figures are built from :class:`matplotlib.figure.Figure` with an explicit Agg canvas instead of
pyplot, so this module never changes the global backend or keeps figures alive in pyplot's
registry: a caller running an interactive session or the Flask app is unaffected, and headless
workers need no display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from analysis.metrics import expected_calibration_error, roc_auc, roc_points

_DPI = 120
# Speaker names on the y axis stop being readable beyond this many rows.
_MAX_SPEAKER_LABELS = 60


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def roc_plot(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path, title: str = "ROC curves") -> Path:
    """One ROC curve per named model on shared axes, AUC in the legend; returns the PNG path."""
    if not curves:
        raise ValueError("roc_plot needs at least one curve")
    fig = _new_figure(6.0, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance (AUC 0.50)")
    for name, (y, p) in curves.items():
        fpr, tpr, _ = roc_points(y, p)
        ax.plot(fpr, tpr, linewidth=2, label=f"{name} (AUC {roc_auc(y, p):.3f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def calibration_plot(
    y: ArrayLike, p: ArrayLike, path: str | Path, n_bins: int = 10, title: str = "Calibration"
) -> Path:
    """Reliability diagram (observed pain rate per probability bin) over a histogram of ``p``.

    Bins match :func:`analysis.metrics.expected_calibration_error`, whose value is in the title;
    marker area grows with the number of clips in the bin so sparse bins are not over-read.
    """
    ya = np.asarray(y).astype(np.float64)
    pa = np.asarray(p, dtype=np.float64)
    ece = expected_calibration_error(ya.astype(np.int64), pa, n_bins)
    bins = np.minimum((pa * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    used = counts > 0
    mean_p = np.bincount(bins, weights=pa, minlength=n_bins)[used] / counts[used]
    rate = np.bincount(bins, weights=ya, minlength=n_bins)[used] / counts[used]

    fig = _new_figure(6.0, 7.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    sizes = 20 + 280 * counts[used] / counts.max()
    top.plot(mean_p, rate, color="C0", linewidth=1.5)
    top.scatter(mean_p, rate, s=sizes, color="C0", zorder=3, label="model (area ~ clips in bin)")
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("Observed fraction of pain clips")
    top.set_title(f"{title} (ECE {ece:.3f}, {n_bins} bins, n={pa.size})")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small")
    edges = np.linspace(0, 1, n_bins + 1)
    bottom.hist([pa[ya == 0], pa[ya == 1]], bins=edges, stacked=True, label=["no pain", "pain"])
    bottom.set_xlabel("Predicted probability of pain")
    bottom.set_ylabel("Clips")
    bottom.legend(loc="upper center", fontsize="small", ncols=2)
    return _save(fig, path)


def per_speaker_plot(
    y: ArrayLike,
    p: ArrayLike,
    groups: ArrayLike,
    path: str | Path,
    title: str = "Mean score per speaker",
    label_speakers: bool = True,
) -> Path:
    """Each speaker's mean score on no-pain and on pain clips, sorted by the gap between them.

    The pooled AUC can hide that a model works for most voices and fails badly for a few (or
    separates speakers rather than pain). One row per speaker makes that visible: a dot pair
    per row, joined by a line, green when the speaker's pain clips score higher on average.
    Speakers with only one class show a single dot and sort to the bottom.
    """
    ya = np.asarray(y).astype(bool)
    pa = np.asarray(p, dtype=np.float64)
    ga = np.asarray(groups)
    if not (ya.shape == pa.shape == ga.shape):
        raise ValueError("y, p and groups must have the same length")
    names, inverse = np.unique(ga, return_inverse=True)
    k = names.size

    def class_means(mask: np.ndarray) -> np.ndarray:
        n = np.bincount(inverse[mask], minlength=k).astype(np.float64)
        total = np.bincount(inverse[mask], weights=pa[mask], minlength=k)
        out = np.full(k, np.nan)
        np.divide(total, n, out=out, where=n > 0)
        return out

    neg_mean, pos_mean = class_means(~ya), class_means(ya)
    gap = pos_mean - neg_mean
    order = np.argsort(np.where(np.isnan(gap), -np.inf, gap), kind="stable")  # best at the top
    rows = np.arange(k)
    neg_s, pos_s, gap_s = neg_mean[order], pos_mean[order], gap[order]

    fig = _new_figure(7.0, min(max(3.0, 0.22 * k + 1.5), 30.0))
    ax = fig.add_subplot()
    both = ~np.isnan(gap_s)
    for r in rows[both]:
        colour = "tab:green" if gap_s[r] > 0 else "tab:red"
        ax.plot([neg_s[r], pos_s[r]], [r, r], color=colour, linewidth=1.2, alpha=0.7)
    ax.scatter(neg_s, rows, marker="o", color="tab:blue", label="no-pain clips", zorder=3)
    ax.scatter(pos_s, rows, marker="^", color="tab:orange", label="pain clips", zorder=3)
    if label_speakers and k <= _MAX_SPEAKER_LABELS:
        ax.set_yticks(rows, [str(x) for x in names[order]], fontsize="small")
    else:
        ax.set_yticks([])
    ax.set_ylim(-1, k)
    ax.set_xlabel("Mean score")
    ax.set_ylabel("Speaker (sorted by pain minus no-pain mean)")
    n_right = int(np.sum(gap_s[both] > 0))
    ax.set_title(f"{title}\npain scored higher for {n_right} of {int(both.sum())} speakers with both classes")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(fig, path)


def confusion_plot(cm: ArrayLike, labels: Sequence[Any], path: str | Path, title: str = "Confusion matrix") -> Path:
    """Confusion matrix heat map, coloured by row share (recall) and annotated with counts and %.

    Colouring by row share keeps a rare class readable: its recall is as visible as the common
    class's even though its counts are small.
    """
    m = np.asarray(cm, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
        raise ValueError("cm must be square with one row per label")
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros(m.shape), where=totals > 0)
    k = m.shape[0]
    side = max(4.0, 1.1 * k + 2.5)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="Share of true class")
    for i in range(k):
        for j in range(k):
            colour = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, f"{m[i, j]}\n{100 * share[i, j]:.0f}%", ha="center", va="center", color=colour)
    names = [str(x) for x in labels]
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(f"{title} (n={int(m.sum())})")
    return _save(fig, path)
