"""Does the explanation point somewhere? Faithfulness, specificity, sanity and cost of heatmap methods, on the shipped
model, on validation pneumonia films, on the same films through a simulated site's acquisition chain
(``tests/sitefactory.py``), and on the full-resolution pneumonia samples.

Methods (all on the model's 160 px input square):

* ``gradcam_last``: Grad-CAM on the last stage (5 x 5; the method shipped until 2026-12);
* ``gradcam_b10``, ``gradcam_b7``: Grad-CAM on blocks 10 and 7 (10 x 10); ``gradcam_b4``: block 4 (20 x 20);
* ``hirescam_last``: HiResCAM (Draelos & Carin 2020: gradients times activations, no spatial averaging), 5 x 5;
* ``occlusion_16``: occlusion sensitivity (Zeiler & Fergus 2014; what Kermany et al. used): each 16 px block of the
  square replaced by the film's mean, the drop of the pneumonia logit (10 x 10, 100 passes, no gradients: runs on
  ONNX Runtime). This is the product's own code (:func:`pneumoscan.inference.occlusion.occlusion_map`), chosen on
  these measures;
* ``occlusion_16s8``: the same with 16 px windows every 8 px, averaged per pixel (19 x 19 windows, 361 passes);
* baselines: ``random`` (a fresh random map per film) and ``centre`` (a fixed Gaussian centre prior).

Measures:

* faithfulness (Petsiuk et al., RISE, 2018): **deletion**: the 16 px blocks of the square replaced by its mean in the
  map's order, up to a fifth of the square (20 of 100 blocks), re-scored: the evidence removed (mean drop of the
  pneumonia logit over the curve), also as a ratio to the random order's; the deletion AUC (mean probability over
  the curve; lower: more faithful). **Insertion**: blocks of the film revealed into a blurred copy in the map's
  order, up to a fifth: mean probability (higher: more faithful). Deletion uses the occlusion methods' own
  perturbation (a bias in their favour); insertion uses another one;
* specificity: mean pairwise correlation of the maps (on a common 20 x 20 grid) across films of different patients,
  and the share of films whose peak falls in the most common cell of a 5 x 5 grid;
* sanity (Adebayo et al. 2018): Spearman correlation between a film's map from the model and from the model with
  its last stage and head re-initialised (near 1: the map ignores what the model learned), over the films whose
  randomised map is not flat, and the share of flat randomised maps (a flat map also shows the map depends on the
  weights);
* cost: seconds per film on this machine's 2 cores.

    python benchmarks/explain_quality.py --data ../shared/data/chest_xray_224 --out benchmarks/results/explain_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the simulated site

BLOCK = 16
DELETE_FRACTION = 0.2


def _square_maps_gradcam(model, layer, x, hires: bool = False) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    acts = []
    h = layer.register_forward_hook(lambda m, i, o: acts.append(o))
    with torch.enable_grad():
        inp = x.clone().requires_grad_(True)
        out = model(inp)
        h.remove()
        a = acts[0]
        (g,) = torch.autograd.grad(out[:, 0].sum(), a)
    cam = (g * a).sum(1) if hires else (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)
    return F.relu(cam).detach().numpy()


def _occlusion(score: Callable[[np.ndarray], np.ndarray], square: np.ndarray, stride: int) -> np.ndarray:
    """Drop of the logit when each BLOCK x BLOCK window (every ``stride`` px) is mean-filled, averaged per pixel
    (the denser variant; the product's 10 x 10 map is :func:`pneumoscan.inference.occlusion.occlusion_map`)."""
    s = square.shape[0]
    fill = square.mean()
    starts = list(range(0, s - BLOCK + 1, stride))
    batch = []
    for y in starts:
        for x in starts:
            im = square.astype(np.float32).copy()
            im[y:y + BLOCK, x:x + BLOCK] = fill
            batch.append(im)
    base = score(square[None].astype(np.float32))[0]
    drops = base - score(np.stack(batch))
    if stride == BLOCK:
        return np.maximum(drops.reshape(len(starts), len(starts)), 0)
    acc, cnt = np.zeros((s, s)), np.zeros((s, s))
    for k, (y, x) in enumerate((y, x) for y in starts for x in starts):
        acc[y:y + BLOCK, x:x + BLOCK] += drops[k]
        cnt[y:y + BLOCK, x:x + BLOCK] += 1
    return np.maximum(acc / np.maximum(cnt, 1), 0)


def _resize(m: np.ndarray, side: int) -> np.ndarray:
    from pneumoscan.result import upsample_map

    if m.max() <= 0:
        return np.zeros((side, side), np.float32)
    return upsample_map(m, (side, side))


def _block_order(m: np.ndarray, s: int) -> np.ndarray:
    """Block indices (row-major over the s/BLOCK grid) from the map's strongest to weakest (mean over each block)."""
    full = _resize(m, s)
    n = s // BLOCK
    means = full[: n * BLOCK, : n * BLOCK].reshape(n, BLOCK, n, BLOCK).mean(axis=(1, 3)).ravel()
    return np.argsort(-means, kind="stable")


def _curves(score, square: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits along deletion (mean fill) and insertion (into a blurred copy) in ``order``, k = 0..K blocks."""
    from PIL import Image, ImageFilter

    s = square.shape[0]
    n = s // BLOCK
    k_max = int(round(DELETE_FRACTION * n * n))
    fill = square.mean()
    blurred = np.asarray(Image.fromarray(square).filter(ImageFilter.GaussianBlur(8)), dtype=np.float32)
    dels, ins = [square.astype(np.float32).copy()], [blurred.copy()]
    cur_d, cur_i = dels[0].copy(), ins[0].copy()
    for b in order[:k_max]:
        y, x = divmod(int(b), n)
        sl = np.s_[y * BLOCK:(y + 1) * BLOCK, x * BLOCK:(x + 1) * BLOCK]
        cur_d[sl] = fill
        cur_i[sl] = square[sl]
        dels.append(cur_d.copy())
        ins.append(cur_i.copy())
    z = score(np.stack(dels + ins))
    return z[: k_max + 1], z[k_max + 1:]


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def main(argv: list[str] | None = None) -> int:
    import torch

    from pneumoscan.data import index_dataset, split_index
    from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor
    from pneumoscan.inference.torch_scoring import load_model
    from pneumoscan.io import read_image
    from pneumoscan.preprocessing import resize_for_model
    from pneumoscan.utils import atomic_write_text
    from sitefactory import site_film

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PNEUMOSCAN_DATA",
                                                                         HERE.parent.parent / "shared/data/chest_xray_224")))
    parser.add_argument("--samples", type=Path, default=HERE.parent.parent / "shared/data/fullres_samples")
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL)
    parser.add_argument("--n", type=int, default=40, help="validation pneumonia films (one per patient)")
    parser.add_argument("--methods", default="gradcam_last,gradcam_b10,gradcam_b7,gradcam_b4,hirescam_last,"
                                              "occlusion_16,occlusion_16s8,random,centre")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "explain_quality.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    pred = Predictor.from_checkpoint(args.model)
    spec = pred.preprocessing
    model = load_model(args.model)
    rnd = load_model(args.model)  # the sanity check's model: last stage and head re-initialised
    torch.manual_seed(0)
    for mod in list(rnd.backbone._blocks[11:]) + [rnd.backbone._conv_head, rnd.head]:
        for p in mod.modules():
            if hasattr(p, "reset_parameters"):
                p.reset_parameters()
    layers = {"gradcam_last": model.gradcam_layer, "gradcam_b10": model.backbone._blocks[10],
              "gradcam_b7": model.backbone._blocks[7], "gradcam_b4": model.backbone._blocks[4],
              "hirescam_last": model.gradcam_layer}
    rlayers = {"gradcam_last": rnd.gradcam_layer, "gradcam_b10": rnd.backbone._blocks[10],
               "gradcam_b7": rnd.backbone._blocks[7], "gradcam_b4": rnd.backbone._blocks[4],
               "hirescam_last": rnd.gradcam_layer}

    def to_input(u8: np.ndarray) -> np.ndarray:
        return ((np.asarray(u8, np.float32) / 255.0 - spec.mean) / spec.std).reshape(-1, 1, spec.image_size,
                                                                                   spec.image_size)

    def score(u8: np.ndarray) -> np.ndarray:  # logits of squares (float 0..255), ONNX Runtime, batches of 64
        out = [pred.network.runner(to_input(u8[i:i + 64])) for i in range(0, len(u8), 64)]
        return np.concatenate(out)

    def rscore(u8: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return rnd(torch.from_numpy(to_input(u8)))[:, 0].numpy()

    s = spec.image_size
    yy, xx = np.mgrid[:s, :s]
    centre = np.exp(-((yy - s / 2) ** 2 + (xx - s / 2) ** 2) / (2 * (s / 5) ** 2))

    def make_map(method: str, square: np.ndarray, rng: np.random.Generator, randomised: bool = False) -> np.ndarray:
        if method == "random":
            return rng.random((s // BLOCK, s // BLOCK))
        if method == "centre":
            return centre
        if method.startswith("occlusion"):
            if method == "occlusion_16":  # the product's method, as it ships
                from pneumoscan.inference.occlusion import occlusion_map

                run = rscore if randomised else score
                return occlusion_map(lambda sq: run(np.stack(sq).astype(np.float32)), square)
            return _occlusion(rscore if randomised else score, square, 8)
        layer = (rlayers if randomised else layers)[method]
        net = rnd if randomised else model
        return _square_maps_gradcam(net, layer, torch.from_numpy(to_input(square[None])),
                                    hires=method.startswith("hires"))[0]

    index = index_dataset(args.data, split="train", check=False)
    _, val = split_index(index, 0.1, 42)
    seen, films = set(), []
    for r in val.records:
        if r.label == 1 and r.patient_id not in seen:
            seen.add(r.patient_id)
            films.append((r.patient_id, read_image(r.path)))
        if len(films) >= args.n:
            break
    sample_files = sorted(p for p in (args.samples / "PNEUMONIA").iterdir() if p.is_file()) \
        if (args.samples / "PNEUMONIA").is_dir() else []
    sets = {
        "validation": [(pid, resize_for_model(g, spec)) for pid, g in films],
        "simulated_site": [(pid, resize_for_model(site_film(g, i), spec)) for i, (pid, g) in enumerate(films)],
        "fullres_pneumonia": [(p.stem, pred.read(p).square) for p in sample_files],
    }
    methods = args.methods.split(",")
    out: dict = {"model": str(args.model), "block": BLOCK, "delete_fraction": DELETE_FRACTION,
                 "n": {k: len(v) for k, v in sets.items()}, "sets": {}}
    for set_name, items in sets.items():
        res: dict = {}
        rng = np.random.default_rng(0)
        random_drop = []
        for pid, square in items:  # the random order's drop, averaged over 3 orders, per film
            z0 = score(square[None].astype(np.float32))[0]
            drops = []
            for _ in range(3):
                d, _ = _curves(score, square, rng.permutation((s // BLOCK) ** 2))
                drops.append(float(np.mean(z0 - d[1:])))
            random_drop.append(np.mean(drops))
        for method in methods:
            t0 = time.perf_counter()
            maps = [make_map(method, sq, np.random.default_rng(i)) for i, (_, sq) in enumerate(items)]
            seconds = (time.perf_counter() - t0) / max(1, len(items))
            drops, del_auc, ins_auc = [], [], []
            for (pid, sq), m in zip(items, maps):
                d, ins = _curves(score, sq, _block_order(m, s))
                drops.append(float(np.mean(d[0] - d[1:])))
                del_auc.append(float(np.mean(_sigmoid(d))))
                ins_auc.append(float(np.mean(_sigmoid(ins))))
            grid = np.stack([_resize(np.asarray(m, np.float32), 20).ravel() for m in maps])
            corr = np.corrcoef(grid) if len(grid) > 1 else np.ones((1, 1))
            iu = np.triu_indices(len(grid), 1)
            pids = [pid for pid, _ in items]
            pairs = [corr[i, j] for i, j in zip(*iu) if pids[i] != pids[j] and np.isfinite(corr[i, j])]
            peaks = [int(np.argmax(_resize(np.asarray(m, np.float32), 5))) for m in maps]
            top_cell_share = max(np.bincount(peaks, minlength=25)) / len(peaks)
            sanity, flat = None, None
            if method not in ("random", "centre") and set_name == "validation":
                from scipy.stats import spearmanr

                rs, n_flat = [], 0
                for i, (_, sq) in enumerate(items[:10]):
                    a = _resize(np.asarray(maps[i], np.float32), 20).ravel()
                    b = _resize(np.asarray(make_map(method, sq, np.random.default_rng(i), True), np.float32),
                                20).ravel()
                    if b.std() <= 1e-12 * max(1.0, float(np.abs(b).max())):
                        n_flat += 1  # the randomised model gives no map at all: the map depends on the weights
                    elif a.std() > 0:
                        rs.append(float(spearmanr(a, b).correlation))
                sanity = float(np.mean(rs)) if rs else None
                flat = n_flat / min(10, len(items))
            res[method] = {
                "grid": list(np.asarray(maps[0]).shape),
                "evidence_removed": float(np.mean(drops)),
                "evidence_removed_vs_random": float(np.mean(drops) / np.mean(random_drop)),
                "deletion_auc": float(np.mean(del_auc)), "insertion_auc": float(np.mean(ins_auc)),
                "mean_pairwise_correlation": float(np.mean(pairs)) if pairs else None,
                "top_peak_cell_share": float(top_cell_share), "n_distinct_peak_cells": len(set(peaks)),
                "sanity_spearman_vs_randomised_model": sanity, "sanity_randomised_map_flat_share": flat,
                "seconds_per_film": round(seconds, 3),
            }
            print(set_name, method, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res[method].items()},
                  flush=True)
        out["sets"][set_name] = res
    out["seconds"] = round(time.perf_counter() - t_all, 1)
    out["load_average"] = os.getloadavg()
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
