"""The evaluation report: one self-contained HTML file (inline CSS, plots as base64 PNG and gallery images as JPEG
data URIs, no script, no external reference) rendered from ``template.html`` with Jinja2, plus the plots as PNG
files. Scores and thresholds are shown on the 0-100 scale and decisions in the one wording
(:func:`pneumoscan.metrics.score_100`, :func:`pneumoscan.metrics.decision_words`); the gallery is
:mod:`.gallery`.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup, escape

from pneumoscan.checkpoint import FALLBACK_THRESHOLD
from pneumoscan.constants import CAUSE_CAVEAT, DECISION_WORDS, DISCLAIMER
from pneumoscan.evaluation.report import plots
from pneumoscan.evaluation.report.gallery import (
    CAUSE_KINDS,
    GALLERY_SIZES,
    GALLERY_TITLES,
    build_gallery,
)
from pneumoscan import metrics as M
from pneumoscan.metrics import score_100
from pneumoscan.metrics.uncertainty import CI_EXACT, CI_NO_SPREAD
from pneumoscan.onboarding.cause import cause_targets
from pneumoscan.result import Result
from pneumoscan.utils import atomic_write_bytes, atomic_write_text

__all__ = ["GALLERY_SIZES", "render_html", "write_report"]
KERMANY_CITATION = ("Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images "
                    "for Classification. Mendeley Data, v2, 2018. doi:10.17632/rscbjbr9sj.2. Described in Kermany et al., "
                    "Cell 172(5):1122-1131, 2018. Licence: CC BY 4.0.")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pct(v: Any, digits: int = 1) -> str:
    return f"{100 * v:.{digits}f}%" if _finite(v) else "n/a"


def _num(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if _finite(v) else "n/a"


def _s100(v: Any) -> str:
    """A probability or threshold on the 0-100 score scale people see (0.4523 -> "45.2")."""
    return f"{score_100(v):.1f}" if _finite(v) else "n/a"


def _ci(c: Any, kind: str = "pct") -> Markup:
    """An interval as text. ``c`` is ``[lo, hi]`` or a summary value ``{"value", "ci", "ci_method"}``: a
    Clopper-Pearson interval is marked "exact", a zero-width bootstrap interval is not shown as one."""
    method = c.get("ci_method") if isinstance(c, dict) else None
    c = c.get("ci") if isinstance(c, dict) else c
    if not c or not all(_finite(v) for v in c):
        return Markup("")
    f = _pct if kind == "pct" else _num
    if method == CI_NO_SPREAD:
        return Markup('<span title="every bootstrap resample gave {v}, so the bootstrap cannot say how uncertain '
                      'it is">no spread in resamples</span>').format(v=f(c[0]))
    text = escape(f"{f(c[0])} to {f(c[1])}")
    if method == CI_EXACT:
        return Markup('{t} <abbr class="exact" title="Clopper-Pearson exact binomial interval: every bootstrap '
                      'resample gave the same value">exact</abbr>').format(t=text)
    return Markup(text)


def render_html(context: dict[str, Any]) -> str:
    """Render the report template with ``context`` (see :func:`write_report` for its keys)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, ci=_ci, s100=_s100)
    template = env.from_string((files("pneumoscan.evaluation.report") / "template.html").read_text(encoding="utf-8"))
    return template.render(**context)


def write_report(result: dict[str, Any], scored: Sequence[Any], records: Sequence[Any],
                 results: Sequence[Sequence[Result]], out_dir: Path, prefixes: Sequence[str]) -> dict[str, str]:
    """Draw the plots (PNG files in ``out_dir``) and write ``out_dir/report.html``; returns name -> file name."""
    y = np.array([r.label for r in records], dtype=np.int64)
    outputs: dict[str, str] = {}

    def save(name: str, png: bytes) -> str:
        atomic_write_bytes(out_dir / name, png)
        outputs[name.removesuffix(".png")] = name
        return data_uri(png)

    views = []
    for entry, sm, res, pre in zip(result["models"], scored, results, prefixes):
        ths = {k: v["threshold"] for k, v in entry["summary"]["thresholds"].items()}
        op = entry["summary"]["thresholds"]["operating"]
        figs = {
            "roc": save(f"{pre}roc.png", plots.roc_figure(y, sm.probs, ths)),
            "pr": save(f"{pre}pr.png", plots.pr_figure(y, sm.probs, ths)),
            "confusion": save(f"{pre}confusion.png", plots.confusion_figure(op["confusion"], op["threshold"])),
            "calibration": save(f"{pre}calibration.png", plots.calibration_figure(
                y, sm.probs_raw, sm.probs, entry["calibration"]["temperature"])),
            "scores": save(f"{pre}score-histogram.png", plots.score_histogram(y, sm.probs, ths)),
        }
        if entry.get("cause") and entry["cause"].get("roc_auc") and sm.cause_probs is not None:
            targets = cause_targets(records)
            known = targets >= 0
            raw = None if sm.cause_logits is None else M.apply_temperature(sm.cause_logits, 1.0)[known]
            figs["cause"] = save(f"{pre}cause.png", plots.cause_figure(
                targets[known], sm.cause_probs[known], entry["cause"]["threshold"], raw))
        sid = f"m{entry['index']}"
        views.append({"e": entry, "figs": figs, "gallery": build_gallery(sm, records, res, y, op["threshold"], sid),
                      "sid": sid})
    comparison_fig = None
    if len(scored) > 1:
        comparison_fig = save("comparison-roc.png", plots.comparison_roc(
            y, [s.probs for s in scored], [f"model {e['index']}: {e['model']}" for e in result["models"]],
            [s.checkpoint.threshold for s in scored]))
    context = {"r": result, "views": views, "comparison_fig": comparison_fig, "gallery_titles": GALLERY_TITLES,
               "words": DECISION_WORDS, "gallery_sizes": GALLERY_SIZES,
               "threshold_labels": {k: v[0] for k, v in plots.THRESHOLD_STYLE.items()},
               "metric_labels": {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV (precision)",
                                 "npv": "NPV", "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy",
                                 "f1": "F1"},
               "kermany_citation": KERMANY_CITATION, "disclaimer": DISCLAIMER, "cause_caveat": CAUSE_CAVEAT,
               "cause_kinds": CAUSE_KINDS,
               "fallback_threshold": FALLBACK_THRESHOLD}
    atomic_write_text(out_dir / "report.html", render_html(context))
    outputs["report"] = "report.html"
    outputs["metrics"] = "metrics.json"
    return outputs
