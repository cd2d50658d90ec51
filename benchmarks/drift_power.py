"""The drift check's power table: false alarms at other mixes of cases, detections of acquisition shifts.

For the model (default: the shipped one), two sets of training-like films are scored once:

* ``validation``: its held-out validation films (the films the null is drawn from: the honest in-distribution set);
* ``training``: a seeded sample of its training films that are NOT in the reference's bank (by their intensity
  descriptors), of each class (``--train-per-class``), what issue #26 drew its batches from;

each as it is and through the acquisition shifts of ``tests/test_scope_shipped.py`` (exposure +20 gray levels,
contrast x0.7, gamma 0.7, Gaussian blur 1.5 px, Gaussian noise sigma 8, a letterboxing resizing chain, a 64 px
thumbnail chain) and the simulated site's chain (``tests/sitefactory.py``: 128 px export, contrast x0.8, gamma 0.9,
noise), and milder versions of three (exposure +8, blur 0.7 px, noise sigma 4). Features, descriptors and probabilities are kept per film; then ``--batches`` batches of ``--batch`` in-scope
films (without replacement within a batch) are drawn at 10, 20, 50, 77 and 90% pneumonia from each (set, shift) and
tested three ways in the same run:

* ``old``: the test before #26 (the reference without its labels: no allowance for the mix of cases);
* ``fit``: the shipped test (the reference's classes reweighted to the mix that fits the batch's features best);
* ``em``: the same with the mix estimated by EM on the batch's calibrated probabilities (Saerens et al., 2002;
  what ``adapt`` uses), the null at that mix without re-estimation.

The share called shifted is a false-alarm rate for the unshifted films (target at most 5%) and the power for the
shifted ones. Batches are tested through :meth:`pneumoscan.gate.drift.DriftCheck.pool` (the same verdict as
``test``, from kernel sums computed once per film set; checked against ``test`` on a few batches here).

    python benchmarks/drift_power.py [--model M] [--batch 100] [--batches 100] [--out benchmarks/results/drift_power.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from sitefactory import ACQUISITION_SHIFTS, acquisition_shift as shifted  # noqa: E402

MIXES = (0.1, 0.2, 0.5, 0.77, 0.9)
SHIFTS = ("none",) + ACQUISITION_SHIFTS


def film_sets(model: Path, data: Path, train_per_class: int, seed: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{"validation": (paths, labels), "training": (paths, labels)}`` for the model's split over ``data``."""
    from pneumoscan.checkpoint import load_checkpoint
    from pneumoscan.data import model_split
    from pneumoscan.gate.reference import intensity_descriptors, reference_of
    from pneumoscan.io import read_image
    from pneumoscan.preprocessing import resize_for_model

    ckpt = load_checkpoint(model)
    train, val = model_split(data, ckpt.info.config.get("data") or {})
    ref = reference_of(ckpt)
    bank = np.asarray(ref.bank_descriptors, np.float32)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in (0, 1):
        rows = rng.permutation([i for i, r in enumerate(train.records) if r.label == label])
        kept = 0
        for i in rows:  # outside the bank: no stored bank descriptor within float16 precision
            square = resize_for_model(read_image(train.records[i].path), ckpt.info.preprocessing)
            d = intensity_descriptors(square[None]).astype(np.float16).astype(np.float32)[0]
            if np.abs(bank - d).max(axis=1).min() > 2e-3:
                chosen.append(train.records[i])
                kept += 1
                if kept == train_per_class:
                    break
    return {"validation": ([r.path for r in val.records], np.array([r.label for r in val.records])),
            "training": ([r.path for r in chosen], np.array([r.label for r in chosen]))}


def weights_sha256(model: Path) -> str:
    """SHA-256 of a ``.safetensors`` file's tensor bytes (not its metadata header): the scored films of a cache stay
    valid while the metadata changes."""
    digest = hashlib.sha256()
    with open(model, "rb") as fh:
        fh.seek(8 + int.from_bytes(fh.read(8), "little"))
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def score(predictor, paths: list[str], how: str) -> dict[str, np.ndarray]:
    from pneumoscan.io import read_image

    feats, descs, probs, inside = [], [], [], []
    for start in range(0, len(paths), 64):
        films = [shifted(read_image(p), how, start + i) for i, p in enumerate(paths[start:start + 64])]
        for r in predictor.predict(films):
            feats.append(r.features)
            descs.append(r.descriptor)
            probs.append(r.probability)
            inside.append(bool(r.in_scope))
    return {"features": np.stack(feats).astype(np.float32), "descriptors": np.stack(descs).astype(np.float32),
            "probabilities": np.array(probs), "in_scope": np.array(inside)}


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.gate.drift import DriftCheck
    from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor
    from pneumoscan.onboarding.site import em_prevalence
    from pneumoscan.utils import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "PNEUMOSCAN_DATA", HERE.parent.parent / "shared/data/chest_xray_224")))
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/pneumoscan-drift-power"),
                        help="folder for the scored films (features of each set under each shift)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "drift_power.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    predictor = Predictor.from_checkpoint(args.model)
    ref = predictor.reference
    if ref is None or ref.bank_labels is None:
        raise SystemExit(f"{args.model}: the reference carries no labels (scripts/build_reference.py --labels-only)")
    checks = {"fit": DriftCheck(ref), "old": DriftCheck(dataclasses.replace(ref, bank_labels=None, val_labels=None))}
    prevalence = float((predictor.info.val_summary or {}).get("prevalence", float(ref.val_labels.mean())))
    sets = film_sets(args.model, args.data, args.train_per_class, args.seed)
    tag = hashlib.sha256((weights_sha256(args.model) + str(args.train_per_class) + str(args.seed)).encode()).hexdigest()
    args.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = {"benchmark": "drift_power", "model": str(args.model), "batch": args.batch, "batches": args.batches,
           "mixes": list(MIXES), "alpha": checks["fit"].alpha, "training_prevalence": prevalence,
           "sets": {name: {"n": int(len(y)), "n_pneumonia": int(y.sum())} for name, (_, y) in sets.items()},
           "methods": {"old": "before #26: no allowance for the mix of cases",
                       "fit": "shipped: reference reweighted to the mix that fits the batch's features best",
                       "em": "reference reweighted to the EM estimate of the mix from the batch's probabilities"},
           "table": {}, "scope_refused": {}, "checked_against_test": 0}
    score_s = 0.0
    for name, (paths, y) in sets.items():
        for how in SHIFTS:
            path = args.cache / f"{tag}-{name}-{how}.npz"
            if path.is_file():
                scored = dict(np.load(path))
            else:
                t = time.perf_counter()
                scored = score(predictor, paths, how)
                score_s += time.perf_counter() - t
                np.savez(path, **scored)
            inside = scored["in_scope"]
            out["scope_refused"][f"{name}/{how}"] = float(1 - inside.mean())
            pools = {k: c.pool(scored["features"], scored["descriptors"]) for k, c in checks.items()}
            pos, neg = np.flatnonzero((y == 1) & inside), np.flatnonzero((y == 0) & inside)
            rng = np.random.default_rng(args.seed)
            for mix in MIXES:
                k = int(round(args.batch * mix))
                if k > len(pos) or args.batch - k > len(neg):
                    continue
                calls = {m: [] for m in ("old", "fit", "em")}
                mixes = {"fit": [], "em": []}
                for b in range(args.batches):
                    rows = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, args.batch - k,
                                                                                          replace=False)])
                    em = em_prevalence(scored["probabilities"][rows], prevalence).prevalence
                    res = {"old": pools["old"](rows), "fit": pools["fit"](rows), "em": pools["fit"](rows, mix=em)}
                    if b < 2 and how in ("none", "blur"):  # the pooled verdict is test()'s
                        direct = checks["fit"].test(scored["features"][rows], scored["descriptors"][rows])
                        assert abs(direct.statistic - res["fit"].statistic) < 1e-6 * max(1.0, direct.statistic)
                        out["checked_against_test"] += 1
                    for m, r in res.items():
                        calls[m].append(r.shifted)
                    mixes["fit"].append(res["fit"].estimated_mix)
                    mixes["em"].append(em)
                cell = {m: float(np.mean(v)) for m, v in calls.items()}
                cell.update({f"median_mix_{m}": float(np.median(v)) for m, v in mixes.items()})
                out["table"][f"{name}/{how}/{round(100 * mix)}"] = cell
                print(f"{name:10s} {how:15s} {round(100 * mix):3d}%  shifted: old {cell['old']:.2f}  "
                      f"fit {cell['fit']:.2f}  em {cell['em']:.2f}  (mix fit {cell['median_mix_fit']:.2f}, "
                      f"em {cell['median_mix_em']:.2f})", flush=True)
    out["scoring_seconds"] = round(score_s, 1)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["load_average"] = os.getloadavg()
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
