"""Model commands: ``train``, ``evaluate``, ``calibrate`` and ``export`` (registered on the app by the package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pneumoscan.cli.common import click_errors as _click_errors
from pneumoscan.cli.common import BACKEND_HELP, Backend, console
from pneumoscan.constants import DEFAULT_CACHE_DIR


def train_cmd(
    data: Annotated[Optional[Path], typer.Option(help="Training folder or CSV manifest (default: data.root or $PNEUMOSCAN_DATA).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create, e.g. runs/NAME.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Config file (TOML or YAML).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: section.key=value (repeatable).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Sub-folder of --data to read, e.g. 'train'.")] = None,
    val: Annotated[Optional[Path], typer.Option(help="Your own validation set: folder (<root>/<NORMAL|PNEUMONIA>/*) or CSV "
                                                "manifest. Its images choose the epoch and the threshold; the rest of --data "
                                                "trains; a patient on both sides is an error (default: data.val, else a "
                                                "seeded 10% patient-level split of --data).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the interrupted run in this folder.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar over the batches.")] = True,
) -> None:
    """Train a model on the patient-level train split (or all of --data but the images of --val), validating after
    every epoch, with early stopping on validation AUC. Scales to several GPUs or nodes under torchrun
    (DistributedDataParallel)."""
    import dataclasses

    from pneumoscan.config import default_data_root, load_config
    from pneumoscan.training import resume as resume_run
    from pneumoscan.training import train

    overrides = list(set_ or [])
    if resume is not None:
        if config is not None or out is not None:
            raise _click_errors.UsageError("--resume takes the run's own config; do not combine it with --config or --out")
        extra = [f"data.root={json.dumps(str(data))}"] if data is not None else []
        extra += [f"data.val={json.dumps(str(val))}"] if val is not None else []  # moved, like --data
        result = resume_run(resume, overrides=extra + overrides, progress=progress)
    else:
        if out is None:
            raise _click_errors.UsageError("--out is required (the run folder to create), or use --resume RUN")
        cfg = load_config(config, overrides)
        root = data if data is not None else (Path(cfg.data.root) if cfg.data.root else default_data_root())
        if root is None:
            raise _click_errors.UsageError("no training data: pass --data PATH or set $PNEUMOSCAN_DATA")
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, root=str(root), split=split if split is not None else cfg.data.split,
                                          val=str(val) if val is not None else cfg.data.val)
        )
        result = train(cfg, out, progress=progress)
    console.print(
        f"best epoch {result.best_epoch} of {result.epochs_run}: validation AUC {result.best_val_auc:.4f}"
        f"{' (stopped early)' if result.stopped_early else ''} -> {result.best_checkpoint}"
    )


def evaluate_cmd(
    data: Annotated[Path, typer.Option(help="Labelled folder (<root>[/<split>]/<NORMAL|PNEUMONIA>/*) or CSV manifest.")],
    model: Annotated[Optional[list[Path]], typer.Option("--model", "-m", help="Checkpoint (.safetensors); repeat to "
                                                        "compare models (the first is the reference). Default: "
                                                        "$PNEUMOSCAN_MODEL, else the packaged model.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Sub-folder of --data, or the manifest's 'split' value, e.g. 'val'.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.json, report.html and the plots.")] = Path("evaluation"),
    cache_dir: Annotated[Path, typer.Option(help="Decoded-image cache folder.")] = Path(DEFAULT_CACHE_DIR),
    bootstrap: Annotated[Optional[int], typer.Option(help="Bootstrap resamples (default: the checkpoint's eval.bootstrap_samples, 2000).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Bootstrap seed (default: the checkpoint's eval.bootstrap_seed).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    progress: Annotated[bool, typer.Option(help="Show a progress bar while caching images.")] = False,
    backend: Annotated[Backend, typer.Option("--backend", help=BACKEND_HELP + " With torch, --device chooses the device.")] = Backend.onnx,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for the model with ONNX Runtime (default: all cores).")] = None,
) -> None:
    """Measure one or more models on labelled images: metrics at the validation-chosen operating threshold, at 0.5
    and at Youden's threshold with patient-bootstrap 95% CIs, calibration, sensitivity per cause, a gallery of
    errors, and a model comparison (DeLong). Writes metrics.json, one self-contained report.html and scores.csv (one
    row per image in the columns of 'pneumoscan predict': probability, score, decision, in_scope...)."""
    from pneumoscan.evaluation import evaluate

    if bootstrap is not None and bootstrap < 1:
        raise typer.BadParameter(f"--bootstrap must be at least 1, got {bootstrap}")
    result = evaluate(model or [], data, out, split=split, cache_dir=cache_dir, bootstrap_samples=bootstrap,
                      bootstrap_seed=seed, device=device, batch_size=batch_size, progress=progress,
                      backend=backend.value, threads=threads)
    for m in result["models"]:
        op = m["summary"]["thresholds"]["operating"]
        sens, spec = op["metrics"]["sensitivity"], op["metrics"]["specificity"]
        console.print(
            f"model {m['index']} ({m['model']}): AUC {m['summary']['roc_auc']['value']:.4f}; at threshold "
            f"{op['threshold']:.4f}{'' if m['operating_point_source'] == 'checkpoint' else ' (0.5 fallback)'}: "
            f"sensitivity {sens['value']:.3f} [{sens['ci'][0]:.3f}, {sens['ci'][1]:.3f}], "
            f"specificity {spec['value']:.3f} [{spec['ci'][0]:.3f}, {spec['ci'][1]:.3f}]"
        )
        alerts = [a["text"] for a in m["training_alerts"]]
        for a in m["training_alerts"]:
            colour = "red" if a["kind"] == "train" else "yellow"
            console.print(f"[bold {colour}]WARNING: {a['title'].upper()}.[/bold {colour}] {a['text']}", highlight=False)
        for w in m["warnings"]:
            if w not in alerts:
                console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    console.print(f"wrote {out / 'report.html'} and {out / 'metrics.json'}")


def calibrate_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.safetensors) to calibrate, e.g. the output of `pneumoscan adapt`.")],
    data: Annotated[Path, typer.Option(help="The site's labelled films: folder or CSV manifest; at least 50, with 15 of each class, "
                                       "none of them the model's training films.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New checkpoint to write (.safetensors; a .json copy goes beside it).")],
    split: Annotated[Optional[str], typer.Option(help="Sub-folder of --data, or the manifest's 'split' value, e.g. 'val'.")] = None,
    target_sensitivity: Annotated[Optional[float], typer.Option(help="Lowest sensitivity allowed on these films (default: the checkpoint's, 0.95).")] = None,
    miss_cost: Annotated[Optional[float], typer.Option(help="How many false alarms one missed pneumonia weighs (default: the checkpoint's, 3).")] = None,
    repeats: Annotated[int, typer.Option(help="Cross-fitting repeats (choose on half the patients, measure on the other half).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the cross-fitting halves.")] = 0,
    cache_dir: Annotated[Path, typer.Option(help="Decoded-image cache folder.")] = Path(DEFAULT_CACHE_DIR),
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Calibrate a model to a site: choose the operating threshold (and fit the temperature, when the films can
    tell it) on the site's labelled films, estimate by cross-fitting the sensitivity and specificity to expect on
    new films, and write a new checkpoint with the same weights that records all of it. Refuses the model's own
    training films (found by image content) and fewer than 50 films or 15 of a class. Do not report performance on
    these films: evaluate on a separate labelled set."""
    from pneumoscan.onboarding.operating_point import rechoose_operating_point

    if target_sensitivity is not None and not 0.0 < target_sensitivity <= 1.0:
        raise typer.BadParameter(f"--target-sensitivity must be in (0, 1], got {target_sensitivity}")
    if miss_cost is not None and miss_cost < 0:
        raise typer.BadParameter(f"--miss-cost must be at least 0, got {miss_cost}")
    if repeats < 1:
        raise typer.BadParameter(f"--repeats must be at least 1, got {repeats}")
    if out.exists() and out.resolve() == model.resolve():
        raise typer.BadParameter(f"--out {out}: write the recalibrated checkpoint to a new file, not over --model")
    r = rechoose_operating_point(model, data, out, split=split, target_sensitivity=target_sensitivity, miss_cost=miss_cost,
                                 cache_dir=cache_dir, device=device, n_repeats=repeats, seed=seed)
    for f, why in r["failures"]:
        console.print(f"[yellow]skipped[/yellow] {f}: {why}", highlight=False)
    s, b, a = r["site_calibration"], r["before"] or {}, r["after"]
    cf = s["cross_fitted"]
    skipped = f"; {s['n_skipped']} skipped" if s["n_skipped"] else ""
    console.print(f"films: {s['n_images']} ({s['n_pneumonia']} PNEUMONIA, {s['n_normal']} NORMAL) from {s['n_patients']} "
                  f"patients{skipped}", highlight=False)
    if s["n_in_validation_set"]:
        console.print(f"[yellow]note:[/yellow] {s['n_in_validation_set']} of these films are in the model's validation "
                      "set (allowed; its epoch and stored threshold were chosen on them)", highlight=False)
    if not s["training_films_checked"]:
        console.print("[yellow]warning:[/yellow] this model carries no list of its training films: pneumoscan could not "
                      "check that none of these films trained it", highlight=False)
    t_how = "fitted on these films" if s["temperature_source"] == "site" else f"stored ({s['temperature_reason']})"
    console.print(f"temperature: {s['temperature']:.3f}, {t_how}; stored was {s['stored_temperature']:.3f}", highlight=False)
    if b.get("threshold") is not None:
        console.print(f"previous threshold: {b['threshold']:.4f} ({b.get('method', '?')}, chosen on {b.get('chosen_on', '?')})",
                      highlight=False)
    console.print(f"threshold: {a['threshold']:.4f}: the lowest-cost one (a missed pneumonia weighs {a['miss_cost']:g} false "
                  f"alarms) among those reaching sensitivity {a['target_sensitivity']:g} on these films", highlight=False)
    pct = f"{100 * cf['level']:g}%"
    console.print(f"expected on new films, cross-fitted ({cf['n_repeats']} repeats of: choose on half the patients, "
                  f"stratified by label, measure on the other half; seed {cf['seed']}):", highlight=False)
    for name in ("sensitivity", "specificity"):
        m = cf[name]
        console.print(f"  {name} {m['value']:.3f} ({pct} interval {m['ci'][0]:.3f} to {m['ci'][1]:.3f}: "
                      "percentiles of the repeats)", highlight=False)
    console.print(f"on the films that chose it (optimistic): sensitivity {a['val_sensitivity']:.3f}, "
                  f"specificity {a['val_specificity']:.3f}", highlight=False)
    console.print(f"site state: {'adapted and calibrated' if s['adapted'] else 'calibrated'}; wrote {out}", highlight=False)
    console.print("Do not report performance on these films: evaluate the new model on a separate labelled set.",
                  highlight=False)


def export_cmd(
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX file to write.", show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Checkpoint (.safetensors) to export. Default: $PNEUMOSCAN_MODEL, else the packaged model.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch, input 'image', output 'logit'), with its metadata embedded."""
    from pneumoscan.inference.export import export_onnx
    from pneumoscan.inference.predictor import default_model_path

    source = model if model is not None else default_model_path()
    if source.suffix.lower() == ".onnx":
        raise typer.BadParameter("give the .safetensors checkpoint to export, not an ONNX file", param_hint="--model")
    written = export_onnx(source, onnx, opset=opset)
    console.print(f"wrote {written} (opset {opset}) from {source}")
