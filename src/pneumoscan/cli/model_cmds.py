"""Model commands: ``train``, ``evaluate`` and ``export`` (registered on the app by the package; ``calibrate`` lives
with ``adapt`` in :mod:`.adapt_cmd`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pneumoscan.cli.common import click_errors as _click_errors
from pneumoscan.cli.common import BACKEND_HELP, Backend, console, needs_torch
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
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="Fine-tune this checkpoint (.safetensors) on a site's labelled films (--data): its weights, "
                            "architecture, preprocessing, outputs and recipe; fine-tuning defaults: learning rate a tenth "
                            "of the parent's, 5 epochs, 30% of the site's patients validate. Change the rest with --set "
                            "(train.epochs, train.lr, train.batch_size, augment.*, eval.*); model.name, "
                            "model.image_size and model.cause_head stay the parent's. Films the parent trained on are "
                            "refused.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar over the batches.")] = True,
) -> None:
    """Train a model on the patient-level train split (or all of --data but the images of --val), validating after
    every epoch, with early stopping on validation AUC. Scales to several GPUs or nodes under torchrun
    (DistributedDataParallel). With --init-from, fine-tune an existing model on a site's labelled films."""
    with needs_torch("pneumoscan train", ("torch", "kornia")):  # kornia: the augmentation
        import dataclasses

        from pneumoscan.config import default_data_root, load_config
        from pneumoscan.training import resume as resume_run
        from pneumoscan.training import train
        from pneumoscan.training.finetune import finetune_config

        overrides = list(set_ or [])
        if resume is not None:
            if config is not None or out is not None or init_from is not None:
                raise _click_errors.UsageError("--resume takes the run's own config (and parent); do not combine it with "
                                               "--config, --out or --init-from")
            extra = [f"data.root={json.dumps(str(data))}"] if data is not None else []
            extra += [f"data.val={json.dumps(str(val))}"] if val is not None else []  # moved, like --data
            result = resume_run(resume, overrides=extra + overrides, progress=progress)
        else:
            if out is None:
                raise _click_errors.UsageError("--out is required (the run folder to create), or use --resume RUN")
            if init_from is not None and config is not None:
                raise _click_errors.UsageError("--init-from takes the parent's recipe; change it with --set, not --config")
            cfg = finetune_config(init_from, overrides) if init_from is not None else load_config(config, overrides)
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
        if result.fine_tuned_from:
            console.print("fine-tuned: its threshold and temperature were chosen on the site's validation split; evaluate "
                          "it on separate labelled films of the site before use (decision support, not a diagnosis)",
                          highlight=False)


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
    if bootstrap is not None and bootstrap < 1:
        raise typer.BadParameter(f"--bootstrap must be at least 1, got {bootstrap}")
    # The decoded-image cache's scoring and the gallery's heatmaps still run through torch (also with --backend onnx).
    with needs_torch("pneumoscan evaluate", check_first=False):
        from pneumoscan.evaluation import evaluate

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


def export_cmd(
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX file to write.", show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Checkpoint (.safetensors) to export. Default: $PNEUMOSCAN_MODEL, else the packaged model.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch, input 'image', output 'logit'), with its metadata embedded."""
    from pneumoscan.inference.predictor import default_model_path

    source = model if model is not None else default_model_path()
    if source.suffix.lower() == ".onnx":
        raise typer.BadParameter("give the .safetensors checkpoint to export, not an ONNX file", param_hint="--model")
    with needs_torch("pneumoscan export"):
        from pneumoscan.inference.export import export_onnx

        written = export_onnx(source, onnx, opset=opset)
    console.print(f"wrote {written} (opset {opset}) from {source}")
