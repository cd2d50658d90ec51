"""Which cause output ships? Compare, on the validation films of the models' own patient split, a head on frozen
features (a class-balanced logistic regression on the pooled features, fitted on the training pneumonia films) with
a head trained jointly with the main output, and check that the main output of a retrained model stays within the
paired interval of the shipped one.

    python scripts/compare_cause_heads.py --shipped src/pneumoscan/assets/model.safetensors \\
        --joint runs/release-cause/best.safetensors --data ../shared/data/chest_xray_224 \\
        --out docs/cause_comparison.json

Writes one JSON: per candidate the validation AUC of viral against bacterial with its patient-bootstrap interval,
paired differences between the candidates, and the main output's AUC (and paired difference) of both models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from pneumoscan import metrics as M
    from pneumoscan.checkpoint import load_checkpoint
    from pneumoscan.data import build_cache, model_split
    from pneumoscan.inference.torch_scoring import model_from_checkpoint, outputs_cached
    from pneumoscan.onboarding.cause import cause_targets, fit_cause_head
    from pneumoscan.utils import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shipped", type=Path, required=True)
    parser.add_argument("--joint", type=Path, required=True, help="a checkpoint trained with model.cause_head")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path(".pneumoscan-cache"))
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    shipped, joint = load_checkpoint(args.shipped), load_checkpoint(args.joint)
    if shipped.info.config.get("data") != joint.info.config.get("data"):
        print("warning: the two models were split differently; the split of --joint is used", file=sys.stderr)
    train_idx, val_idx = model_split(args.data, joint.info.config.get("data") or {})
    records = list(train_idx.records) + list(val_idx.records)
    cache = build_cache(records, joint.info.preprocessing, args.cache_dir, progress=False)
    val_paths = {r.path for r in val_idx.records}
    is_val = np.array([r.path in val_paths for r in cache.records], dtype=bool)
    targets = cause_targets(cache.records)
    labels = np.array([r.label for r in cache.records])
    groups = np.array([r.patient_id for r in cache.records])
    va = np.flatnonzero(is_val)
    tr_known, va_known = np.flatnonzero(~is_val & (targets >= 0)), np.flatnonzero(is_val & (targets >= 0))

    out: dict = {"data": str(args.data), "n_val": int(len(va)), "n_val_known_cause": int(len(va_known)),
                 "n_train_known_cause": int(len(tr_known)), "bootstrap": args.bootstrap, "candidates": {}}
    main_scores, cause_scores = {}, {}
    for name, ckpt in (("shipped", shipped), ("joint", joint)):
        model = model_from_checkpoint(ckpt)
        z_va, c_va, f_va = outputs_cached(model, cache.images, va, ckpt.info.preprocessing)
        main_scores[name] = z_va
        _, _, f_tr = outputs_cached(model, cache.images, tr_known, ckpt.info.preprocessing)
        f_vk = f_va[np.searchsorted(va, va_known)]
        w, b = fit_cause_head(f_tr, targets[tr_known])
        cause_scores[f"frozen features of the {name} model"] = f_vk.astype(np.float64) @ w + b
        if c_va is not None:
            cause_scores[f"{name} model's jointly trained head"] = c_va[np.searchsorted(va, va_known)]
    y_main, g_main = labels[va], groups[va]
    out["main_output"] = {name: {"auc": M.roc_auc(y_main, z), "ci": M.bootstrap_ci(
        y_main, z, groups=list(g_main), n_resamples=args.bootstrap)["roc_auc"]} for name, z in main_scores.items()}
    out["main_output"]["joint_minus_shipped"] = M.bootstrap_auc_difference(
        y_main, main_scores["joint"], main_scores["shipped"], groups=list(g_main), n_resamples=args.bootstrap)
    y, g = targets[va_known], list(groups[va_known])
    for name, z in cause_scores.items():
        out["candidates"][name] = {"auc": M.roc_auc(y, z),
                                   "ci": M.bootstrap_ci(y, z, groups=g, n_resamples=args.bootstrap)["roc_auc"]}
    names = list(cause_scores)
    out["paired"] = {f"{a} minus {b}": M.bootstrap_auc_difference(y, cause_scores[a], cause_scores[b], groups=g,
                                                                   n_resamples=args.bootstrap)
                     for i, a in enumerate(names) for b in names[i + 1:]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(args.out, json.dumps(out, indent=2, default=float) + "\n")
    print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
