"""Model commands: ``train``, ``evaluate``, ``calibrate`` and ``export`` (registered on the app by the package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pneumoscan.cli.common import click_errors as _click_errors
from pneumoscan.cli.common import console
from pneumoscan.constants import DEFAULT_CACHE_DIR


def train_cmd(
    data: Annotated[Optional[Path], typer.Option(help="Training folder or CSV manifest (default: data.root or $PNEUMOSCAN_DATA).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create, e.g. runs/NAME.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Config file (TOML or YAML).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: section.key=value (repeatable).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Sub-folder of --data to read, e.g. 'train'.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the interrupted run in this folder.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar over the batches.")] = True,
) -> None:
    """Train a model on the patient-level train split, validating after every epoch, with early stopping on
    validation AUC. Scales to several GPUs or nodes under torchrun (DistributedDataParallel)."""
    import dataclasses

    from pneumoscan.config import default_data_root, load_config
    from pneumoscan.training import resume as resume_run
    from pneumoscan.training import train

    overrides = list(set_ or [])
    if resume is not None:
        if config is not None or out is not None:
            raise _click_errors.UsageError("--resume takes the run's own config; do not combine it with --config or --out")
        extra = [f"data.root={json.dumps(str(data))}"] if data is not None else []
        result = resume_run(resume, overrides=extra + overrides, progress=progress)
    else:
        if out is None:
            raise _click_errors.UsageError("--out is required (the run folder to create), or use --resume RUN")
        cfg = load_config(config, overrides)
        root = data if data is not None else (Path(cfg.data.root) if cfg.data.root else default_data_root())
        if root is None:
            raise _click_errors.UsageError("no training data: pass --data PATH or set $PNEUMOSCAN_DATA")
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, root=str(root), split=split if split is not None else cfg.data.split)
        )
        result = train(cfg, out, progress=progress)
    console.print(
        f"best epoch {result.best_epoch} of {result.epochs_run}: validation AUC {result.best_val_auc:.4f}"
        f"{' (stopped early)' if result.stopped_early else ''} -> {result.best_checkpoint}"
    )


def evaluate_cmd(
    model: Annotated[list[Path], typer.Option("--model", "-m", help="Checkpoint (.safetensors); repeat to compare models "
                                              "(the first is the reference).")],
    data: Annotated[Path, typer.Option(help="Labelled folder (<root>[/<split>]/<NORMAL|PNEUMONIA>/*) or CSV manifest.")],
    split: Annotated[Optional[str], typer.Option(help="Sub-folder of --data, or the manifest's 'split' value, e.g. 'val'.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.json, report.html and the plots.")] = Path("evaluation"),
    cache_dir: Annotated[Path, typer.Option(help="Decoded-image cache folder.")] = Path(DEFAULT_CACHE_DIR),
    bootstrap: Annotated[Optional[int], typer.Option(help="Bootstrap resamples (default: the checkpoint's eval.bootstrap_samples, 2000).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Bootstrap seed (default: the checkpoint's eval.bootstrap_seed).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    progress: Annotated[bool, typer.Option(help="Show a progress bar while caching images.")] = False,
) -> None:
    """Measure one or more models on labelled images: metrics at the validation-chosen operating threshold, at 0.5
    and at Youden's threshold with patient-bootstrap 95% CIs, calibration, sensitivity per cause, a gallery of
    errors, and a model comparison (DeLong). Writes metrics.json and one self-contained report.html."""
    from pneumoscan.evaluation import evaluate

    if bootstrap is not None and bootstrap < 1:
        raise typer.BadParameter(f"--bootstrap must be at least 1, got {bootstrap}")
    result = evaluate(model, data, out, split=split, cache_dir=cache_dir, bootstrap_samples=bootstrap,
                      bootstrap_seed=seed, device=device, batch_size=batch_size, progress=progress)
    for m in result["models"]:
        op = m["summary"]["thresholds"]["operating"]
        sens, spec = op["metrics"]["sensitivity"], op["metrics"]["specificity"]
        console.print(
            f"model {m['index']} ({m['model']}): AUC {m['summary']['roc_auc']['value']:.4f}; at threshold "
            f"{op['threshold']:.4f}{'' if m['operating_point_source'] == 'checkpoint' else ' (0.5 fallback)'}: "
            f"sensitivity {sens['value']:.3f} [{sens['ci'][0]:.3f}, {sens['ci'][1]:.3f}], "
            f"specificity {spec['value']:.3f} [{spec['ci'][0]:.3f}, {spec['ci'][1]:.3f}]"
        )
        for w in m["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    console.print(f"wrote {out / 'report.html'} and {out / 'metrics.json'}")


def calibrate_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.safetensors) to recalibrate.")],
    data: Annotated[Path, typer.Option(help="Labelled validation images: folder or CSV manifest (not the model's training images).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New checkpoint to write (.safetensors; a .json copy goes beside it).")],
    split: Annotated[Optional[str], typer.Option(help="Sub-folder of --data, or the manifest's 'split' value, e.g. 'val'.")] = None,
    target_sensitivity: Annotated[Optional[float], typer.Option(help="Lowest validation sensitivity allowed (default: the checkpoint's, 0.95).")] = None,
    miss_cost: Annotated[Optional[float], typer.Option(help="How many false alarms one missed pneumonia weighs (default: the checkpoint's, 3).")] = None,
    cache_dir: Annotated[Path, typer.Option(help="Decoded-image cache folder.")] = Path(DEFAULT_CACHE_DIR),
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Choose the operating threshold (and fit the temperature) again on labelled validation images, e.g. a
    site's own, and write a new checkpoint with the same weights. Do not report performance on these images."""
    from pneumoscan.operating_point import rechoose_operating_point

    if target_sensitivity is not None and not 0.0 < target_sensitivity <= 1.0:
        raise typer.BadParameter(f"--target-sensitivity must be in (0, 1], got {target_sensitivity}")
    if miss_cost is not None and miss_cost < 0:
        raise typer.BadParameter(f"--miss-cost must be at least 0, got {miss_cost}")
    if out.exists() and out.resolve() == model.resolve():
        raise typer.BadParameter(f"--out {out}: write the recalibrated checkpoint to a new file, not over --model")
    r = rechoose_operating_point(model, data, out, split=split, target_sensitivity=target_sensitivity, miss_cost=miss_cost,
                    cache_dir=cache_dir, device=device)
    for f, why in r["failures"]:
        console.print(f"[yellow]skipped[/yellow] {f}: {why}", highlight=False)
    b, a = r["before"] or {}, r["after"]
    if b.get("threshold") is not None:
        console.print(f"before: threshold {b['threshold']:.4f} ({b.get('method', '?')})")
    console.print(f"after:  threshold {a['threshold']:.4f} ({a['method']}, miss cost {a['miss_cost']:g}, target sensitivity "
                  f"{a['target_sensitivity']:g}) on {r['n_images']} images: sensitivity {a['val_sensitivity']:.3f}, "
                  f"specificity {a['val_specificity']:.3f}; temperature {r['calibration']['temperature']:.3f}")
    console.print(f"wrote {out}")


def export_cmd(
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX file to write.", show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Checkpoint (.safetensors) to export. Default: $PNEUMOSCAN_MODEL, else the packaged model.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch, input 'image', output 'logit'), with its metadata embedded."""
    from pneumoscan.export import export_onnx
    from pneumoscan.predict import default_model_path

    source = model if model is not None else default_model_path()
    if source.suffix.lower() == ".onnx":
        raise typer.BadParameter("give the .safetensors checkpoint to export, not an ONNX file", param_hint="--model")
    written = export_onnx(source, onnx, opset=opset)
    console.print(f"wrote {written} (opset {opset}) from {source}")
