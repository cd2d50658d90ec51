"""Plots for the evaluation report, drawn with matplotlib's object API (no pyplot, no global backend).

Every function returns PNG bytes. Curves and points come from :mod:`pneumoscan.metrics`, so a plot
never computes a metric of its own.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumoscan import metrics as M

__all__ = [
    "INSET_LABEL",
    "THRESHOLD_STYLE",
    "calibration_figure",
    "comparison_roc",
    "confusion_figure",
    "pr_figure",
    "roc_axes",
    "roc_figure",
    "score_histogram",
]

#: name -> (label, colour, marker) for the thresholds drawn on every plot.
THRESHOLD_STYLE = {
    "operating": ("operating", "#c0392b", "o"),
    "fixed_0.5": ("fixed 50", "#555555", "s"),
    "youden": ("Youden", "#2471a3", "D"),
}
#: Marker sizes, largest first: hollow markers nest inside each other, so points that coincide stay visible.
_MARKER_SIZE = {"operating": 15, "fixed_0.5": 10.5, "youden": 6.5}
#: The label of the ROC plot's zoomed inset (tests look for it among the figure's axes).
INSET_LABEL = "roc-inset-top-left"
#: The largest zoom worth an inset; beyond it the points are far apart and are named on the main plot.
_MAX_ZOOM = 0.5
_DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _figure(w: float = 5.0, h: float = 4.2, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, list(np.atleast_1d(axes))


def _label(name: str, t: float) -> str:
    """Legend text of a threshold, on the 0-100 score scale people see (e.g. ``operating (threshold 44.2)``)."""
    return f"{THRESHOLD_STYLE.get(name, (name,))[0]} (threshold {M.score_100(t):.1f})"


def _threshold_marker(ax: Axes, name: str, x: float, y: float, label: str | None = None) -> None:
    """A hollow marker, sized by threshold, so that markers on the same point nest instead of hiding each other."""
    _, col, mk = THRESHOLD_STYLE.get(name, (name, "black", "x"))
    ax.plot(x, y, mk, color=col, ms=_MARKER_SIZE.get(name, 8), mfc="none", mew=2, label=label, zorder=3)


def _zoom_span(points: Sequence[tuple[float, float]]) -> float:
    """Side of the square zoom on the ROC's top-left corner that holds every threshold point with a margin
    (larger than :data:`_MAX_ZOOM` when a point lies far from the corner: then no inset is drawn)."""
    far = max([0.04] + [max(fpr, 1 - tpr) for fpr, tpr in points])
    return float(far * 1.3 + 0.02)


def _name_points(ax: Axes, points: Mapping[str, tuple[float, float]]) -> None:
    """Name the thresholds' points in a row in the axes' lower part (below a ROC curve, where there is room), left to
    right in the points' order, so that the leader lines joining each label to its point do not cross; thresholds that give the same point share one label
    (``operating = Youden``), so that a point hidden under another is still named."""
    shared: dict[tuple[float, float], list[str]] = {}
    for name, xy in points.items():
        shared.setdefault((round(xy[0], 9), round(xy[1], 9)), []).append(THRESHOLD_STYLE.get(name, (name,))[0])
    for k, ((x, yy), names) in enumerate(sorted(shared.items())):
        ax.annotate(" = ".join(names), (x, yy), xytext=((k + 0.5) / len(shared), 0.3), textcoords="axes fraction",
                    ha="center", va="center", fontsize=7,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#999999", "alpha": 0.9},
                    arrowprops={"arrowstyle": "-", "color": "#777777", "lw": 0.8, "shrinkB": 6})


def roc_axes(y: np.ndarray, p: np.ndarray, thresholds: Mapping[str, float]) -> Figure:
    """The ROC figure: the curve, a marker at each named threshold, and an inset zoomed on the top-left corner,
    where good models' threshold points crowd together (the inset's label is :data:`INSET_LABEL`). The inset shows
    the smallest square corner that holds every point; when that would exceed :data:`_MAX_ZOOM` there is nothing
    to zoom on, and the points are named on the main plot instead."""
    fig, (ax,) = _figure(5.0, 5.4)
    fpr, tpr, _ = M.roc_points(y, p)
    points = {}
    for name, t in thresholds.items():
        tm = M.threshold_metrics(y, p, t)
        points[name] = (float(np.nan_to_num(1 - tm["specificity"])), float(np.nan_to_num(tm["sensitivity"])))
    ax.plot(fpr, tpr, color="black", lw=1.5, label=f"ROC (AUC = {M.roc_auc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=1, ls="--", label="chance")
    for name, (x, yy) in points.items():
        _threshold_marker(ax, name, x, yy, _label(name, thresholds[name]))
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title="ROC curve", aspect="equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=2, frameon=False)
    span = _zoom_span(list(points.values()))
    if span > _MAX_ZOOM:  # a point lies far from the corner: nothing crowds there, name the points in place
        _name_points(ax, points)
        return fig
    ins = ax.inset_axes([0.40, 0.05, 0.56, 0.56], label=INSET_LABEL)
    ins.plot(fpr, tpr, color="black", lw=1.5)
    for name, (x, yy) in points.items():
        _threshold_marker(ins, name, x, yy)
    _name_points(ins, points)
    pad = span * 0.08
    ins.set(xlim=(-pad, span), ylim=(1 - span, 1 + pad))
    ins.set_title(f"zoom: top-left {span:.2f} x {span:.2f}", fontsize=7, pad=2)
    ins.tick_params(labelsize=7)
    ins.grid(alpha=0.3)
    ins.set_facecolor("#fbfbfb")
    ax.indicate_inset_zoom(ins, edgecolor="#555555")
    return fig


def roc_figure(y: np.ndarray, p: np.ndarray, thresholds: Mapping[str, float]) -> bytes:
    """PNG of :func:`roc_axes`."""
    return _png(roc_axes(y, p, thresholds))


def pr_figure(y: np.ndarray, p: np.ndarray, thresholds: Mapping[str, float]) -> bytes:
    """Precision-recall curve with a marker at each named threshold and the prevalence as a baseline."""
    fig, (ax,) = _figure()
    recall, precision, _ = M.pr_points(y, p)
    ax.step(np.r_[0.0, recall], np.r_[precision[0] if precision.size else 1.0, precision], where="pre",
            color="black", lw=1.5, label=f"PR (AP = {M.pr_auc(y, p):.3f})")
    ax.axhline(float(np.mean(y)), color="#bbbbbb", lw=1, ls="--", label=f"prevalence ({np.mean(y):.2f})")
    for name, t in thresholds.items():
        tm = M.threshold_metrics(y, p, t)
        _threshold_marker(ax, name, tm["sensitivity"], tm["ppv"], _label(name, t))
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           title="Precision-recall curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def confusion_figure(conf: Mapping[str, int], threshold: float) -> bytes:
    """Confusion matrix at the operating threshold: counts (left) and rates per true class (right)."""
    counts = np.array([[conf["tn"], conf["fp"]], [conf["fn"], conf["tp"]]], dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.full_like(counts, np.nan), where=rows > 0)
    fig, axes = _figure(8.4, 3.8, ncols=2)
    for ax, mat, title, fmt in ((axes[0], counts, "counts", "{:.0f}"), (axes[1], rates, "rate per true class", "{:.1%}")):
        shown = mat / np.nanmax(mat) if np.nanmax(mat) > 0 else mat
        ax.imshow(np.nan_to_num(shown), cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                v = mat[i, j]
                txt = "-" if np.isnan(v) else fmt.format(v)
                ax.text(j, i, txt, ha="center", va="center", fontsize=13,
                        color="white" if np.nan_to_num(shown[i, j]) > 0.55 else "black")
        ax.set_xticks([0, 1], [M.decision_words("NORMAL"), M.decision_words("PNEUMONIA").replace(": ", ":\n")])
        ax.set_yticks([0, 1], ["Normal", "Pneumonia"])
        ax.set(xlabel="model's decision", ylabel="true label", title=title)
    fig.suptitle(f"Operating threshold {M.score_100(threshold):.1f} (score 0-100)", fontsize=11)
    return _png(fig)


def calibration_figure(y: np.ndarray, p_raw: np.ndarray, p_cal: np.ndarray, temperature: float, n_bins: int = 10) -> bytes:
    """Reliability diagram (top) with ECE and Brier score, before and after temperature scaling, and the
    number of images per bin (bottom)."""
    fig = Figure(figsize=(5.2, 5.4), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", ls="--", lw=1, label="perfect calibration")
    series = [("raw (T = 1)", p_raw, "#7f7f7f")]
    if abs(temperature - 1.0) > 1e-6:
        series.append((f"temperature-scaled (T = {temperature:.2f})", p_cal, "#c0392b"))
    width = 1.0 / n_bins
    for k, (lab, p, col) in enumerate(series):
        r = M.reliability_curve(y, p, n_bins)
        ok = r["count"] > 0
        ax.plot(r["mean_score"][ok], r["frac_pos"][ok], "o-", color=col,
                label=f"{lab}: ECE {M.ece(y, p, n_bins):.3f}, Brier {M.brier(y, p):.3f}")
        ax_n.bar(r["edges"][:-1] + width * (0.25 + 0.5 * k), r["count"], width=width / len(series) * 0.9,
                 color=col, alpha=0.8)
    ax.set(ylabel="observed fraction with pneumonia", xlim=(0, 1), ylim=(-0.02, 1.02), title="Calibration")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax_n.set(xlabel="predicted probability of pneumonia (bin of width 0.1)", ylabel="images")
    ax_n.set_yscale("symlog")
    return _png(fig)


def score_histogram(y: np.ndarray, p: np.ndarray, thresholds: Mapping[str, float]) -> bytes:
    """Histogram of the score (the probability on 0-100) per true class, with the threshold lines."""
    fig, (ax,) = _figure(7.6, 3.8)
    bins = np.linspace(0, 100, 41)
    for label, name, col in ((0, "Normal", "#2e86c1"), (1, "Pneumonia", "#e67e22")):
        ax.hist(100 * p[y == label], bins=bins, alpha=0.6, color=col, label=f"{name} (n = {int(np.sum(y == label))})")
    for name, t in thresholds.items():
        _, col, _ = THRESHOLD_STYLE.get(name, (name, "black", "x"))
        ax.axvline(M.score_100(t), color=col, lw=2 if name == "operating" else 1,
                   ls="-" if name == "operating" else "--", label=_label(name, t))
    ax.set(xlabel="score (probability of pneumonia x 100)", ylabel="images", xlim=(0, 100),
           title="Scores per true class")
    ax.set_yscale("symlog")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _png(fig)


def comparison_roc(y: np.ndarray, probs: Sequence[np.ndarray], labels: Sequence[str],
                   operating: Sequence[float]) -> bytes:
    """ROC curves of several models on the same images, each with its operating point."""
    fig, (ax,) = _figure(5.6, 4.8)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=1, ls="--")
    for k, (p, lab, t) in enumerate(zip(probs, labels, operating)):
        fpr, tpr, _ = M.roc_points(y, p)
        line, = ax.plot(fpr, tpr, lw=1.5, label=f"{lab} (AUC = {M.roc_auc(y, p):.3f})")
        tm = M.threshold_metrics(y, p, t)
        ax.plot(1 - tm["specificity"], tm["sensitivity"], "o", color=line.get_color(), ms=8, mec="white")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           title="ROC curves (dots: operating points)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def cause_figure(y: np.ndarray, p: np.ndarray, threshold: float, p_raw: np.ndarray | None = None,
                 n_bins: int = 10) -> bytes:
    """The cause output on the films whose cause is known: ROC of viral against bacterial with the stored cause
    threshold marked (left), and its reliability diagram, before and after its temperature (right)."""
    fig = Figure(figsize=(9.6, 4.2), layout="constrained")
    ax, ax_c = fig.subplots(1, 2)
    fpr, tpr, _ = M.roc_points(y, p)
    ax.plot(fpr, tpr, color="#8e44ad", lw=2, label=f"AUC {M.roc_auc(y, p):.3f}")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", ls="--", lw=1)
    sens, spec = M.sensitivity(y, p, threshold), M.specificity(y, p, threshold)
    ax.plot([1 - spec], [sens], "o", color="black", label=f"cause threshold {M.score_100(threshold):.1f} / 100")
    ax.set(xlabel="bacterial films called viral (1 - specificity)", ylabel="viral films called viral (sensitivity)",
           title="Viral against bacterial", xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax_c.plot([0, 1], [0, 1], color="#bbbbbb", ls="--", lw=1, label="perfect calibration")
    series = ([("raw (T = 1)", p_raw, "#7f7f7f")] if p_raw is not None else []) + [("as stored", p, "#8e44ad")]
    for lab, q, col in series:
        r = M.reliability_curve(y, q, n_bins)
        ok = r["count"] > 0
        ax_c.plot(r["mean_score"][ok], r["frac_pos"][ok], "o-", color=col, label=f"{lab}: ECE {M.ece(y, q, n_bins):.3f}")
    ax_c.set(xlabel="predicted probability of a viral pattern", ylabel="observed fraction viral", xlim=(0, 1),
             ylim=(-0.02, 1.02), title="Calibration of the cause output")
    ax_c.grid(alpha=0.3)
    ax_c.legend(loc="upper left", fontsize=8)
    return _png(fig)
