"""Training throughput (images/s) and peak memory per model and input size, on the CPU with N threads.

Each (model, size) runs in a fresh subprocess so its peak RSS is its own. A
step is what the training loop does: augmentation on a uint8 batch, normalise,
forward, weighted BCE, backward, AdamW step. Synthetic images are enough for
speed. Medians over the timed steps are reported; this machine is shared and
noisy, so compare numbers from one run only.

    python benchmarks/train_speed.py --out benchmarks/results/train_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("seed-cnn", "deep-cnn", "efficientnet-lite0")
SIZES = (224, 160)


def run_one(model_name: str, size: int, batch: int, steps: int, warmup: int, threads: int) -> dict:
    import torch

    from pneumoscan.config import AugmentConfig
    from pneumoscan.models import create_model, default_preprocessing
    from pneumoscan.preprocessing import normalize
    from pneumoscan.training.augment import build_augmentation

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(model_name, pretrained=model_name == "efficientnet-lite0")
    spec = default_preprocessing(model_name, size)
    aug = build_augmentation(AugmentConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    crit = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([0.35]))
    images = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8)
    labels = (torch.rand(batch) > 0.3).float()
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        x = normalize(aug(images.unsqueeze(1).float().div_(255.0)), spec)
        opt.zero_grad(set_to_none=True)
        loss = crit(model(x).reshape(-1), labels)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "model": model_name,
        "image_size": size,
        "batch_size": batch,
        "threads": threads,
        "steps_timed": steps,
        "median_step_s": med,
        "images_per_s_median": batch / med,
        "images_per_s_all": [batch / t for t in times],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_speed.json"))
    parser.add_argument("--conditions", default="", help="free text saved with the results, e.g. what else was running")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        res = run_one(args.child[0], int(args.child[1]), args.batch_size, args.steps, args.warmup, args.threads)
        print(json.dumps(res))
        return

    from pneumoscan.utils import atomic_write_text

    results = []
    for size in args.sizes:
        for name in args.models:
            cmd = [sys.executable, __file__, "--child", name, str(size), "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"{name:20s} {size}px: {res['images_per_s_median']:.1f} img/s (median), "
                  f"peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
    import torch

    doc = {
        "benchmark": "train_speed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "note": "CPU, shared and noisy machine; medians over timed steps; one subprocess per configuration.",
        "threads": args.threads, "batch_size": args.batch_size, "conditions": args.conditions,
        "load_average_at_end": list(os.getloadavg()),
        "results": results,
    }
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
