"""Give a trained model the cause output (bacterial or viral?) without retraining it: a class-balanced logistic
regression on its frozen pooled features, fitted on its own training pneumonia films and set on its validation
films (:func:`pneumoscan.onboarding.cause.add_cause_head`). The pneumonia output is unchanged (same weights).

    python scripts/add_cause_head.py --model src/pneumoscan/assets/model.safetensors \\
        --data ../shared/data/chest_xray_224 --out /tmp/model-with-cause.safetensors

The model's own patient-level split is rebuilt from its stored config over ``--data`` (the folder it was trained
on). Prints the cause operating point and its validation figures. Never overwrites its source.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    from pneumoscan.onboarding.cause import add_cause_head

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the folder the model was trained on")
    parser.add_argument("--split", default=None, help="sub-folder (default: the model's data.split)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path(".pneumoscan-cache"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--replace", action="store_true", help="refit the cause head of a model that has one")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new file")
    cause = add_cause_head(args.model, args.data, args.out, split=args.split, cache_dir=args.cache_dir,
                           seed=args.seed, replace=args.replace)
    print(json.dumps(cause, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
