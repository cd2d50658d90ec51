"""The shipped model's scope cut-offs: measure them on the films we have, and write them into its metadata.

Three steps, each its own command (run from the repository root, with ../shared/data present):

``measure`` (issue 26): the gate's two verdicts. The k-NN feature distance of every chest film we have (the
  validation split as it is, the 40 full-resolution films, the simulated shifted site of ``tests/sitefactory.py``)
  and of every non-chest image of ``tests/oodfactory.py`` (blank, noise, gradients, text, patterns, photographs,
  CT/MR/ultrasound slices, a face, a tibia radiograph), decoded as pixels only. The refuse cut is chosen by a stated
  rule: **halfway between the highest distance of a chest film and the lowest distance of a non-chest image** (the
  widest margin on both sides; it fails if the two overlap). Also measured, and not used to choose it: the acquisition
  shifts of ``benchmarks/drift_power.py`` (exposure, contrast, gamma, blur, noise, letterbox, a 64 px thumbnail
  chain) applied to the validation films, and pydicom-data's adult chest radiograph. Writes
  ``benchmarks/results/scope_refuse_cut.json``; runs ONNX Runtime, as ``predict`` does.

``write``: puts the measured ``refuse_cut`` (and how it was chosen) into the shipped checkpoint's reference
  metadata, by a read-modify-write of the current file (weights and tensors untouched; ``model.json`` follows), and
  into ``model.onnx``'s metadata with the checkpoint's new SHA-256 (the graph is kept as it is, not re-exported).
  Another step may write the same files: run it under a lock, e.g.
  ``flock /tmp/work/asset.lock .venv/bin/python scripts/recut_shipped_reference.py write``.

``knn`` (issue 24, already applied): moves the caution cut ``knn_cut`` off the validation film it sat on
  (:func:`pneumoscan.gate.reference.midpoint_cut`: halfway to the next validation score, so a 1e-7 difference between
  torch and ONNX Runtime flips no film), from the validation scores under torch, and re-exports model.onnx.

    .venv/bin/python scripts/recut_shipped_reference.py measure
    flock /tmp/work/asset.lock .venv/bin/python scripts/recut_shipped_reference.py write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from pneumoscan.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor
from pneumoscan.gate.reference import midpoint_cut
from pneumoscan.utils import atomic_path, atomic_write_text, file_sha256

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "chest_xray_224"
FULLRES = REPO.parent / "shared" / "data" / "fullres_samples"
MEASURED = REPO / "benchmarks" / "results" / "scope_refuse_cut.json"
#: The acquisition shifts measured on the chest side (not used to choose the cut).
SHIFTS = ("exposure", "contrast", "gamma", "blur", "noise", "letterbox", "thumbnail_chain")
RULE = ("halfway between the highest k-NN feature distance of a chest film (validation split, full-resolution "
        "films, simulated shifted site) and the lowest of a non-chest image (tests/oodfactory.py)")


def _val_records(predictor: Predictor) -> list:
    from pneumoscan.data import index_dataset, split_index

    cfg = predictor.info.config["data"]
    _, val = split_index(index_dataset(DATA, split=cfg["split"], check=False), cfg["val_fraction"],
                         cfg["split_seed"])
    return list(val.records)


def _scores(predictor: Predictor, images: list[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Each image's k-NN feature distance and the gate's pixel-rule reason ("" when the pixels pass)."""
    from pneumoscan.gate.scope import pixel_reason

    feats, reasons = [], []
    for s in range(0, len(images), 64):
        squares = [predictor.read(g).square for g in images[s:s + 64]]
        feats.append(predictor._forward(squares).feats)
        reasons += [pixel_reason(q) for q in squares]
    return predictor.reference.ood_scores(np.concatenate(feats)), reasons


def _shares(scores: np.ndarray, y: np.ndarray | None, knn_cut: float, refuse_cut: float) -> dict:
    refused, cautioned = scores > refuse_cut, (scores > knn_cut) & (scores <= refuse_cut)
    out = {"n": int(scores.size), "max": float(scores.max()), "p99": float(np.quantile(scores, 0.99)),
           "refused": float(refused.mean()), "cautioned": float(cautioned.mean()),
           "n_refused": int(refused.sum()), "n_cautioned": int(cautioned.sum())}
    if y is not None:
        for label, name in ((0, "normal"), (1, "pneumonia")):
            out[f"refused_{name}"] = float(refused[y == label].mean())
            out[f"cautioned_{name}"] = float(cautioned[y == label].mean())
    return out


def measure(out: Path) -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from oodfactory import out_of_scope_images, part10_bytes, sample_dicom
    from sitefactory import acquisition_shift as shifted, site_film

    from pneumoscan.io import read_image

    t0, load0 = time.perf_counter(), os.getloadavg()
    predictor = Predictor.from_checkpoint(PACKAGED_MODEL)
    ref = predictor.reference
    records = _val_records(predictor)
    y = np.array([r.label for r in records])
    films = [read_image(r.path) for r in records]
    chest = {"validation": _scores(predictor, films)[0],
             "simulated_site": _scores(predictor, [site_film(g, i) for i, g in enumerate(films)])[0],
             "fullres": _scores(predictor, [read_image(p) for p in sorted(FULLRES.rglob("*"))
                                            if p.is_file() and not p.name.startswith(".")])[0]}
    ood = out_of_scope_images()
    ood_scores, ood_pixels = _scores(predictor, [g for _, _, g in ood])
    hi_chest = max(float(v.max()) for v in chest.values())
    lo_other = float(ood_scores.min())
    if not hi_chest < lo_other:
        print(f"no cut separates them: a chest film at {hi_chest:.4f}, a non-chest image at {lo_other:.4f}")
        return 1
    cut = (hi_chest + lo_other) / 2
    doc = {"benchmark": "scope_refuse_cut", "model": PACKAGED_MODEL.name, "model_sha256": file_sha256(PACKAGED_MODEL),
           "backend": predictor.backend, "knn_k": ref.knn_k, "knn_cut": ref.knn_cut, "refuse_cut": cut, "rule": RULE,
           "margin_to_chest": cut - hi_chest, "margin_to_non_chest": lo_other - cut,
           "fallback_without_refuse_cut": float(np.max(ref.ood_scores(ref.val_features))),
           "chest": {name: _shares(v, y if v.size == y.size else None, ref.knn_cut, cut) for name, v in chest.items()},
           "non_chest": [{"kind": k, "name": n, "score": float(s), "pixel_reason": px,
                          "refused_by": "pixels" if px else ("features" if s > cut else ""),
                          "cautioned": bool(not px and ref.knn_cut < s <= cut)}
                         for (k, n, _), s, px in zip(ood, ood_scores, ood_pixels)]}
    shifts = {}
    for how in SHIFTS:
        scores, _ = _scores(predictor, [shifted(g, how, i) for i, g in enumerate(films)])
        shifts[how] = _shares(scores, y, ref.knn_cut, cut)
    doc["shifted_validation_not_used_to_choose"] = shifts
    adult = sample_dicom("RG1_UNCI.dcm")
    if adult is not None:
        s, px = _scores(predictor, [read_image(part10_bytes(adult))])
        doc["adult_chest_RG1_UNCI"] = {"score": float(s[0]), "pixel_reason": px[0],
                                       "share_of_validation_films_farther": float(np.mean(chest["validation"] > s[0]))}
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    doc["loadavg_1_5_15_before"], doc["loadavg_1_5_15_after"] = load0, os.getloadavg()
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    print(f"refuse cut {cut:.6f} (highest chest film {hi_chest:.4f}, lowest non-chest image {lo_other:.4f}); "
          f"caution cut {ref.knn_cut:.6f}")
    for name, v in {**doc["chest"], **shifts}.items():
        print(f"  {name:16s} refused {v['refused']:.3f}, cautioned {v['cautioned']:.3f} (max {v['max']:.4f})")
    print(f"non-chest refused by features: {sum(o['refused_by'] == 'features' for o in doc['non_chest'])}, by "
          f"pixels: {sum(o['refused_by'] == 'pixels' for o in doc['non_chest'])}, passed: "
          f"{[o['name'] for o in doc['non_chest'] if not o['refused_by']]}; wrote {out}")
    return 0


def _write_onnx_metadata(onnx_path: Path, meta: dict, checkpoint_sha256: str) -> None:
    """Replace the export's checkpoint metadata and checkpoint SHA-256 (as
    :func:`pneumoscan.inference.export.export_onnx` writes them), keeping its graph and its reference blob."""
    import onnx

    from pneumoscan.inference.scoring import CHECKPOINT_SHA256_KEY, META_KEY

    proto = onnx.load(str(onnx_path))
    props = {p.key: p for p in proto.metadata_props}
    if META_KEY not in props or CHECKPOINT_SHA256_KEY not in props:
        raise SystemExit(f"{onnx_path}: not a pneumoscan export of a checkpoint; export it again")
    props[META_KEY].value = json.dumps({"format": CHECKPOINT_FORMAT, **meta}, sort_keys=True, allow_nan=True)
    props[CHECKPOINT_SHA256_KEY].value = checkpoint_sha256
    with atomic_path(onnx_path) as tmp:
        onnx.save(proto, str(tmp))


def write(measured: Path) -> int:
    doc = json.loads(measured.read_text())
    ckpt = load_checkpoint(PACKAGED_MODEL)  # the current file: another step may have written it since
    meta = dict(ckpt.meta)
    reference = dict(meta["reference"])
    if (reference["knn_k"], reference["knn_cut"]) != (doc["knn_k"], doc["knn_cut"]):
        raise SystemExit(f"{measured} was measured against another reference (k {doc['knn_k']}, cut {doc['knn_cut']}); "
                         "measure again")
    reference.update(refuse_cut=float(doc["refuse_cut"]), refuse_cut_rule=doc["rule"],
                     refuse_cut_chosen=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     refuse_cut_measured=f"benchmarks/results/{measured.name}")
    meta["reference"] = reference
    save_checkpoint(PACKAGED_MODEL, ckpt.state_dict, meta, extra=ckpt.extra)
    saved = load_checkpoint(PACKAGED_MODEL).meta
    _write_onnx_metadata(PACKAGED_MODEL.with_suffix(".onnx"), saved, file_sha256(PACKAGED_MODEL))
    print(f"{PACKAGED_MODEL}: refuse_cut {doc['refuse_cut']:.6f} written (caution cut {reference['knn_cut']:.6f}); "
          "model.json and model.onnx's metadata follow")
    return 0


def recut_knn() -> int:
    from pneumoscan.inference.export import export_onnx

    predictor = Predictor.from_checkpoint(PACKAGED_MODEL, backend="torch")
    results = predictor.score_files([r.path for r in _val_records(predictor)], batch_size=64)
    ref = predictor.reference
    scores = ref.ood_scores(np.stack([r.features for r in results]))
    rate = float(ref.info.get("max_val_flag_rate", 0.01))
    new_cut = midpoint_cut(scores, rate)
    print(f"{len(scores)} validation films; cut-off {ref.knn_cut:.8f} -> {new_cut:.8f}; "
          f"above it before {int(np.sum(scores > ref.knn_cut))}, after {int(np.sum(scores > new_cut))}")
    ckpt = load_checkpoint(PACKAGED_MODEL)
    meta = dict(ckpt.meta)
    meta["reference"] = {**meta["reference"], "knn_cut": new_cut,
                         "val_flag_rate": float(np.mean(scores > new_cut)),
                         "cut": "halfway between the validation scores on either side (midpoint_cut)",
                         "cut_previous": float(ref.knn_cut)}
    save_checkpoint(PACKAGED_MODEL, ckpt.state_dict, meta, extra=ckpt.extra)
    export_onnx(PACKAGED_MODEL, Path(PACKAGED_MODEL).with_suffix(".onnx"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    m = sub.add_parser("measure", help="measure both sides and choose the refuse cut")
    m.add_argument("--out", type=Path, default=MEASURED)
    w = sub.add_parser("write", help="write the measured refuse cut into the shipped model's metadata")
    w.add_argument("--measured", type=Path, default=MEASURED)
    sub.add_parser("knn", help="move the caution cut off a validation film's score (issue 24; applied)")
    args = parser.parse_args(argv)
    if args.step == "measure":
        return measure(args.out)
    if args.step == "write":
        return write(args.measured)
    return recut_knn()


if __name__ == "__main__":
    sys.exit(main())
