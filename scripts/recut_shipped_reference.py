"""Move the shipped model's out-of-scope cut-off off the validation film it sat on, and re-export model.onnx.

The reference's cut-off used to be one validation film's own score, so a 1e-7 difference between torch and ONNX
Runtime flipped that film (person929_virus_1589.jpeg) in or out of scope. :func:`pneumoscan.gate.reference.midpoint_cut`
now puts the cut-off halfway to the next validation score; this script applies it to the shipped checkpoint from
the validation films' scores under torch (the backend that built the reference), keeps the weights and every other
tensor, records the change in the reference's metadata, and re-exports the ONNX model (whose metadata names the
new checkpoint's SHA-256). Run once, from the repository root, with ../shared/data present:

    .venv/bin/python scripts/recut_shipped_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
from pneumoscan.data import index_dataset, split_index
from pneumoscan.inference.export import export_onnx
from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor
from pneumoscan.gate.reference import midpoint_cut

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_224"


def main() -> int:
    predictor = Predictor.from_checkpoint(PACKAGED_MODEL, backend="torch")
    cfg = predictor.info.config["data"]
    _, val = split_index(index_dataset(DATA, split=cfg["split"], check=False), cfg["val_fraction"],
                         cfg["split_seed"])
    results = predictor.score_files([r.path for r in val.records], batch_size=64)
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


if __name__ == "__main__":
    sys.exit(main())
