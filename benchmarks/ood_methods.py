"""Which out-of-distribution score catches out-of-scope images best? Measured on the shipped model.

Images: the model's own training split (the reference), its validation split (held-out films: the cut-off of
each method is chosen on them so that at most 1% are flagged), the 40 full-resolution films, and the
out-of-scope set of ``tests/oodfactory.py`` (blank, noise, gradients, text, patterns, photographs, CT/MR/US
slices, a face photograph, a tibia radiograph, an adult chest radiograph) decoded as pixels only (no DICOM
header: content alone must do it). Methods, all on the model's pooled features or outputs:

* ``knn_cosine``: cosine distance to the k-th nearest training film (the shipped gate: a 2,048-film bank, k=5);
* ``knn_cosine_full``: the same against all training films, k=10;
* ``mahalanobis``: class-conditional means, shared Ledoit-Wolf covariance (Lee et al., 2018);
* ``energy``: -log(1 + e^logit) (Liu et al., 2020, for one logit); ``msp``: -max(p, 1 - p);
* ``pixels``: the gate's pixel rules alone; ``gate``: pixel rules, then ``knn_cosine`` (what ships).

Writes JSON with, per method: the cut-off, the share of validation films flagged, full-resolution films flagged,
out-of-scope images caught (and which were missed) and the AUROC of validation vs out-of-scope.

    python benchmarks/ood_methods.py [--data ../shared/data/chest_xray_224] --out benchmarks/results/ood_methods.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the out-of-scope image factory

from oodfactory import out_of_scope_images, part10_bytes, sample_dicom  # noqa: E402

from pneumoscan.checkpoint import load_checkpoint  # noqa: E402
from pneumoscan.data import build_cache, index_dataset, split_index  # noqa: E402
from pneumoscan.io import read_image  # noqa: E402
from pneumoscan.inference.predictor import PACKAGED_MODEL  # noqa: E402
from pneumoscan.preprocessing import resize_for_model, to_model_input  # noqa: E402
from pneumoscan.gate.reference import knn_distance, l2_normalize, reference_of  # noqa: E402
from pneumoscan.inference.torch_scoring import features_cached  # noqa: E402
from pneumoscan.gate.scope import pixel_reason  # noqa: E402
from pneumoscan.inference.scoring import model_from_checkpoint  # noqa: E402


def _features(model, images, spec):
    logits, feats = [], []
    with torch.inference_mode():
        for s in range(0, len(images), 32):
            z, f = model.forward_with_features(to_model_input(images[s:s + 32], spec))
            logits.append(z[:, 0].numpy())
            feats.append(f.numpy())
    return np.concatenate(logits).astype(np.float64), np.concatenate(feats)


def _mahalanobis(train_f, train_y):
    from sklearn.covariance import LedoitWolf

    mus = [train_f[train_y == c].mean(0) for c in (0, 1)]
    prec = LedoitWolf().fit(np.concatenate([train_f[train_y == c] - mus[c] for c in (0, 1)])).precision_
    return lambda g: np.min([np.einsum("ij,jk,ik->i", g - m, prec, g - m) for m in mus], axis=0)


def _summary(name, val, full, ood, names):
    from sklearn.metrics import roc_auc_score

    ordered = np.sort(val)
    cut = float(ordered[min(len(ordered) - 1, int(np.floor(0.99 * len(ordered))))])
    caught = ood > cut
    return {"method": name, "cut": cut, "val_flagged": float(np.mean(val > cut)),
            "fullres_flagged": int(np.sum(full > cut)), "ood_caught": int(caught.sum()), "ood_total": int(len(ood)),
            "ood_missed": [n for n, c in zip(names, caught) if not c],
            "auroc_val_vs_ood": float(roc_auc_score(np.r_[np.zeros(len(val)), np.ones(len(ood))], np.r_[val, ood]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("PNEUMOSCAN_DATA") or str(HERE.parents[1] / "shared" / "data" / "chest_xray_224")
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--samples", default=str(HERE.parents[1] / "shared" / "data" / "fullres_samples"))
    parser.add_argument("--cache-dir", default=".pneumoscan-cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ood_methods.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()
    ckpt = load_checkpoint(PACKAGED_MODEL)
    spec, cfg = ckpt.info.preprocessing, ckpt.info.config["data"]
    model, ref = model_from_checkpoint(ckpt), reference_of(ckpt)
    index = index_dataset(args.data, split=cfg["split"], check=False)
    tr, va = split_index(index, cfg["val_fraction"], cfg["split_seed"])
    cache = build_cache(list(tr.records) + list(va.records), spec, args.cache_dir, progress=False)
    n_tr = len(tr)
    tr_logit, tr_f = features_cached(model, cache.images, np.arange(n_tr), spec)
    va_logit, va_f = features_cached(model, cache.images, np.arange(n_tr, len(cache)), spec)
    tr_y = np.array([r.label for r in cache.records[:n_tr]])
    full = [read_image(p) for p in sorted(Path(args.samples).rglob("*")) if p.is_file() and not p.name.startswith(".")]
    ood = out_of_scope_images()
    if sample_dicom("RG1_UNCI.dcm") is not None:
        ood.append(("adult_chest", "RG1_UNCI.dcm", read_image(part10_bytes(sample_dicom("RG1_UNCI.dcm")))))
    names = [n for _, n, _ in ood]
    fr_logit, fr_f = _features(model, full, spec)
    ood_logit, ood_f = _features(model, [img for _, _, img in ood], spec)
    maha = _mahalanobis(tr_f, tr_y)
    energy = lambda z: -np.logaddexp(0, z)  # noqa: E731
    msp = lambda z: -np.maximum(1 / (1 + np.exp(-z)), 1 - 1 / (1 + np.exp(-z)))  # noqa: E731
    full_bank = l2_normalize(tr_f)
    methods = [
        _summary("knn_cosine", ref.ood_scores(va_f), ref.ood_scores(fr_f), ref.ood_scores(ood_f), names),
        _summary("knn_cosine_full", knn_distance(va_f, full_bank, 10), knn_distance(fr_f, full_bank, 10),
                 knn_distance(ood_f, full_bank, 10), names),
        _summary("mahalanobis", maha(va_f), maha(fr_f), maha(ood_f), names),
        _summary("energy", energy(va_logit), energy(fr_logit), energy(ood_logit), names),
        _summary("msp", msp(va_logit), msp(fr_logit), msp(ood_logit), names),
    ]
    pix = lambda imgs: np.array([bool(pixel_reason(resize_for_model(g, spec))) for g in imgs], float)  # noqa: E731
    va_imgs = [np.asarray(cache.images[i]) for i in range(n_tr, len(cache))]
    pv, pf, po = pix(va_imgs), pix(full), pix([img for _, _, img in ood])
    methods.append({"method": "pixels", "val_flagged": float(pv.mean()), "fullres_flagged": int(pf.sum()),
                    "ood_caught": int(po.sum()), "ood_total": len(ood),
                    "ood_missed": [n for n, c in zip(names, po) if not c]})
    gate_o = (po > 0) | (ref.ood_scores(ood_f) > ref.knn_cut)
    gate_v = (pv > 0) | (ref.ood_scores(va_f) > ref.knn_cut)
    gate_f = (pf > 0) | (ref.ood_scores(fr_f) > ref.knn_cut)
    methods.append({"method": "gate", "val_flagged": float(gate_v.mean()), "fullres_flagged": int(gate_f.sum()),
                    "ood_caught": int(gate_o.sum()), "ood_total": len(ood),
                    "ood_missed": [n for n, c in zip(names, gate_o) if not c], "knn_cut": ref.knn_cut})
    doc = {"benchmark": "ood_methods", "model": str(PACKAGED_MODEL.name), "n_train": n_tr, "n_val": len(va_f),
           "n_fullres": len(full), "ood_kinds": sorted({k for k, _, _ in ood}), "methods": methods,
           "seconds": round(time.perf_counter() - t0, 1),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "threads": args.threads,
                       "loadavg_1_5_15_before": load0, "loadavg_1_5_15_after": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for m in methods:
        print(f"{m['method']:16s} val {100 * m['val_flagged']:5.2f}%  fullres {m['fullres_flagged']:2d}  "
              f"ood {m['ood_caught']:2d}/{m['ood_total']}  missed {m['ood_missed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
