"""Add the scope/drift reference and the training films' content hashes to a model that predates them, without
retraining (see MODEL_CARD.md).

    python scripts/build_reference.py --model src/pneumoscan/assets/model.safetensors \\
        --data ../shared/data/chest_xray_224 --out /tmp/model-with-reference.safetensors

The model's own patient-level split is rebuilt from its stored config over ``--data`` (the folder it was trained
on): a seeded sample of its training films forms the bank, its validation films choose the cut-off. Prints the
reference's provenance. Swap the new file in deliberately (the script never overwrites its source).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.onboarding.reference_builder import attach_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the folder the model was trained on")
    parser.add_argument("--split", default=None, help="sub-folder (default: the model's data.split)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path(".pneumoscan-cache"))
    parser.add_argument("--bank-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new file")
    ref = attach_reference(args.model, args.data, args.out, split=args.split, cache_dir=args.cache_dir,
                           bank_size=args.bank_size, seed=args.seed)
    print(json.dumps(ref.to_meta(), indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
