"""Inference speed and peak memory: torch eager vs onnxruntime, per model, before and after each optimisation.

For each step (cumulative: each keeps the previous ones), runtime (torch, onnxruntime) and model
(seed-cnn, deep-cnn, efficientnet-lite0 at 224 px), a fresh subprocess measures

* model alone: single-image latency p50/p95 (``--runs`` timed calls after warm-up) and batch-32 throughput;
* end to end (decode a real-size JPEG + resize + preprocess + model): single-image latency p50/p95 and
  batch-32 throughput;
* peak RSS of the process (``VmHWM``), so each configuration's peak is its own.

Steps: (1) baseline: the straightforward code (decode, resize and preprocess each image on its own, torch
``no_grad``, library defaults for threads); (2) one batch array filled in place and decoded by 2 threads
(exact pixels); (3) channels_last (torch only); (4) explicit thread settings (torch.set_num_threads,
onnxruntime intra_op=2, inter_op=1); (5) torch.inference_mode. An experiment with JPEG DCT-domain
downscaling (Pillow ``draft``) is measured separately: it is faster but changes pixels, so it is not used.

Images: ``$PNEUMOSCAN_SAMPLES`` or ``<repo>/../shared/data/fullres_samples`` when present, else synthetic
1500 x 1200 JPEGs. Medians are reported; this machine is shared and noisy (compare numbers from one run).

    python benchmarks/inference.py --out benchmarks/results/inference.json
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

REPO = Path(__file__).resolve().parents[1]
MODELS = ("seed-cnn", "deep-cnn", "efficientnet-lite0")
STEPS: list[dict[str, Any]] = [
    {"name": "baseline", "what": "per-image decode/resize/preprocess + torch.cat, no_grad, default threads",
     "naive": True, "options": {"threads": None, "inter_op_threads": None, "channels_last": False,
                                "inference_mode": False, "decode_workers": 1}, "ort_threads": 0},
    {"name": "batch-in-place+parallel-decode", "what": "one uint8 batch filled in place, one preprocess call, "
     "images decoded and resized by 2 threads (identical pixels)",
     "options": {"threads": None, "inter_op_threads": None, "channels_last": False, "inference_mode": False,
                 "decode_workers": 2}, "ort_threads": 0},
    {"name": "channels_last", "what": "torch model and input in channels_last memory format", "torch_only": True,
     "options": {"threads": None, "inter_op_threads": None, "channels_last": True, "inference_mode": False,
                 "decode_workers": 2}, "ort_threads": 0},
    {"name": "threads", "what": "torch.set_num_threads(2); onnxruntime intra_op_num_threads=2, inter_op=1",
     "options": {"threads": 2, "inter_op_threads": 1, "channels_last": True, "inference_mode": False,
                 "decode_workers": 2}, "ort_threads": 2},
    {"name": "inference_mode", "what": "torch.inference_mode instead of no_grad", "torch_only": True,
     "options": {"threads": 2, "inter_op_threads": 1, "channels_last": True, "inference_mode": True,
                 "decode_workers": 2}, "ort_threads": 2},
]


def _peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss would carry the
    parent's peak over into a child (it is kept across execve), so it is only the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _timed(fn: Any, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def child(model_file: str, runtime: str, step_index: int, samples: list[str], runs: int, batch: int,
          batch_runs: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from pneumoscan.io import read_image
    from pneumoscan.preprocessing import resize_square
    from pneumoscan.preprocessing import preprocess
    from pneumoscan.predict import Predictor, RuntimeOptions

    step = STEPS[step_index]
    opts = dict(step["options"])
    if runtime == "onnxruntime":
        opts["threads"] = step["ort_threads"]
    predictor = Predictor.from_checkpoint(model_file, options=RuntimeOptions(**opts))
    spec = predictor.preprocessing
    rng = np.random.default_rng(0)
    x1 = preprocess(rng.integers(0, 256, (1, spec.image_size, spec.image_size), dtype=np.uint8), spec)
    xb = preprocess(rng.integers(0, 256, (batch, spec.image_size, spec.image_size), dtype=np.uint8), spec)
    run = predictor._runner  # the model call alone, as the predictor makes it

    if step.get("naive"):
        def end_to_end(paths: list[str]) -> np.ndarray:
            xs = [preprocess(resize_square(read_image(p), spec.image_size), spec) for p in paths]
            logits = run(torch.cat(xs))
            return 1 / (1 + np.exp(-logits / predictor.temperature))
    else:
        end_to_end = predictor.predict_proba

    single = _timed(lambda: run(x1), runs, 5)
    batched = _timed(lambda: run(xb), batch_runs, 1)
    cycle = iter(range(10**9))
    e2e_single = _timed(lambda: end_to_end([samples[next(cycle) % len(samples)]]), runs, 3)
    paths = [samples[i % len(samples)] for i in range(batch)]
    e2e_batch = _timed(lambda: end_to_end(paths), batch_runs, 1)
    return {
        "model_single_ms": {"p50": 1e3 * statistics.median(single), "p95": 1e3 * _pct(single, 0.95)},
        "model_batch_images_per_s": batch / statistics.median(batched),
        "e2e_single_ms": {"p50": 1e3 * statistics.median(e2e_single), "p95": 1e3 * _pct(e2e_single, 0.95)},
        "e2e_batch_images_per_s": batch / statistics.median(e2e_batch),
        "peak_rss_mib": _peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }


def _ab(a: Any, b: Any, reps: int) -> dict[str, float]:
    """Time ``a`` and ``b`` alternately ``reps`` times each (after one warm-up) in this process, so that a
    change in the background load hits both alike; return their medians (ms) and b's speed-up over a."""
    a(), b()
    ta, tb = [], []
    for _ in range(reps):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    ma, mb = 1e3 * statistics.median(ta), 1e3 * statistics.median(tb)
    return {"a_ms": round(ma, 2), "b_ms": round(mb, 2), "speedup": round(ma / mb, 3)}


def paired(models: dict[str, dict[str, str]], samples: list[str], batch: int, single_reps: int,
           batch_reps: int) -> dict[str, Any]:
    """Each optimisation measured as an A/B pair, interleaved in one process (robust to a drifting load)."""
    import copy

    import torch

    from pneumoscan.export import open_onnx_session
    from pneumoscan.io import read_image
    from pneumoscan.preprocessing import resize_square
    from pneumoscan.preprocessing import preprocess
    from pneumoscan.predict import Predictor, RuntimeOptions, model_from_checkpoint
    from pneumoscan.checkpoint import load_checkpoint

    torch.set_num_threads(2)
    out: dict[str, Any] = {"threads": 2}
    paths = [samples[i % len(samples)] for i in range(batch)]
    first = next(iter(models.values()))["torch"]
    pred = Predictor.from_checkpoint(first, options=RuntimeOptions(decode_workers=2))
    spec = pred.preprocessing

    def naive() -> torch.Tensor:
        return torch.cat([preprocess(resize_square(read_image(p), spec.image_size), spec) for p in paths])

    out["decode_and_preprocess_batch"] = {
        "a": "per image: read_image, resize_square, preprocess; torch.cat",
        "b": "2 threads each decoding and resizing, one uint8 batch filled in place, one preprocess call",
        **_ab(naive, lambda: pred._input_batch([g for g, _ in pred._decode_many(paths, raise_errors=True, resize=True)]), batch_reps)}
    single = [paths[0]]
    out["decode_and_preprocess_single"] = _ab(
        lambda: preprocess(resize_square(read_image(single[0]), spec.image_size), spec),
        lambda: pred._input_batch([g for g, _ in pred._decode_many(single, raise_errors=True, resize=True)]), single_reps)
    for name, files in models.items():
        model = model_from_checkpoint(load_checkpoint(files["torch"]))
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        size = Predictor.from_checkpoint(files["torch"]).preprocessing.image_size
        x1, xb = torch.randn(1, 1, size, size), torch.randn(batch, 1, size, size)
        x1c, xbc = x1.contiguous(memory_format=torch.channels_last), xb.contiguous(memory_format=torch.channels_last)

        def run(m: Any, x: torch.Tensor, mode: Any = torch.no_grad) -> Any:
            with mode():
                return m(x)

        def threads(n: int, m: Any, x: torch.Tensor) -> Any:
            torch.set_num_threads(n)
            try:
                return run(m, x, torch.inference_mode)
            finally:
                torch.set_num_threads(2)

        res: dict[str, Any] = {
            "channels_last_single": _ab(lambda: run(model, x1), lambda: run(cl, x1c), single_reps),
            "channels_last_batch": _ab(lambda: run(model, xb), lambda: run(cl, xbc), batch_reps),
            "inference_mode_single": _ab(lambda: run(cl, x1c), lambda: run(cl, x1c, torch.inference_mode), single_reps),
            "inference_mode_batch": _ab(lambda: run(cl, xbc), lambda: run(cl, xbc, torch.inference_mode), batch_reps),
            "torch_2_vs_1_thread_single": _ab(lambda: threads(2, cl, x1c), lambda: threads(1, cl, x1c), single_reps),
            "torch_2_vs_1_thread_batch": _ab(lambda: threads(2, cl, xbc), lambda: threads(1, cl, xbc), batch_reps),
        }
        s_default, _ = open_onnx_session(files["onnxruntime"], threads=0, inter_op_threads=None)
        s_tuned, _ = open_onnx_session(files["onnxruntime"], threads=2, inter_op_threads=1)
        n1, nb = x1.numpy(), xb.numpy()
        res["ort_threads_single"] = _ab(lambda: s_default.run(["logit"], {"image": n1}),
                                        lambda: s_tuned.run(["logit"], {"image": n1}), single_reps)
        res["ort_threads_batch"] = _ab(lambda: s_default.run(["logit"], {"image": nb}),
                                       lambda: s_tuned.run(["logit"], {"image": nb}), batch_reps)
        res["torch_vs_ort_single"] = _ab(lambda: run(cl, x1c, torch.inference_mode),
                                         lambda: s_tuned.run(["logit"], {"image": n1}), single_reps)
        res["torch_vs_ort_batch"] = _ab(lambda: run(cl, xbc, torch.inference_mode),
                                        lambda: s_tuned.run(["logit"], {"image": nb}), batch_reps)
        out[name] = res
    return out


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of every number (nested one level), plus the per-round values."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = {k: statistics.median(r[key][k] for r in runs) for k in value}
        else:
            out[key] = statistics.median(r[key] for r in runs)
    out["rounds"] = runs
    return out


def _summary(steps: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Baseline vs the last step, per runtime and model (medians)."""
    out: dict[str, Any] = {}
    for runtime in ("torch", "onnxruntime"):
        for name in models:
            have = [s for s in steps if name in s["results"].get(runtime, {})]
            first, last = have[0]["results"][runtime][name], have[-1]["results"][runtime][name]
            out.setdefault(runtime, {})[name] = {
                "model_single_ms_p50": [round(first["model_single_ms"]["p50"], 2), round(last["model_single_ms"]["p50"], 2)],
                "model_batch_images_per_s": [round(first["model_batch_images_per_s"], 1), round(last["model_batch_images_per_s"], 1)],
                "e2e_single_ms_p50": [round(first["e2e_single_ms"]["p50"], 2), round(last["e2e_single_ms"]["p50"], 2)],
                "e2e_batch_images_per_s": [round(first["e2e_batch_images_per_s"], 1), round(last["e2e_batch_images_per_s"], 1)],
                "peak_rss_mib": [round(first["peak_rss_mib"]), round(last["peak_rss_mib"])],
            }
    return {"format": "[baseline, after all steps]", **out}


def draft_experiment(samples: list[str], size: int, checkpoint: str | None) -> dict[str, Any]:
    """Exact decode+resize vs Pillow draft() (JPEG DCT scaling to >= 2x the model size) + resize."""
    import numpy as np
    from PIL import Image, ImageOps

    from pneumoscan.io import read_image
    from pneumoscan.preprocessing import resize_square

    def draft(path: str) -> np.ndarray:
        with Image.open(path) as im:
            im.draft("L", (2 * size, 2 * size))
            im = ImageOps.exif_transpose(im).convert("L")
            return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))

    exact_t, draft_t, diffs, exact_imgs, draft_imgs = [], [], [], [], []
    for p in samples:
        t0 = time.perf_counter()
        e = resize_square(read_image(p), size)
        t1 = time.perf_counter()
        d = draft(p)
        t2 = time.perf_counter()
        exact_t.append(t1 - t0)
        draft_t.append(t2 - t1)
        diffs.append(np.abs(e.astype(np.int16) - d.astype(np.int16)))
        exact_imgs.append(e)
        draft_imgs.append(d)
    out: dict[str, Any] = {
        "image_size": size, "images": len(samples),
        "exact_ms_median": 1e3 * statistics.median(exact_t), "draft_ms_median": 1e3 * statistics.median(draft_t),
        "pixel_abs_diff_max": int(max(d.max() for d in diffs)),
        "pixel_abs_diff_mean": float(np.mean([d.mean() for d in diffs])),
        "adopted": False,
        "why_not": "changes the model input (the training cache, evaluation and the operating threshold use the "
                   "exact path); the gain is only on the decode step",
    }
    if checkpoint:
        from pneumoscan.predict import Predictor

        pred = Predictor.from_checkpoint(checkpoint)
        if pred.preprocessing.image_size == size:
            dp = np.abs(pred.predict_proba(exact_imgs) - pred.predict_proba(draft_imgs))
            out.update(checkpoint=checkpoint, probability_abs_diff_max=float(dp.max()),
                       probability_abs_diff_median=float(np.median(dp)))
        elif size != pred.preprocessing.image_size:  # once more at the checkpoint's own input size
            out["at_checkpoint_size"] = draft_experiment(samples, pred.preprocessing.image_size, checkpoint)
    return out


def _samples(tmp: Path) -> tuple[list[str], str]:
    env = os.environ.get("PNEUMOSCAN_SAMPLES", "").strip()
    root = Path(env) if env else REPO.parent / "shared" / "data" / "fullres_samples"
    if root.is_dir():
        files = sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        if files:
            return files, str(root)
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(8):
        img = np.clip(rng.normal(110, 40, (1200, 1500)), 0, 255).astype(np.uint8)
        path = tmp / f"synthetic_{i}.jpeg"
        Image.fromarray(img).save(path, quality=90)
        files.append(str(path))
    return files, "synthetic 1500x1200 JPEGs"


def _make_models(tmp: Path, size: int, names: list[str] | tuple[str, ...] = MODELS) -> dict[str, dict[str, str]]:
    import torch

    from pneumoscan.checkpoint import save_checkpoint
    from pneumoscan.export import export_onnx
    from pneumoscan.models import create_model, default_preprocessing

    out = {}
    for name in names:
        torch.manual_seed(0)
        model = create_model(name, pretrained=name == "efficientnet-lite0")
        meta = {"model": name, "config": {}, "preprocessing": default_preprocessing(name, size).to_dict(),
                "classes": ["NORMAL", "PNEUMONIA"]}
        ckpt = save_checkpoint(tmp / f"{name}.safetensors", model.state_dict(), meta)
        out[name] = {"torch": str(ckpt), "onnxruntime": str(export_onnx(ckpt, tmp / f"{name}.onnx"))}
    return out


def _run_paired(models: dict[str, dict[str, str]], samples: list[str], args: argparse.Namespace) -> dict[str, Any]:
    job = {"models": models, "samples": samples, "batch": args.batch_size, "single_reps": args.runs,
           "batch_reps": args.batch_runs}
    proc = subprocess.run([sys.executable, __file__, "--paired-child", json.dumps(job)], check=True,
                          capture_output=True, text=True, cwd=REPO)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["note"] = ("A/B pairs timed alternately in one fresh process (a then b, repeated); speedup = a/b, "
                   "medians. More robust than comparing steps, which ran minutes apart under a changing load.")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=30, help="timed single-image calls")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-runs", type=int, default=5, help="timed batch calls")
    parser.add_argument("--rounds", type=int, default=2, help="repeat every configuration; report the median")
    parser.add_argument("--checkpoint", help="trained checkpoint at --size for the draft experiment's probability diff")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "inference.json")
    parser.add_argument("--paired-only", action="store_true",
                        help="only (re)run the interleaved A/B pairs and update them in an existing --out file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--paired-child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        job = json.loads(args.child)
        print(json.dumps(child(**job)))
        return
    if args.paired_child:
        print(json.dumps(paired(**json.loads(args.paired_child))))
        return
    if args.paired_only:
        from pneumoscan.utils import atomic_write_text

        doc = json.loads(args.out.read_text())
        with tempfile.TemporaryDirectory(prefix="pneumoscan-bench-") as tmpdir:
            samples, _ = _samples(Path(tmpdir))
            doc["paired_ab"] = _run_paired(_make_models(Path(tmpdir), args.size, args.models), samples, args)
        atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
        print(f"updated {args.out}")
        return

    from pneumoscan.utils import atomic_write_text

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="pneumoscan-bench-") as tmpdir:
        tmp = Path(tmpdir)
        samples, source = _samples(tmp)
        models = _make_models(tmp, args.size, args.models)
        configs = [(i, runtime, name) for i, step in enumerate(STEPS) for runtime in ("torch", "onnxruntime")
                   if not (runtime == "onnxruntime" and step.get("torch_only")) for name in args.models]
        raw: dict[tuple[int, str, str], list[dict[str, Any]]] = {c: [] for c in configs}
        for rnd in range(args.rounds):
            # Alternate the order, so that a drift in the background load does not favour the later steps.
            for index, runtime, name in (configs if rnd % 2 == 0 else configs[::-1]):
                job = {"model_file": models[name][runtime], "runtime": runtime, "step_index": index,
                       "samples": samples, "runs": args.runs, "batch": args.batch_size, "batch_runs": args.batch_runs}
                proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], check=True,
                                      capture_output=True, text=True, cwd=REPO)
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                raw[(index, runtime, name)].append(res)
                print(f"round {rnd + 1} step {index + 1} {STEPS[index]['name']:30s} {runtime:11s} {name:18s} "
                      f"model {res['model_single_ms']['p50']:7.1f} ms, {res['model_batch_images_per_s']:6.1f} img/s; "
                      f"e2e {res['e2e_single_ms']['p50']:7.1f} ms, {res['e2e_batch_images_per_s']:6.1f} img/s; "
                      f"rss {res['peak_rss_mib']:.0f} MiB", flush=True)
        steps = []
        for index, step in enumerate(STEPS):
            results: dict[str, Any] = {}
            for (i, runtime, name), runs in raw.items():
                if i == index:
                    results.setdefault(runtime, {})[name] = _median_of(runs)
            steps.append({"step": index + 1, "name": step["name"], "what": step["what"], "results": results})
        pairs = _run_paired(models, samples, args)
        draft = draft_experiment(samples, args.size, args.checkpoint)
    doc = {
        "benchmark": "inference",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {"image_size": args.size, "batch_size": args.batch_size, "single_runs": args.runs,
                     "batch_runs": args.batch_runs, "samples": source, "n_samples": len(samples)},
        "note": "medians (p50) and p95 over the timed runs; steps are cumulative; each configuration ran in a "
                "fresh process. The machine is shared (a training job used both cores during this run), so "
                "differences under ~15% are noise.",
        "steps": steps,
        "summary": _summary(steps, args.models),
        "paired_ab": pairs,
        "draft_experiment": draft,
    }
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
