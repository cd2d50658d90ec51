"""Compare training recipes on the VALIDATION split only, and write the comparison to docs/.

Every candidate is scored the same way, from scratch: its logits on the run's own validation images
(``split.csv``), a temperature fitted on them, the operating threshold chosen on them for the
target sensitivity, and patient-bootstrap intervals (:func:`pneumoscan.evaluate.validation_summary`,
the very function that ends every training run). All runs given must share one validation split.

Candidates:

* each run folder's ``best.safetensors``;
* ``--raw RUN``: the raw (not weight-averaged) weights of an EMA run's last epoch, from ``state.safetensors``;
* ``--tta RUN``: test-time augmentation of that run's best model (mean logit over flipped and zoomed views);
* ``--ensemble RUN,RUN[,...]``: the mean logit of several runs' best models.

``--paired RUN_A,RUN_B`` adds a paired test of two runs' best models on the same validation images:
AUC(A) - AUC(B) with DeLong's p-value and a paired patient-bootstrap interval. Overlapping intervals of
two AUCs do not mean "no difference"; the paired interval is the one that answers it.

It also reports the spread of validation AUC across epochs (``metrics.csv``) and across seeds (runs
whose configs differ only in ``train.seed``), and the wall time of each run (``timing.json``).

Usage::

    python scripts/compare_recipes.py runs/a runs/b ... --raw runs/b --tta runs/b --ensemble runs/b,runs/c \\
        --out docs/recipe_comparison
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumoscan import metrics as M
from pneumoscan.checkpoint import load_checkpoint, load_state
from pneumoscan.config import EvalConfig
from pneumoscan.data import build_cache, index_dataset
from pneumoscan.models import create_model
from pneumoscan.onboarding.operating_point import choose_operating_point as validation_summary
from pneumoscan.onboarding.operating_point import cross_fitted_operating_point
from pneumoscan.preprocessing import Preprocessing
from pneumoscan.inference.predictor import model_from_checkpoint
from pneumoscan.inference.scoring import score_cached as score_images
from pneumoscan.training import load_run_config
from pneumoscan.utils import atomic_write_text

RECIPE_KEYS = [("model", "name"), ("model", "image_size"), ("train", "epochs"), ("augment", "intensity"),
               ("train", "ema_decay"), ("train", "ema_warmup"), ("train", "seed")]


class TTA(nn.Module):
    """Mean logit over views of the (normalised) input: identity, horizontal flip, and a 90 % centre zoom of each."""

    def __init__(self, model: nn.Module, zoom: float = 0.9) -> None:
        super().__init__()
        self.model, self.zoom = model, zoom

    def _zoomed(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        c = int(round(s * self.zoom))
        o = (s - c) // 2
        return F.interpolate(x[..., o : o + c, o : o + c], size=(s, s), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = [x, x.flip(-1), self._zoomed(x), self._zoomed(x.flip(-1))]
        return torch.stack([self.model(v).reshape(-1) for v in views]).mean(0)


def _config(run: Path) -> dict[str, Any]:
    """The run's config as ``pneumoscan train --resume`` reads it: keys the run predates get the value it ran with."""
    return dataclasses.asdict(load_run_config(run))


def _recipe(cfg: dict[str, Any], *, without_seed: bool = False) -> tuple:
    return tuple(cfg[s][k] for s, k in RECIPE_KEYS if not (without_seed and k == "seed"))


def _history(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def _seconds(run: Path) -> float | None:
    path = run / "timing.json"
    return float(json.loads(path.read_text())["total_seconds"]) if path.is_file() else None


class Scorer:
    """Validation logits of models on the shared validation split (decoded once per image size)."""

    def __init__(self, split_csv: Path, cache_dir: Path) -> None:
        self.records = list(index_dataset(split_csv, split="val").records)
        self.cache_dir = cache_dir
        self._caches: dict[int, Any] = {}

    def logits(self, model: nn.Module, spec: Preprocessing) -> np.ndarray:
        size = spec.image_size
        if size not in self._caches:
            cache = build_cache(self.records, size, self.cache_dir, progress=False)
            if len(cache.records) != len(self.records):
                sys.exit(f"{len(self.records) - len(cache.records)} validation image(s) failed to decode")
            self._caches[size] = cache
        cache = self._caches[size]
        return score_images(model, cache.images, np.arange(len(cache.records)), spec, batch_size=64, logits=True)


def _summarize(name: str, logits: np.ndarray, scorer: Scorer, eval_cfg: EvalConfig, extra: dict[str, Any]) -> dict[str, Any]:
    meta, probs = validation_summary(scorer.records, logits, eval_cfg)
    s, op = meta["val_summary"], meta["operating_point"]
    th = s["thresholds"]
    return {
        "name": name, **extra,
        "val_auc": s["roc_auc"], "pr_auc": s["pr_auc"], "brier": s["brier"], "ece": s["ece"],
        "operating_threshold": op["threshold"], "temperature": meta["calibration"]["temperature"],
        "operating": {m: th["operating"]["metrics"][m] for m in ("sensitivity", "specificity")},
        "operating_confusion": th["operating"]["confusion"],
        "youden": {m: th["youden"]["metrics"][m] for m in ("sensitivity", "specificity")} if "youden" in th else None,
        "cross_fitted": cross_fitted_operating_point(np.array([r.label for r in scorer.records]), probs,
                                                     [r.patient_id for r in scorer.records],
                                                     target_sensitivity=eval_cfg.target_sensitivity,
                                                     miss_cost=eval_cfg.miss_cost, n_repeats=200, seed=0),
        "logits": logits,
    }


def paired_difference(a: dict[str, Any], b: dict[str, Any], scorer: Scorer, *, n_resamples: int = 2000) -> dict[str, Any]:
    """AUC(a) - AUC(b) on the same validation images: DeLong's test and a paired patient-bootstrap interval."""
    y = np.array([r.label for r in scorer.records])
    groups = [r.patient_id for r in scorer.records]
    d = M.delong_test(y, a["logits"], b["logits"])
    boot = M.bootstrap_auc_difference(y, a["logits"], b["logits"], groups=groups, n_resamples=n_resamples)
    return {"a": a["name"], "b": b["name"], "diff": boot["diff"], "ci": boot["ci"],
            "delong_p": d["p_value"], "delong_se": d["se"], "n_resamples": boot["n_resamples"]}


def _paired_text(p: dict[str, Any]) -> str:
    return f"{p['diff']:+.4f} (paired patient bootstrap {p['ci'][0]:+.4f} to {p['ci'][1]:+.4f}; DeLong p = {p['delong_p']:.3f})"


def _fmt(v: dict[str, Any], digits: int = 4) -> str:
    return f"{v['value']:.{digits}f} ({v['ci'][0]:.{digits}f}–{v['ci'][1]:.{digits}f})"


def _cross(c: dict[str, Any]) -> str:
    se, sp = c["sensitivity"], c["specificity"]
    return (f"{se['median']:.3f} ({se['ci'][0]:.3f}–{se['ci'][1]:.3f}) / "
            f"{sp['median']:.3f} ({sp['ci'][0]:.3f}–{sp['ci'][1]:.3f})")


def markdown_tables(result: dict[str, Any]) -> str:
    """The candidates and the seed spread as Markdown tables (for docs/recipe_comparison.md)."""
    target = result["target_sensitivity"]
    lines = [
        "| candidate | best epoch | val ROC AUC (95 % CI) | sensitivity at the operating threshold | specificity at the operating threshold | "
        "threshold | cross-fitted sensitivity / specificity | val AUC per epoch | train time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result["candidates"]:
        per_epoch = ", ".join(f"{a:.4f}" for a in e.get("epoch_val_auc") or []) or "–"
        if e.get("epoch_val_auc_raw"):
            per_epoch += "<br>raw weights: " + ", ".join("–" if a is None else f"{a:.4f}" for a in e["epoch_val_auc_raw"])
        secs = e.get("train_seconds")
        lines.append(
            f"| {e['name']} | {e.get('best_epoch', '–')} | {_fmt(e['val_auc'])} | {_fmt(e['operating']['sensitivity'], 3)} | "
            f"{_fmt(e['operating']['specificity'], 3)} | {e['operating_threshold']:.3f} | {_cross(e['cross_fitted'])} | {per_epoch} | "
            f"{f'{secs / 60:.0f} min' if secs else '–'} |")
    lines.append("")
    lines.append(f"Operating threshold: among the thresholds whose validation sensitivity reaches {target:.2f}, the one "
                 "with the lowest cost (a missed pneumonia weighs 3 false alarms), on temperature-calibrated "
                 "probabilities, chosen per candidate on the same images, so the two columns before it are optimistic. "
                 "Cross-fitted (pneumoscan.onboarding.operating_point.cross_fitted_operating_point, as `pneumoscan calibrate`): "
                 "the same rule chosen on a random half of the validation patients, stratified by label, and measured "
                 "on the other half, 200 times (median and 2.5–97.5 percentiles of the repeats).")
    if result["seed_spread"]:
        lines += ["", "| recipe | seeds | best val AUC per seed | mean | specificity at the operating threshold per seed |",
                  "|---|---|---|---|---|"]
        for s in result["seed_spread"]:
            r = s["recipe"]
            ema = f"EMA {r['train.ema_decay']}" + (" with warm-up" if r["train.ema_warmup"] and r["train.ema_decay"] else "")
            name = f"{r['model.name']} {r['model.image_size']} px, {r['train.epochs']} epochs, {ema}, intensity {r['augment.intensity']}"
            lines.append(f"| {name} | {', '.join(map(str, s['seeds']))} | {', '.join(f'{a:.4f}' for a in s['best_val_auc'])} | "
                         f"{s['val_auc_mean']:.4f} | {', '.join(f'{a:.3f}' for a in s['operating_specificity'])} |")
    if result.get("paired"):
        lines += ["", "| paired comparison (same validation images) | AUC difference | paired patient-bootstrap 95 % CI | DeLong p |",
                  "|---|---|---|---|"]
        for p in result["paired"]:
            lines.append(f"| {p['a']} - {p['b']} | {p['diff']:+.4f} | {p['ci'][0]:+.4f} to {p['ci'][1]:+.4f} | {p['delong_p']:.3f} |")
        lines.append("")
        lines.append("DeLong's test treats images as independent (several images of one patient make it optimistic); "
                     "the bootstrap resamples patients.")
    return "\n".join(lines) + "\n"


def _plot(runs: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    for run in runs:
        h = _history(run)
        line, = ax.plot([r["epoch"] for r in h], [r["val_auc"] for r in h], marker="o", label=run.name)
        if any("val_auc_raw" in r for r in h):
            ax.plot([r["epoch"] for r in h], [r.get("val_auc_raw", np.nan) for r in h], ls="--", marker=".",
                    color=line.get_color(), label=f"{run.name} (raw weights)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation ROC AUC")
    ax.set_ylim(0.95, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Validation AUC per epoch (575 images, patient-level split)")
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (pneumoscan train --out)")
    ap.add_argument("--raw", type=Path, action="append", default=[], help="EMA run: also score its raw last-epoch weights")
    ap.add_argument("--tta", type=Path, action="append", default=[], help="run: also score its best model with TTA")
    ap.add_argument("--ensemble", action="append", default=[], help="comma-separated runs: score their mean logit")
    ap.add_argument("--paired", action="append", default=[], help="RUN_A,RUN_B: paired AUC difference of two runs")
    ap.add_argument("--cache-dir", type=Path, default=Path(".pneumoscan-cache"))
    ap.add_argument("--out", type=Path, default=Path("docs/recipe_comparison"), help="writes OUT.json, OUT_tables.md and OUT_epochs.png")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    runs = [r for r in args.runs]
    splits = {(r / "split.csv").read_bytes() for r in runs}
    if len(splits) != 1:
        sys.exit("the runs do not share one validation split (split.csv differs): their numbers are not comparable")
    cfg0 = _config(runs[0])
    eval_cfg = EvalConfig(**cfg0["eval"])
    scorer = Scorer(runs[0] / "split.csv", args.cache_dir)
    rows: list[dict[str, Any]] = []
    by_run: dict[Path, dict[str, Any]] = {}

    for run in runs:
        t0 = time.perf_counter()
        ckpt = load_checkpoint(run / "best.safetensors")
        spec = Preprocessing.from_dict(ckpt.meta["preprocessing"])
        model = model_from_checkpoint(ckpt)
        cfg, h = _config(run), _history(run)
        aucs = [r["val_auc"] for r in h]
        extra = {
            "kind": "run", "run": str(run), "recipe": dict(zip([f"{s}.{k}" for s, k in RECIPE_KEYS], _recipe(cfg))),
            "best_epoch": int(ckpt.meta["epoch"]), "epochs_run": len(h), "train_seconds": _seconds(run),
            "epoch_val_auc": aucs, "epoch_val_auc_raw": [r.get("val_auc_raw") for r in h] if any("val_auc_raw" in r for r in h) else None,
        }
        entry = _summarize(run.name, scorer.logits(model, spec), scorer, eval_cfg, extra)
        rows.append(entry)
        by_run[run] = {"model": model, "spec": spec, "cfg": cfg, "entry": entry}
        print(f"{run.name}: val AUC {_fmt(entry['val_auc'])} ({time.perf_counter() - t0:.0f} s)", flush=True)

    for run in args.raw:
        info = by_run[run]
        state = load_state(run / "state.safetensors")
        raw = create_model(info["cfg"]["model"]["name"], pretrained=False, dropout=info["cfg"]["model"]["dropout"])
        raw.load_state_dict(state["model"])
        entry = _summarize(f"{run.name} raw weights (no EMA), epoch {int(state['epoch'])}",
                           scorer.logits(raw, info["spec"]), scorer, eval_cfg, {"kind": "raw", "run": str(run)})
        rows.append(entry)
        print(f"{entry['name']}: val AUC {_fmt(entry['val_auc'])}", flush=True)

    for run in args.tta:
        info = by_run[run]
        entry = _summarize(f"{run.name} + TTA (flip x zoom 0.9, 4 views)", scorer.logits(TTA(info["model"]), info["spec"]),
                           scorer, eval_cfg, {"kind": "tta", "run": str(run)})
        rows.append(entry)
        print(f"{entry['name']}: val AUC {_fmt(entry['val_auc'])}", flush=True)

    for group in args.ensemble:
        members = [Path(p) for p in group.split(",")]
        logits = np.mean([by_run[m]["entry"]["logits"] for m in members], axis=0)
        entry = _summarize("ensemble: " + " + ".join(m.name for m in members), logits, scorer, eval_cfg,
                           {"kind": "ensemble", "members": [str(m) for m in members],
                            "train_seconds": sum(_seconds(m) or 0.0 for m in members)})
        rows.append(entry)
        print(f"{entry['name']}: val AUC {_fmt(entry['val_auc'])}", flush=True)

    paired = []
    for pair in args.paired:
        a, b = (Path(p) for p in pair.split(","))
        paired.append(paired_difference(by_run[a]["entry"], by_run[b]["entry"], scorer))
        print(f"{a.name} - {b.name}: {_paired_text(paired[-1])}", flush=True)

    # Spread across seeds: runs whose recipes differ only in the seed.
    seeds: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        seeds.setdefault(_recipe(by_run[run]["cfg"], without_seed=True), []).append(by_run[run]["entry"])
    seed_spread = []
    for key, entries in seeds.items():
        if len(entries) < 2:
            continue
        best = [e["val_auc"]["value"] for e in entries]
        last = [e["epoch_val_auc"][-1] for e in entries]
        spec = [e["operating"]["specificity"]["value"] for e in entries]
        seed_spread.append({
            "recipe": dict(zip([f"{s}.{k}" for s, k in RECIPE_KEYS if k != "seed"], key)),
            "runs": [e["run"] for e in entries], "seeds": [e["recipe"]["train.seed"] for e in entries],
            "best_val_auc": best, "last_epoch_val_auc": last, "operating_specificity": spec,
            "val_auc_mean": statistics.fmean(best), "val_auc_range": [min(best), max(best)],
            "operating_specificity_range": [min(spec), max(spec)],
        })

    args.out.parent.mkdir(parents=True, exist_ok=True)
    for e in rows:
        e.pop("logits")
    result = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "n_val_images": len(scorer.records),
              "n_val_patients": len({r.patient_id for r in scorer.records}),
              "target_sensitivity": eval_cfg.target_sensitivity, "candidates": rows, "seed_spread": seed_spread,
              "paired": paired}
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out.parent / (args.out.name + "_tables.md"), markdown_tables(result))
    _plot(runs, args.out.parent / (args.out.name + "_epochs.png"))
    print(f"wrote {args.out.with_suffix('.json')}, {args.out.name}_tables.md and {args.out.name}_epochs.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
