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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.onboarding.reference_builder import attach_reference, label_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the folder the model was trained on")
    parser.add_argument("--split", default=None, help="sub-folder (default: the model's data.split)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path(".pneumoscan-cache"))
    parser.add_argument("--bank-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--labels-only", action="store_true",
                        help="keep the model's reference and add its films' labels (nothing else changes)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new file")
    if args.labels_only:
        ref = label_reference(args.model, args.data, args.out, split=args.split, cache_dir=args.cache_dir)
        print(f"labels added: bank {len(ref.bank_labels)} films ({ref.bank_labels.mean():.1%} pneumonia), "
              f"validation {len(ref.val_labels)} films ({ref.val_labels.mean():.1%} pneumonia)")
    else:
        ref = attach_reference(args.model, args.data, args.out, split=args.split, cache_dir=args.cache_dir,
                               bank_size=args.bank_size, seed=args.seed)
        print(json.dumps({k: v for k, v in ref.to_meta().items() if not k.endswith("_labels")}, indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
