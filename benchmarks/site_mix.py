"""Site onboarding at other case mixes (issue #26, items 4 and 5): does ``adapt`` keep what works when the site's
films are 20%, 50% or 77% pneumonia, and does ``calibrate`` keep what ``adapt`` gave?

The site (``tests/sitefactory.py``): the shipped model's 575 held-out validation films passed through another
acquisition chain (a 128-pixel export, contrast x0.8, gamma 0.9, noise sigma 5). Each draw splits the patients in
halves (stratified by class, seeded): the films of one half are what the site adapts on (subsampled to the mix:
all of its normal films and as many pneumonia films as the mix needs, or the reverse), the other half is the
future, where everything is measured. Per mix and draw:

* sensitivity and specificity at the stored threshold, and specificity at the threshold that reaches the target
  sensitivity (0.95) on the measured half ("at the same sensitivity target"), out of the box, after the old
  ``adapt`` (plain AdaBN, films in folder order, as before this issue) and after the new one (class-balanced);
* the estimate of the mix: EM on the unadapted model, EM on the plainly adapted model (what ``adapt`` reported
  before), BBSE on the new adapted model, and whether :func:`~pneumoscan.onboarding.adabn.mix_check` calls it
  reliable.

Calibrate (item 5), at every mix, on that mix's new adapted model: 100 labelled films drawn from the adapt half at
the site's mix (20 pneumonia and 80 normal at 20%, 50/50, 77/23), ``--repeats`` subsets per draw; the old rule (temperature refitted with
15 of each class, lowest-cost threshold at 3:1 reaching 0.95) against the new one
(:mod:`pneumoscan.onboarding.site_threshold`), and the new one with ``--max-false-alarm-rate 0.1``, all measured
on the other half. The library functions are called
on the models' logits (the same ones ``adapt`` and ``calibrate`` call), not the commands: that keeps the run
within minutes on a CPU.

    nice -n 10 python benchmarks/site_mix.py --out benchmarks/results/site_mix.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from sitefactory import SITE, site_film  # noqa: E402

from pneumoscan import metrics as M  # noqa: E402
from pneumoscan.checkpoint import load_checkpoint  # noqa: E402
from pneumoscan.data import index_dataset, split_index  # noqa: E402
from pneumoscan.inference.predictor import PACKAGED_MODEL  # noqa: E402
from pneumoscan.io import read_image  # noqa: E402
from pneumoscan.preprocessing import resize_for_model  # noqa: E402

TARGET = 0.95
MAX_FAR = 0.10  # the --max-false-alarm-rate arm
N_LABELLED = 100  # labelled films a site gives calibrate


def site_squares(data_root: str, ckpt):
    """The validation films through the site's chain, as model-input squares, with labels and patient ids."""
    cfg = ckpt.info.config["data"]
    _, val = split_index(index_dataset(data_root, split=cfg["split"], check=False), cfg["val_fraction"],
                         cfg["split_seed"])
    sq, y, pid = [], [], []
    for r in val.records:  # NORMAL first, then PNEUMONIA: the order of a class-folder site
        seed = int(np.frombuffer(Path(r.path).name.encode()[:8].ljust(8, b"_"), dtype=np.int64)[0] % 2**31)
        sq.append(resize_for_model(site_film(read_image(r.path), seed), ckpt.info.preprocessing))
        y.append(r.label)
        pid.append(r.patient_id)
    return np.stack(sq), np.array(y), np.array(pid)


def halves(y, pid, rng):
    up = np.unique(pid)
    lab = {p: int(y[pid == p].max()) for p in up}
    a = set()
    for c in (0, 1):
        members = rng.permutation([p for p in up if lab[p] == c])
        a |= set(members[: len(members) // 2])
    mask = np.array([p in a for p in pid])
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def at_mix(rows, y, mix, rng):
    neg, pos = rows[y[rows] == 0], rows[y[rows] == 1]
    n_pos = round(len(neg) * mix / (1 - mix))
    n_neg = len(neg)
    if n_pos > len(pos):
        n_pos, n_neg = len(pos), min(len(neg), round(len(pos) * (1 - mix) / mix))
    return np.sort(np.r_[rng.choice(neg, n_neg, replace=False), rng.choice(pos, n_pos, replace=False)])


def measure(y, p, threshold):
    t95 = M.threshold_for_sensitivity(y, p, TARGET)
    return {"sensitivity": M.sensitivity(y, p, threshold), "specificity": M.specificity(y, p, threshold),
            "specificity_at_target": M.specificity(y, p, t95)}


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.inference.scoring import expit, features_cached, model_from_checkpoint
    from pneumoscan.onboarding.adabn import adabn, class_balanced_adabn, em_prevalence, mix_check
    from pneumoscan.onboarding.site_threshold import (
        TEMPERATURE_MIN_PER_CLASS,
        carry_threshold,
        choose_temperature,
        site_threshold,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("PNEUMOSCAN_DATA") or str(HERE.parents[1] / "shared" / "data" / "chest_xray_224")
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--mixes", type=float, nargs="+", default=[0.2, 0.5, 0.77])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="labelled subsets per draw for calibrate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "site_mix.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()
    ckpt = load_checkpoint(PACKAGED_MODEL)
    spec, T, thr = ckpt.info.preprocessing, ckpt.info.temperature, ckpt.info.threshold
    pt = float(ckpt.info.val_summary["prevalence"])
    yd = ckpt.info.val_summary["thresholds"]["youden"]
    youden = {"bbse_threshold": yd["threshold"], "bbse_sensitivity": yd["metrics"]["sensitivity"]["value"],
              "bbse_specificity": yd["metrics"]["specificity"]["value"]}
    sq, y, pid = site_squares(args.data, ckpt)
    parent = model_from_checkpoint(ckpt)

    def logits(model, rows):
        return features_cached(model, sq, rows, spec, batch_size=64)[0]

    z0 = logits(parent, np.arange(len(y)))
    p0 = expit(z0 / T)
    runs, cal_runs = [], []
    for draw in range(args.draws):
        rng = np.random.default_rng(1000 + draw)
        ra, rb = halves(y, pid, rng)
        for mix in args.mixes:
            rows = at_mix(ra, y, mix, rng)
            old = copy.deepcopy(parent)
            adabn(old, sq[rows], spec, seed=None)  # the old adapt: unweighted, in folder order
            z_old_rows = logits(old, rows)
            p_old = expit(logits(old, rb) / T)
            new = copy.deepcopy(parent)
            bal = class_balanced_adabn(new, sq[rows], spec, parent_probs=p0[rows], training_prevalence=pt, seed=draw)
            extra = ra  # the calibrate part draws its labelled films from the whole adapt half
            z_new_extra = logits(new, extra)
            z_new_b = logits(new, rb)
            p_new_rows = expit(z_new_extra[np.searchsorted(extra, rows)] / T)
            check = mix_check(p0[rows], pt, probs_adapted=p_new_rows, seed=draw, **youden)
            run = {"draw": draw, "mix": mix, "n_adapt": len(rows), "true_prevalence": float(y[rows].mean()),
                   "n_measured": len(rb), "n_measured_normal": int((y[rb] == 0).sum()),
                   "none": measure(y[rb], p0[rb], thr), "old_adapt": measure(y[rb], p_old, thr),
                   "new_adapt": measure(y[rb], expit(z_new_b / T), thr),
                   "em_parent": check.prevalence, "em_after_old_adapt": em_prevalence(expit(z_old_rows / T), pt).prevalence,
                   "bbse_after_new_adapt": check.bbse, "mix_bootstrap_ci": check.bootstrap_ci,
                   "mix_reliable": check.reliable, "mix_reasons": check.reasons, "effective_n": bal.effective_n}
            runs.append(run)
            print(f"draw {draw} mix {mix:.2f} n={len(rows)} EM {check.prevalence:.2f} (old adapt "
                  f"{run['em_after_old_adapt']:.2f}) BBSE {check.bbse} reliable={check.reliable} | "
                  + " | ".join(f"{k} {run[k]['sensitivity']:.3f}/{run[k]['specificity']:.3f}/"
                               f"{run[k]['specificity_at_target']:.3f}" for k in ("none", "old_adapt", "new_adapt")),
                  flush=True)
            # calibrate on 100 labelled films of the adapt half at the site's mix, measured on the other half
            adapted_b = measure(y[rb], expit(z_new_b / T), thr)
            for rep in range(args.repeats):
                crng = np.random.default_rng(5000 + 10 * draw + rep)
                neg, pos = ra[y[ra] == 0], ra[y[ra] == 1]
                k_pos = min(len(pos), int(round(N_LABELLED * mix)))
                pick = np.r_[crng.choice(pos, k_pos, replace=False),
                             crng.choice(neg, min(N_LABELLED - k_pos, len(neg)), replace=False)]
                zc = z_new_extra[np.searchsorted(extra, pick)]
                yc = y[pick]
                met = M.sensitivity(yc, expit(zc / T), thr) >= TARGET
                # old rule: temperature refitted with 15 of each class, lowest-cost threshold at 3:1
                t_old_val = max(1.0, M.fit_temperature(zc, yc))  # the old fit (33 normal films pass its 15), floored
                th_old = M.threshold_min_cost(yc, expit(zc / t_old_val), miss_cost=3.0, min_sensitivity=TARGET)
                old_cal = measure(y[rb], expit(z_new_b / t_old_val), th_old)
                # new rule
                t_new = choose_temperature(zc, yc, stored=T, stored_fitted_on="validation", min_temperature=1.0,
                                           min_per_class=TEMPERATURE_MIN_PER_CLASS, seed=rep)
                cur = carry_threshold(thr, T, t_new["temperature"])
                rule = site_threshold(yc, expit(zc / t_new["temperature"]), cur, target_sensitivity=TARGET)
                new_cal = measure(y[rb], expit(z_new_b / t_new["temperature"]), rule["threshold"])
                ceiling = site_threshold(yc, expit(zc / t_new["temperature"]), cur, target_sensitivity=TARGET,
                                         max_false_alarm_rate=MAX_FAR)
                far_cal = measure(y[rb], expit(z_new_b / t_new["temperature"]), ceiling["threshold"])
                cal_runs.append({"draw": draw, "mix": mix, "repeat": rep, "n": len(pick), "n_normal": int((yc == 0).sum()),
                                 "adapt_met_target_on_films": bool(met), "adapt_alone": adapted_b,
                                 "old_calibrate": {**old_cal, "temperature": t_old_val, "threshold": th_old},
                                 "new_calibrate": {**new_cal, "temperature": t_new["temperature"],
                                                   "temperature_source": t_new["source"],
                                                   "threshold": rule["threshold"], "action": rule["action"]},
                                 "new_calibrate_max_far": {**far_cal, "threshold": ceiling["threshold"],
                                                           "action": ceiling["action"],
                                                           "conflict": ceiling["conflict"]}})
                print(f"   calibrate r{rep} ({len(pick)} films, {int(yc.sum())} pneumonia): met={met} adapt {adapted_b['sensitivity']:.3f}/{adapted_b['specificity']:.3f}"
                      f" old {old_cal['sensitivity']:.3f}/{old_cal['specificity']:.3f} (T {t_old_val:.2f})"
                      f" new {new_cal['sensitivity']:.3f}/{new_cal['specificity']:.3f} ({rule['action']},"
                      f" T {t_new['temperature']:.2f}) max-far {far_cal['sensitivity']:.3f}/"
                      f"{far_cal['specificity']:.3f} ({ceiling['action']})", flush=True)

    def med(mix, arm, key):
        return float(np.median([r[arm][key] for r in runs if r["mix"] == mix]))

    summary = {str(mix): {arm: {k: med(mix, arm, k) for k in ("sensitivity", "specificity", "specificity_at_target")}
                          for arm in ("none", "old_adapt", "new_adapt")} for mix in args.mixes}
    for mix in args.mixes:
        rs = [r for r in runs if r["mix"] == mix]
        summary[str(mix)].update({
            "median_em_parent": float(np.median([r["em_parent"] for r in rs])),
            "median_em_after_old_adapt": float(np.median([r["em_after_old_adapt"] for r in rs])),
            "median_bbse_after_new_adapt": float(np.median([r["bbse_after_new_adapt"] for r in rs])),
            "n_reliable": sum(r["mix_reliable"] for r in rs), "n_draws": len(rs),
            "new_not_below_none_at_target": sum(r["new_adapt"]["specificity_at_target"] >=
                                                r["none"]["specificity_at_target"] for r in rs),
            "new_not_below_none_at_threshold": sum(r["new_adapt"]["specificity"] >= r["none"]["specificity"]
                                                   for r in rs)})
    def calibrate_summary(cs):
        met = [c for c in cs if c["adapt_met_target_on_films"]]
        out = {"n_runs": len(cs), "n_adapt_met_target": len(met)}
        for arm in ("old_calibrate", "new_calibrate", "new_calibrate_max_far"):
            out[arm] = {
                "median_sensitivity": float(np.median([c[arm]["sensitivity"] for c in cs])),
                "median_specificity": float(np.median([c[arm]["specificity"] for c in cs])),
                "max_specificity_drop_where_adapt_met": float(max(
                    (c["adapt_alone"]["specificity"] - c[arm]["specificity"] for c in met), default=float("nan")))}
        out["adapt_alone"] = {
            "median_sensitivity": float(np.median([c["adapt_alone"]["sensitivity"] for c in cs])),
            "median_specificity": float(np.median([c["adapt_alone"]["specificity"] for c in cs]))}
        return out

    cal_summary = {"all": calibrate_summary(cal_runs),
                   **{str(mix): calibrate_summary([c for c in cal_runs if c["mix"] == mix]) for mix in args.mixes}}
    doc = {"benchmark": "site_mix", "model": PACKAGED_MODEL.name, "site": SITE, "target_sensitivity": TARGET,
           "stored_threshold": thr, "temperature": T, "training_prevalence": pt, "summary": summary,
           "calibrate_summary": cal_summary, "runs": runs, "calibrate_runs": cal_runs,
           "seconds": round(time.perf_counter() - t0, 1),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "threads": args.threads,
                       "loadavg_1_5_15_before": load0, "loadavg_1_5_15_after": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps({"summary": summary, "calibrate_summary": cal_summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
