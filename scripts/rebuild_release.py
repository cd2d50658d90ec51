"""Rebuild a trained model's statistics and operating points without retraining its weights (issue #24's release):

1. its BatchNorm running statistics re-estimated on its CLEAN (un-augmented) training films
   (:func:`pneumoscan.onboarding.site.adabn` over the training split): the statistics training leaves behind were
   gathered on augmented batches, which is what made a site adaptation on clean films move the scores;
2. the end of a training run again with the new statistics (:func:`pneumoscan.training.finalize.finalize_run`): the
   temperature (by likelihood on validation, never below ``eval.min_temperature``, 1 by default) and the
   operating threshold chosen on validation by the same rule, the scope/drift reference and the training-set
   hashes rebuilt;
3. for a model with a cause output, its cause row refitted on the new frozen features and its operating point
   set on validation (:func:`pneumoscan.onboarding.cause.add_cause_head` with ``replace``);
4. the ONNX export beside it.

    python scripts/rebuild_release.py --model src/pneumoscan/assets/model.safetensors \\
        --data ../shared/data/chest_xray_224 --out runs/release-24/model.safetensors

The model's own patient split is rebuilt from its stored config over ``--data``. Never overwrites a file; the
metadata records what was done (``bn_statistics``). Prints the old and new validation figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
    from pneumoscan.config import Config
    from pneumoscan.data import build_cache, model_split
    from pneumoscan.inference.export import export_onnx
    from pneumoscan.inference.torch_scoring import model_from_checkpoint
    from pneumoscan.onboarding.cause import add_cause_head
    from pneumoscan.onboarding.site import adabn
    from pneumoscan.training.finalize import finalize_run
    from pneumoscan.utils import file_sha256

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the folder the model was trained on")
    parser.add_argument("--out", type=Path, required=True, help="the new .safetensors (its .onnx goes beside it)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".pneumoscan-cache"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.out.parent / f".{args.out.stem}.work"
    staged = [work / "bn.safetensors", args.out, args.out.with_suffix(".onnx")]
    if any(p.exists() for p in staged[1:]):
        parser.error(f"{args.out} or its .onnx exists; choose a new file")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(args.model)
    raw_cfg = dict(ckpt.meta["config"])
    cfg = Config.from_dict(raw_cfg)
    spec = ckpt.info.preprocessing
    train_idx, val_idx = model_split(args.data, raw_cfg.get("data") or {})
    records = list(train_idx.records) + list(val_idx.records)
    cache = build_cache(records, spec, args.cache_dir, progress=False)
    val_paths = {r.path for r in val_idx.records}
    is_val = np.array([r.path in val_paths for r in cache.records])
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    print(f"{len(tr)} training and {len(va)} validation films", flush=True)

    model = model_from_checkpoint(ckpt)
    n_layers = adabn(model, np.asarray(cache.images[tr]), spec, batch_size=64)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta = dict(ckpt.meta)
    meta["config"] = cfg.to_dict()  # with today's defaults for keys it lacked (eval.min_temperature)
    meta["bn_statistics"] = {
        "source": "clean (un-augmented) training films", "n_images": int(len(tr)), "n_layers": n_layers,
        "method": "running mean and variance reset, then a cumulative average over batches of 64 in eval mode "
                  "except BatchNorm (AdaBN)", "parent_sha256": file_sha256(args.model),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    before = {"operating_point": ckpt.meta.get("operating_point"), "calibration": ckpt.meta.get("calibration"),
              "cause": ckpt.meta.get("cause")}
    save_checkpoint(staged[0], state, meta, extra=dict(ckpt.extra))
    print(f"BatchNorm statistics of {n_layers} layers re-estimated on {len(tr)} clean training films "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    finalize_run(cfg, staged[0], cache, tr, va, spec, torch.device("cpu"))
    print(f"operating point, temperature, reference and hashes rebuilt ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    if ckpt.info.has_cause:
        # finalize_run re-chose the cause point of the parent's cause row under the new statistics; the record of
        # what add_cause_head replaces must be the parent's own (its method and validation AUC), so put it back.
        staged_ckpt = load_checkpoint(staged[0])
        save_checkpoint(staged[0], staged_ckpt.state_dict, {**staged_ckpt.meta, "cause": ckpt.meta["cause"]},
                        extra=dict(staged_ckpt.extra))
        add_cause_head(staged[0], args.data, args.out, cache_dir=args.cache_dir, replace=True)
    else:
        staged[0].replace(args.out)
        staged[0].with_suffix(".json").replace(args.out.with_suffix(".json"))
    export_onnx(args.out, args.out.with_suffix(".onnx"))
    after = load_checkpoint(args.out).meta
    print(json.dumps({"before": before, "after": {k: after.get(k) for k in before},
                      "bn_statistics": after.get("bn_statistics"), "seconds": round(time.perf_counter() - t0, 1)},
                     indent=2, default=str))
    print(f"wrote {args.out} and {args.out.with_suffix('.onnx')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
