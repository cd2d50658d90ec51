"""Add the scope/drift reference and the training films' content hashes to a model that predates them, without
retraining (see MODEL_CARD.md).

    python scripts/build_reference.py --model src/pneumoscan/assets/model.safetensors \\
        --data ../shared/data/chest_xray_224 --out /tmp/model-with-reference.safetensors

The model's own patient-level split is rebuilt from its stored config over ``--data`` (the folder it was trained
on): a seeded sample of its training films forms the bank, its validation films choose the cut-off. Prints the
reference's provenance. Swap the new file in deliberately (the script never overwrites its source).

With ``--labels-only`` it keeps the model's reference as it is and adds the labels of its films (the bank's and the
validation films', found again in the model's split by their intensity descriptors), which the drift check needs
to tell a change of case mix from a change of acquisition (``pneumoscan.gate.drift``).

Every reference it writes carries the drift check's null table (``pneumoscan.gate.drift_null``). With
``--null-only`` it keeps everything else as it is (weights, reference arrays, cut-offs, metadata) and adds or
recomputes that table; it needs no ``--data``. With ``--null-only`` or ``--labels-only``, when an ONNX export of ``--model`` lies beside it (``<stem>.onnx``,
naming the model's SHA-256), an export of ``--out`` is written beside that: the same graph, bytes for bytes, with
the new metadata and the new file's SHA-256 (``pneumoscan.inference.onnx_cache`` uses an export only when it names
its checkpoint). The shipped model:

    python scripts/build_reference.py --null-only --model src/pneumoscan/assets/model.safetensors \
        --out /tmp/null/model.safetensors
    cp /tmp/null/model.safetensors /tmp/null/model.json /tmp/null/model.onnx src/pneumoscan/assets/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _onnx_beside(model: Path, out: Path) -> Path | None:
    """Write ``out``'s ONNX export from the one beside ``model`` (same graph; metadata and checkpoint SHA-256 of
    ``out``); None when ``model`` has no export of itself beside it."""
    import onnx

    from pneumoscan.checkpoint import CHECKPOINT_FORMAT, load_checkpoint_arrays
    from pneumoscan.inference.scoring import CHECKPOINT_SHA256_KEY, META_KEY
    from pneumoscan.utils import atomic_path, file_sha256

    source = model.with_suffix(".onnx")
    if not source.is_file():
        return None
    proto = onnx.load(str(source))
    props = {p.key: p for p in proto.metadata_props}
    if META_KEY not in props or props.get(CHECKPOINT_SHA256_KEY) is None \
            or props[CHECKPOINT_SHA256_KEY].value != file_sha256(model):
        print(f"{source} is not an export of {model}; export {out} with `pneumoscan export`")
        return None
    graph = proto.graph.SerializeToString()
    meta = load_checkpoint_arrays(out).meta
    props[META_KEY].value = json.dumps({"format": CHECKPOINT_FORMAT, **meta}, sort_keys=True, allow_nan=True)
    props[CHECKPOINT_SHA256_KEY].value = file_sha256(out)
    target = out.with_suffix(".onnx")
    with atomic_path(target) as tmp:
        onnx.save(proto, str(tmp))
    if onnx.load(str(target)).graph.SerializeToString() != graph:  # pragma: no cover - protobuf is deterministic
        raise SystemExit(f"{target}: the graph changed on writing")
    return target


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.onboarding.reference_builder import attach_drift_null, attach_reference, label_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="the folder the model was trained on (not for --null-only)")
    parser.add_argument("--split", default=None, help="sub-folder (default: the model's data.split)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path(".pneumoscan-cache"))
    parser.add_argument("--bank-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--labels-only", action="store_true",
                        help="keep the model's reference and add its films' labels (nothing else changes)")
    parser.add_argument("--null-only", action="store_true",
                        help="keep the model's reference and add or recompute its drift null table (nothing else "
                             "changes)")
    args = parser.parse_args(argv)
    if args.data is None and not args.null_only:
        parser.error("--data is required (except with --null-only)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.exists() or args.out.with_suffix(".onnx").exists():
        parser.error(f"{args.out} or its .onnx exists; choose a new file")
    if args.null_only:
        ref = attach_drift_null(args.model, args.out)
        table = ref.drift_null or {}
        print(f"drift null table: {len(table['sizes'])} batch sizes ({table['sizes'][0]}..{table['sizes'][-1]}) x "
              f"{table['n_mixes']} mixes, computed in {table['seconds']:.1f} s")
    elif args.labels_only:
        ref = label_reference(args.model, args.data, args.out, split=args.split, cache_dir=args.cache_dir)
        print(f"labels added: bank {len(ref.bank_labels)} films ({ref.bank_labels.mean():.1%} pneumonia), "
              f"validation {len(ref.val_labels)} films ({ref.val_labels.mean():.1%} pneumonia)")
    else:
        ref = attach_reference(args.model, args.data, args.out, split=args.split, cache_dir=args.cache_dir,
                               bank_size=args.bank_size, seed=args.seed)
        print(json.dumps({k: v for k, v in ref.to_meta().items() if not k.endswith("_labels") and k != "drift_null"},
                         indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    # Only the metadata changed: the export's graph and reference blob still hold (not after attach_reference).
    onnx_out = _onnx_beside(args.model, args.out) if args.null_only or args.labels_only else None
    if onnx_out is not None:
        print(f"wrote {onnx_out} (the export beside {args.model}, with the new metadata)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
