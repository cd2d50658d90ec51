"""Training speed of the real training step, before and after the #18 changes, as ratios measured in one run.

CPU (default): the release recipe (``configs/release.toml``: EfficientNet-Lite0, its image size, batch 32, its
threads, intensity augmentation, EMA) on the real data (``$PNEUMOSCAN_DATA`` or ``../shared/data/chest_xray_224``,
its seeded split, batches in the loop's epoch order). Each variant runs in its own subprocess (the allocator
setting is process-wide), and the variants take turns, round after round (A/B interleaved), so that a change in
the machine's load hits all of them alike. Variants:

    before          NCHW, glibc's default allocator (the step as it was)
    channels_last   channels-last model and input
    allocator       glibc's mmap/trim thresholds raised (pneumoscan.training.allocator)
    after           both: what ``pneumoscan train`` does now
    compile         after + train.compile (only with --compile; its first step includes the cold compile)

Reported per variant: the median over rounds of each child's median step time, minor page faults per step, peak
RSS, and the median over rounds of the per-round ratio to ``before``. The "after" children also time one
validation pass (as do the "before" ones), from which the recipe's wall time is *estimated* as epochs x (steps per epoch x step + validation
passes); an estimate, not a measured run. The load average is recorded at the start and the end.

GPU (``--device cuda``): ``--epochs`` (6) full epochs of the training step at ``--size`` (224) px with the recipe's
model, in one process, batches gathered from the cache in GPU memory, bf16 autocast, channels-last; no validation.

    python benchmarks/train_speed.py --rounds 3 --steps 6 --out benchmarks/results/train_speed.json
    python benchmarks/train_speed.py --device cuda --out benchmarks/results/train_speed_cuda.json
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
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "chest_xray_224"
VARIANTS = ("before", "channels_last", "allocator", "after")


def _config(args: argparse.Namespace, variant: str) -> Any:
    """The recipe's config on the benchmark's data, as ``variant`` runs it."""
    from pneumoscan.config import load_config

    over = [f"data.root={json.dumps(str(args.data))}", f"data.split={json.dumps(args.split)}",
            f"data.cache_dir={json.dumps(str(args.cache_dir))}", f"train.device={json.dumps(args.device)}",
            f"train.channels_last={'false' if variant in ('before', 'allocator') else 'true'}",
            f"train.compile={'true' if variant == 'compile' else 'false'}"]
    if args.size:
        over.append(f"model.image_size={args.size}")
    if args.threads:
        over.append(f"train.threads={args.threads}")
    return load_config(args.recipe, over + list(args.set or []))


def _setup(args: argparse.Namespace, variant: str) -> tuple[Any, Any, Any, Any]:
    """(config, run data, the loop's parts, device) for ``variant``: the loop's own ``prepare_data`` and ``_build``,
    so that the benchmark trains exactly what ``pneumoscan train`` trains."""
    import torch

    from pneumoscan.training.allocator import tune_allocator
    from pneumoscan.training.distributed import setup_distributed
    from pneumoscan.training.inputs import prepare_data
    from pneumoscan.training.loop import _build
    from pneumoscan.utils import seed_everything

    cfg = _config(args, variant)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if variant not in ("before", "channels_last"):
        assert tune_allocator(), "glibc's allocator could not be tuned on this machine"
    d = setup_distributed(cfg.train.device)
    seed_everything(cfg.train.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(cfg, Path(tmp), d)
    return cfg, data, _build(cfg, data, d), d


def _steps(cfg: Any, data: Any, parts: Any, net: Any, n: int, epoch: int = 1,
           sync: bool = True) -> list[tuple[float, int]]:
    """(seconds, minor page faults) of each of the first ``n`` steps of ``epoch``, each synchronised on CUDA when
    ``sync`` (off for whole epochs: a plain loop does not wait for the device between steps)."""
    import torch

    from pneumoscan.training.distributed import Dist
    from pneumoscan.training.inputs import epoch_order
    from pneumoscan.training.step import EpochTally, batches, model_input, train_step

    torch.manual_seed(cfg.train.seed * 1_000_003 + epoch * 7919)
    order = data.train_rows[epoch_order(len(data.train_rows), data.train_labels, cfg, epoch, Dist())]
    net.train()
    tally, out = EpochTally(), []
    for rows in batches(order, cfg.train.batch_size)[:n]:
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        x = model_input(parts.source.images_u8(rows), parts.aug, parts.spec, parts.opts)
        loss, logits = train_step(net, parts.model, parts.criterion, parts.optimizer, parts.ema, x,
                                  parts.source.labels(rows), parts.opts)
        tally.add(loss, logits, data.labels[rows])
        if sync and parts.opts.device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))
    tally.totals()
    return out


def child(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """One variant's warm-up and timed steps (and, for ``before`` and ``after``, one validation pass)."""
    from pneumoscan.inference.scoring import score_cached
    from pneumoscan.training.step import compile_model

    cfg, data, parts, d = _setup(args, variant)
    net = compile_model(parts.model, cfg.train.compile)
    t0 = time.perf_counter()
    warm = _steps(cfg, data, parts, net, args.warmup)
    first_steps_s = time.perf_counter() - t0
    timed = _steps(cfg, data, parts, net, args.steps, epoch=2)
    res: dict[str, Any] = {
        "variant": variant, "median_step_s": statistics.median(t for t, _ in timed),
        "step_s": [t for t, _ in timed], "minor_faults_per_step": statistics.median(f for _, f in timed),
        "warmup_steps": len(warm), "warmup_s": first_steps_s,
        "images_per_s": cfg.train.batch_size / statistics.median(t for t, _ in timed),
        "steps_per_epoch": len(data.train_rows) // cfg.train.batch_size, "n_val": int(len(data.val_rows)),
    }
    if variant in ("before", "after"):
        t0 = time.perf_counter()
        score_cached(parts.eval_model, data.cache.images, data.val_rows, parts.spec,
                     batch_size=cfg.train.batch_size * 2, device=d.device)
        res["validation_pass_s"] = time.perf_counter() - t0
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def gpu_epochs(args: argparse.Namespace) -> dict[str, Any]:
    """``args.epochs`` full epochs of the current step on CUDA, seconds per epoch and in all."""
    import torch

    cfg, data, parts, _d = _setup(args, "after")
    n_steps = len(data.train_rows) // cfg.train.batch_size
    per_epoch = []
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        _steps(cfg, data, parts, parts.model, n_steps + 1, epoch=epoch, sync=False)
        torch.cuda.synchronize()
        per_epoch.append(time.perf_counter() - t0)
    return {"device": torch.cuda.get_device_name(), "epochs": args.epochs, "epoch_s": per_epoch,
            "total_s": sum(per_epoch), "n_train": int(len(data.train_rows)), "image_size": cfg.model.image_size,
            "batch_size": cfg.train.batch_size, "amp": str(parts.opts.amp), "channels_last": parts.opts.channels_last,
            "cache_on_gpu": parts.source.on_device,
            "images_per_s_after_first_epoch": (args.epochs - 1) * len(data.train_rows) / max(sum(per_epoch[1:]), 1e-9)}


def _summary(rounds: list[list[dict[str, Any]]], variants: list[str], cfg: Any) -> dict[str, Any]:
    """Per variant: median step time over rounds, median ratio to ``before`` within a round, faults, RSS; and the
    recipe's estimated wall time before and after."""
    out: dict[str, Any] = {}
    for v in variants:
        runs = [r for rnd in rounds for r in rnd if r["variant"] == v]
        ratios = [next(r for r in rnd if r["variant"] == "before")["median_step_s"] /
                  next(r for r in rnd if r["variant"] == v)["median_step_s"] for rnd in rounds]
        out[v] = {"median_step_s": statistics.median(r["median_step_s"] for r in runs),
                  "speedup_vs_before_median": statistics.median(ratios), "speedup_vs_before_per_round": ratios,
                  "minor_faults_per_step_median": statistics.median(r["minor_faults_per_step"] for r in runs),
                  "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs)}
        if "validation_pass_s" in runs[0]:
            out[v]["validation_pass_s_median"] = statistics.median(r["validation_pass_s"] for r in runs)
    steps, passes = rounds[0][0]["steps_per_epoch"], 2 if cfg.train.ema_decay > 0 else 1
    for v in ("before", "after"):
        if v in out and "validation_pass_s_median" in out[v]:
            epoch_s = steps * out[v]["median_step_s"] + passes * out[v]["validation_pass_s_median"]
            out[v]["estimated_epoch_s"] = epoch_s
            out[v]["estimated_recipe_min"] = cfg.train.epochs * epoch_s / 60
    return out


def _without_out(argv: list[str]) -> list[str]:
    """``argv`` without ``--out PATH`` / ``--out=PATH`` (children print their result; the parent writes)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            out.append(a)
    return out


def _run_child(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, *args.passthrough]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("PNEUMOSCAN_DATA") or DEFAULT_DATA))
    p.add_argument("--split", default="train", help="sub-folder of --data")
    p.add_argument("--recipe", type=Path, default=ROOT / "configs" / "release.toml")
    p.add_argument("--set", action="append", help="extra config override, section.key=value (repeatable)")
    p.add_argument("--size", type=int, default=0, help="image size (default: the recipe's; 224 with --device cuda)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the recipe's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--cache-dir", type=Path, default=ROOT / ".pneumoscan-cache")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed steps per child")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--epochs", type=int, default=6, help="epochs of the GPU run")
    p.add_argument("--compile", action="store_true", help="add the train.compile variant (slow: cold compile)")
    p.add_argument("--child-timeout", type=float, default=1800)
    p.add_argument("--conditions", default="", help="free text saved with the results, e.g. what else was running")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_speed.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = _parser().parse_args()
    if args.device == "cuda" and not args.size:
        args.size = 224
    if args.child:
        print(json.dumps(child(args, args.child)))
        return
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: data set not found (pass --data or set $PNEUMOSCAN_DATA)")
    import torch

    from pneumoscan.utils import atomic_write_text

    load_start = list(os.getloadavg())
    doc: dict[str, Any] = {"benchmark": "train_speed", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                       "torch": torch.__version__},
                           "recipe": str(args.recipe.relative_to(ROOT) if args.recipe.is_relative_to(ROOT)
                                         else args.recipe),
                           "data": str(args.data), "conditions": args.conditions, "load_average_start": load_start}
    if args.device == "cuda":
        doc["gpu"] = gpu_epochs(args)
        print(f"{doc['gpu']['epochs']} epochs at {doc['gpu']['image_size']} px on {doc['gpu']['device']}: "
              f"{doc['gpu']['total_s']:.1f} s", flush=True)
    else:
        args.passthrough = _without_out(sys.argv[1:])
        variants = list(VARIANTS) + (["compile"] if args.compile else [])
        rounds = []
        for r in range(args.rounds):
            rounds.append([_run_child(args, v) for v in (variants if r % 2 == 0 else variants[::-1])])
            print(f"round {r + 1}: " + ", ".join(f"{x['variant']} {x['median_step_s']:.2f} s" for x in rounds[-1]),
                  flush=True)
        cfg = _config(args, "after")
        doc.update({"image_size": cfg.model.image_size, "batch_size": cfg.train.batch_size,
                    "threads": cfg.train.threads, "epochs": cfg.train.epochs, "rounds": rounds,
                    "summary": _summary(rounds, variants, cfg),
                    "note": "CPU; medians; variants interleaved by round (order reversed every other round); "
                            "estimated_recipe_min = epochs x (steps x step + validation passes), an estimate "
                            "(start-up, caching and the final calibration/reference/hashing are not in it)"})
    doc["load_average_end"] = list(os.getloadavg())
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc.get("summary", doc.get("gpu")), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
