"""The ``pneumoscan`` command: thin commands over the library.

Each command parses its arguments, makes one library call and writes the
output. Errors the user can fix (bad file, bad config, bad data folder) are
printed as one line, never as a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer import echo

try:  # typer >= 0.22 vendors its own copy of click; older releases use click itself
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    import click.exceptions as _click_errors
from rich.console import Console
from rich.table import Table

from pneumoscan import __version__
from pneumoscan.constants import DEFAULT_CACHE_DIR

log = logging.getLogger("pneumoscan")

app = typer.Typer(
    name="pneumoscan",
    help="Decision support for pneumonia on pediatric chest X-rays: train, evaluate, explain and serve a CNN. "
    "Not a diagnosis: a second reader for a clinician.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Inspect, split and cache a labelled X-ray data set.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"pneumoscan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more detail.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """pneumoscan: find pneumonia on pediatric chest X-rays (decision support, not a diagnosis)."""
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )


DataPath = Annotated[
    Optional[Path],
    typer.Argument(
        help="Data set folder (<root>[/<split>]/<NORMAL|PNEUMONIA>/*) or CSV manifest (path,label[,patient_id]). "
        "Default: $PNEUMOSCAN_DATA.",
        show_default=False,
    ),
]


def _resolve_data(path: Optional[Path]) -> Path:
    from pneumoscan.config import DATA_ENV_VAR, default_data_root

    if path is not None:
        return path
    env = default_data_root()
    if env is None:
        raise _click_errors.UsageError(f"no data path given and ${DATA_ENV_VAR} is not set")
    return env


@data_app.command("summary")
def data_summary(
    path: DataPath = None,
    split: Annotated[Optional[str], typer.Option(help="Sub-folder to read, e.g. 'train'.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON to this file.")] = None,
    check: Annotated[bool, typer.Option(help="Read every file's header (sizes, modes; finds unreadable files).")] = True,
) -> None:
    """Report images per class and cause, patients per class, imbalance, images per patient, sizes and modes."""
    from pneumoscan.data import index_dataset, summarize
    from pneumoscan.utils import atomic_write_text

    root = _resolve_data(path)
    index = index_dataset(root, split=split, check=check)
    summary = summarize(index)
    _print_summary(summary, str(root))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        console.print(f"wrote {json_out}")


def _print_summary(s: dict, root: str) -> None:
    table = Table(title=f"Data set: {root}", show_lines=False)
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("patients", justify="right")
    table.add_column("bacteria", justify="right")
    table.add_column("virus", justify="right")
    table.add_column("unknown cause", justify="right")
    for cls, n in s["images_per_class"].items():
        causes = s.get("images_per_cause", {}).get(cls, {})
        table.add_row(
            cls,
            f"{n:,}",
            f"{s['patients_per_class'].get(cls, 0):,}",
            f"{causes.get('bacteria', 0):,}",
            f"{causes.get('virus', 0):,}",
            f"{causes.get('unknown', 0):,}",
        )
    table.add_row("total", f"{s['n_images']:,}", f"{s['n_patients']:,}", "", "", "", style="bold")
    console.print(table)
    ratio = s.get("imbalance_ratio")
    console.print(
        "imbalance (majority/minority images): "
        + (f"{ratio:.2f}" if ratio is not None else "undefined (a class has no images)")
        + (f"; PNEUMONIA:NORMAL = {s['pneumonia_to_normal']:.2f}" if s.get("pneumonia_to_normal") is not None else "")
    )
    ipp = s["images_per_patient"]
    console.print(f"images per patient: mean {ipp['mean']:.2f}, median {ipp['median']:g}, max {ipp['max']}")
    hist = ipp.get("histogram") or {}
    if hist:
        console.print("patients with k images: " + ", ".join(f"{k}: {v:,}" for k, v in list(hist.items())[:8])
                      + (" ..." if len(hist) > 8 else ""))
    sizes = s.get("image_size")
    if sizes:
        console.print(
            "width  min/median/max: {min}/{median:g}/{max}".format(**sizes["width"])
            + "\nheight min/median/max: {min}/{median:g}/{max}".format(**sizes["height"])
        )
    if s.get("modes"):
        console.print("modes: " + ", ".join(f"{k} {v:,}" for k, v in s["modes"].items()))
    if s.get("formats"):
        console.print("formats: " + ", ".join(f"{k} {v:,}" for k, v in s["formats"].items()))
    n_skipped = s.get("n_skipped", 0)
    if n_skipped:
        console.print(f"[yellow]{n_skipped} unreadable file(s) skipped (listed above)[/yellow]")


@data_app.command("split")
def data_split(
    path: DataPath = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV manifest to write (path,label,patient_id,cause,split).")] = Path(
        "split.csv"
    ),
    split: Annotated[Optional[str], typer.Option(help="Sub-folder to read, e.g. 'train'.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Fraction of patients for validation (default from config: 0.1).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Split seed (default from config).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Config file (TOML or YAML).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: section.key=value.")] = None,
) -> None:
    """Split a training folder into train and validation by patient, stratified by label, and write a manifest."""
    from pneumoscan.config import load_config
    from pneumoscan.data import index_dataset, split_index, write_manifest

    cfg = load_config(config, set_ or [])
    frac = cfg.data.val_fraction if val_fraction is None else val_fraction
    if not 0.0 < frac < 1.0:
        raise typer.BadParameter(f"--val-fraction must be between 0 and 1, got {frac}")
    root = _resolve_data(path)
    index = index_dataset(root, split=split, check=False)
    train, val = split_index(index, frac, cfg.data.split_seed if seed is None else seed)
    write_manifest(out, list(train.records) + list(val.records), ["train"] * len(train) + ["val"] * len(val))
    console.print(
        f"train: {len(train):,} images, {len(set(r.patient_id for r in train.records)):,} patients; "
        f"val: {len(val):,} images, {len(set(r.patient_id for r in val.records)):,} patients -> {out}"
    )


@data_app.command("cache")
def data_cache(
    path: DataPath = None,
    size: Annotated[int, typer.Option(help="Side of the cached square images in pixels.")] = 224,
    split: Annotated[Optional[str], typer.Option(help="Sub-folder to read, e.g. 'train'.")] = None,
    cache_dir: Annotated[Path, typer.Option(help="Cache folder.")] = Path(DEFAULT_CACHE_DIR),
    workers: Annotated[int, typer.Option(help="Decoding threads.")] = 2,
) -> None:
    """Decode and resize every image once into a memory-mapped cache (reused by training and evaluation)."""
    from pneumoscan.data import build_cache, index_dataset

    root = _resolve_data(path)
    index = index_dataset(root, split=split, check=False)
    cache = build_cache(index.records, size, cache_dir, num_workers=workers)
    console.print(f"cache: {len(cache):,} images at {size}x{size} in {cache_dir} ({len(cache.failures)} failed)")


@data_app.command("prune-cache")
def data_prune_cache(
    cache_dir: Annotated[Path, typer.Option(help="Cache folder.")] = Path(DEFAULT_CACHE_DIR),
    older_than_days: Annotated[float, typer.Option(help="Delete caches last used more than this many days ago.")] = 30.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
) -> None:
    """Delete decoded-image caches that no run has used recently (each data set and size has its own)."""
    from pneumoscan.data import prune_cache

    if older_than_days < 0:
        raise typer.BadParameter(f"--older-than-days must be at least 0, got {older_than_days}")
    removed = prune_cache(cache_dir, older_than_days=older_than_days, dry_run=dry_run)
    for path, size in removed:
        console.print(f"{'would delete' if dry_run else 'deleted'} {path} ({size / 2**20:.1f} MiB)", highlight=False)
    total = sum(size for _, size in removed) / 2**20
    console.print(f"{len(removed)} file(s), {total:.1f} MiB {'would be ' if dry_run else ''}freed in {cache_dir}")


@app.command("train")
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


@app.command("predict")
def predict_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, DICOM) and/or folders of them.", show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Checkpoint (.safetensors) or ONNX export. Default: $PNEUMOSCAN_MODEL, else the packaged model.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also scan sub-folders.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the worklist to this .csv or .json file (instead of printing it).")] = None,
    heatmaps: Annotated[Optional[Path], typer.Option(help="Write a Grad-CAM overlay <stem>_gradcam.png per image into this folder (needs a .safetensors model).")] = None,
    save_raw: Annotated[bool, typer.Option("--save-raw", help="With --heatmaps, also save each raw map (float32, image size) as <stem>_gradcam.npy.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 16,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for the model (default: all cores; 1 is faster on a busy machine).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file and existing heatmap files of the same names (otherwise the command refuses before scoring anything).")] = False,
) -> None:
    """Score X-rays for pneumonia and list them as a triage worklist, highest probability first.

    Unreadable files are listed with their error and skipped; the others are still scored. Outputs are
    checked before any image is scored: an existing --out file or heatmap is never replaced without
    --overwrite. Exit code 0 when at least one image was scored, 1 when none could be (or on a bad model
    file), 2 on a bad invocation. Decision support, not a diagnosis.
    """
    from pneumoscan.predict import DISCLAIMER, Predictor, RuntimeOptions, default_model_path
    from pneumoscan.worklist import collect, triage, write_results

    if out is not None and out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; give the .csv or .json file to write", param_hint="--out")
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise typer.BadParameter(f"must end in .csv or .json, got {out.name!r}", param_hint="--out")
    if save_raw and heatmaps is None:
        raise _click_errors.UsageError("--save-raw needs --heatmaps DIR")
    model_path = model if model is not None else default_model_path()
    if heatmaps is not None and model_path.suffix.lower() == ".onnx":
        raise _click_errors.UsageError(
            "--heatmaps needs the .safetensors checkpoint: Grad-CAM uses gradients, which an ONNX export lacks")
    collected = collect(paths, recursive=recursive)  # names what it skips at INFO (-v)
    files, skipped_note = collected.files, collected.summary()
    if not files:
        hint = "" if recursive else " (use --recursive to search sub-folders)"
        raise _click_errors.UsageError(f"no image files found in {', '.join(map(str, paths))}{hint}"
                                       + (f"; {skipped_note}" if skipped_note else ""))
    _check_predict_outputs(out, heatmaps, files, save_raw=save_raw, overwrite=overwrite)
    predictor = Predictor.from_checkpoint(model_path, options=RuntimeOptions(threads=threads))
    rows = triage(predictor, files, batch_size=batch_size, progress=progress, heatmaps=heatmaps, save_raw=save_raw)
    n_ok = sum(r["probability"] is not None for r in rows)  # a scored row may still note a missing heatmap
    n_no_heatmap = sum(r["probability"] is not None and bool(r["error"]) for r in rows)
    if out is None:
        _print_worklist(rows)
    else:
        info = {"model": predictor.model_name, "model_file": predictor.path, "model_version": predictor.version,
                "threshold": predictor.threshold, "temperature": predictor.temperature}
        write_results(rows, out, info=info)
    n_pos = sum(bool(r["positive"]) for r in rows)
    console.print(f"{n_ok} of {len(rows)} image(s) scored, {n_pos} flagged PNEUMONIA at threshold "
                  f"{predictor.threshold:.3f}; {len(rows) - n_ok} unreadable"
                  + (f" -> {out}" if out is not None else "") + (f"; heatmaps in {heatmaps}" if heatmaps else "")
                  + (f" ({n_no_heatmap} could not be written, see the error column)" if n_no_heatmap else ""))
    if skipped_note:
        console.print(f"{skipped_note}; -v lists them", highlight=False)
    console.print(f"[bold]{DISCLAIMER}[/bold]", soft_wrap=True)
    if n_ok == 0:
        raise typer.Exit(code=1)


def _writable_folder(folder: Path, option: str) -> None:
    """Create ``folder`` if needed and prove that a file can be made in it, or raise a usage error."""
    import tempfile

    if folder.exists() and not folder.is_dir():
        raise typer.BadParameter(f"{folder} is a file, not a folder", param_hint=option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise typer.BadParameter(f"cannot write into {folder}: {exc.strerror or exc}", param_hint=option) from exc


def _check_predict_outputs(out: Optional[Path], heatmaps: Optional[Path], files: list[Path], *, save_raw: bool,
                           overwrite: bool) -> None:
    """Refuse, before any image is scored, outputs that cannot be written or would replace a user's files."""
    from pneumoscan.explain import unique_stems

    if out is not None:
        _writable_folder(out.parent, "--out")
        if out.exists() and not overwrite:
            raise typer.BadParameter(f"{out} already exists; pass --overwrite to replace it, or choose another "
                                     "file", param_hint="--out")
    if heatmaps is not None:
        _writable_folder(heatmaps, "--heatmaps")
        suffixes = ("_gradcam.png", "_gradcam.npy") if save_raw else ("_gradcam.png",)
        clash = [heatmaps / f"{stem}{sfx}" for stem in unique_stems(files) for sfx in suffixes
                 if (heatmaps / f"{stem}{sfx}").exists()]
        if clash and not overwrite:
            raise typer.BadParameter(
                f"{len(clash)} heatmap file(s) would replace existing ones (e.g. {clash[0]}); pass --overwrite "
                "to replace them, or choose another folder", param_hint="--heatmaps")


def _print_worklist(rows: list[dict]) -> None:
    from rich.markup import escape

    table = Table(title="Pneumonia triage worklist (highest probability first)")
    for name, justify in (("rank", "right"), ("path", "left"), ("probability", "right"), ("decision", "left"),
                          ("threshold", "right"), ("error", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        decision = "[bold red]PNEUMONIA[/bold red]" if r["positive"] else r["decision"]
        table.add_row("" if r["rank"] is None else str(r["rank"]), escape(r["path"]),
                      "" if r["probability"] is None else f"{r['probability']:.3f}", decision,
                      f"{r['threshold']:.3f}", escape(r["error"]))
    console.print(table)


@app.command("export")
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


@app.command("serve")
def serve_cmd(
    model: Annotated[Optional[Path], typer.Option(help="Checkpoint (.safetensors) or ONNX export. Default: the shipped model.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but a loopback address needs a token (or --insecure-no-auth).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token_file: Annotated[Optional[Path], typer.Option(help="File whose first line is the API token (else $PNEUMOSCAN_API_TOKEN). With a token, "
                                                       "API calls need 'Authorization: Bearer <token>'.")] = None,
    insecure_no_auth: Annotated[bool, typer.Option("--insecure-no-auth", help="Serve off localhost without a token (not recommended: the API handles patient data).")] = False,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body accepted, in MiB.")] = 64.0,
    max_pixels: Annotated[int, typer.Option(help="Largest image accepted, in pixels (the server's own limit, below the library's 60 million).")] = 25_000_000,
    max_files: Annotated[int, typer.Option(help="Most files in one request.")] = 32,
    workers: Annotated[int, typer.Option(min=1, help="Threads decoding and scoring, all requests together.")] = 2,
    memory_budget_mb: Annotated[float, typer.Option(help="Estimated decoding memory allowed at once, all images together, in MiB; "
                                                    "a larger image is refused with 413.")] = 1024.0,
    header_timeout: Annotated[float, typer.Option(help="Seconds a client has to send its request headers.")] = 30.0,
    body_timeout: Annotated[float, typer.Option(help="Longest pause, in seconds, while a client sends a request body.")] = 30.0,
    save_uploads: Annotated[Optional[Path], typer.Option(help="Keep a copy of each upload in this folder (off by default; owner-only files).")] = None,
    upload_retention_days: Annotated[float, typer.Option(help="With --save-uploads: delete saved uploads older than this many days.")] = 30.0,
) -> None:
    """Serve the web page and the REST API (FastAPI under uvicorn) with one model loaded at start-up.
    Open http://HOST:PORT/ in a browser; API documentation is at /docs. Decision support, not a diagnosis."""
    from pneumoscan.serve import ServeSettings, run
    from pneumoscan.serve.security import load_token

    for name, value in (("--max-request-mb", max_request_mb), ("--memory-budget-mb", memory_budget_mb),
                        ("--header-timeout", header_timeout), ("--body-timeout", body_timeout),
                        ("--upload-retention-days", upload_retention_days)):
        if not value > 0:
            raise typer.BadParameter(f"must be positive, got {value:g}", param_hint=name)
    settings = ServeSettings(
        max_request_bytes=int(max_request_mb * 1024 * 1024), max_pixels=max_pixels, max_files=max_files,
        workers=workers, memory_budget_bytes=int(memory_budget_mb * 1024 * 1024),
        header_timeout=header_timeout, body_timeout=body_timeout,
        save_uploads=str(save_uploads) if save_uploads else None, upload_retention_days=upload_retention_days,
        token=load_token(token_file),
    )
    run(model, host=host, port=port, settings=settings, insecure_no_auth=insecure_no_auth)


@app.command("evaluate")
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


@app.command("calibrate")
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


def _known_errors() -> tuple[type[BaseException], ...]:
    from pneumoscan.errors import PneumoscanError

    return (PneumoscanError, FileNotFoundError, PermissionError, IsADirectoryError)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point. Returns the exit code (0 ok, 1 a problem with the input, 2 a bad invocation)."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    try:
        result = command.main(args=args, prog_name="pneumoscan", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except getattr(_click_errors, "NoArgsIsHelpError", ()) as exc:
        # A bare group shows its help; that is not an error for a person exploring the tool.
        echo(exc.ctx.get_help())
        return 0
    except _click_errors.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        echo(f"pneumoscan: error: {exc.format_message()}{hint}", err=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        echo("pneumoscan: aborted", err=True)
        return 130
    except _click_errors.ClickException as exc:
        echo(f"pneumoscan: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        echo("pneumoscan: interrupted", err=True)
        return 130
    except Exception as exc:
        if _state["debug"]:
            raise
        known = isinstance(exc, _known_errors())
        msg = str(exc).replace("\n", " ")
        if not known:
            msg = f"{type(exc).__name__}: {msg} (run with --debug for the traceback)"
        echo(f"pneumoscan: error: {msg}", err=True)
        return 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
