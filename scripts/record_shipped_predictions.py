"""Record the shipped model's probabilities on the full-resolution samples, exactly (float hex), so that a test
can prove a refactoring changed no prediction: ``tests/test_shipped_predictions.py``.

Runs the torch backend with one intra-op thread and batches of 16 (``Predictor.score_files``, the CLI's path),
so that the numbers do not depend on the machine's core count.

    python scripts/record_shipped_predictions.py [--samples DIR] [--out tests/data/shipped_fullres_predictions.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shipped_predictions(samples: Path) -> dict[str, str]:
    """``{relative path: probability.hex()}`` for every image under ``samples``."""
    import torch

    torch.set_num_threads(1)
    from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor

    files = sorted(p for p in samples.rglob("*") if p.is_file() and not p.name.startswith("."))
    results = Predictor.from_checkpoint(PACKAGED_MODEL, backend="torch").score_files(files, batch_size=16)
    return {str(Path(r.source).relative_to(samples)): float(r.probability).hex() for r in results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("PNEUMOSCAN_SAMPLES") or str(REPO.parent / "shared" / "data" / "fullres_samples")
    parser.add_argument("--samples", type=Path, default=Path(default))
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "shipped_fullres_predictions.json")
    args = parser.parse_args(argv)
    preds = shipped_predictions(args.samples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model_sha256_12": _version(), "probabilities": preds}, indent=1,
                                   sort_keys=True) + "\n")
    print(f"wrote {len(preds)} probabilities to {args.out}")
    return 0


def _version() -> str:
    import hashlib

    from pneumoscan.inference.predictor import PACKAGED_MODEL

    return hashlib.sha256(PACKAGED_MODEL.read_bytes()).hexdigest()[:12]


if __name__ == "__main__":
    sys.exit(main())
