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
    cache_dir: Annotated[Path, typer.Option(help="Cache folder.")] = Path(".pneumoscan-cache"),
    workers: Annotated[int, typer.Option(help="Decoding threads.")] = 2,
) -> None:
    """Decode and resize every image once into a memory-mapped cache (reused by training and evaluation)."""
    from pneumoscan.data import build_cache, index_dataset

    root = _resolve_data(path)
    index = index_dataset(root, split=split, check=False)
    cache = build_cache(index.records, size, cache_dir, num_workers=workers)
    console.print(f"cache: {len(cache):,} images at {size}x{size} in {cache_dir} ({len(cache.failures)} failed)")


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
    from pneumoscan.train import resume as resume_run
    from pneumoscan.train import train

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


def _known_errors() -> tuple[type[BaseException], ...]:
    from pneumoscan.config import ConfigError
    from pneumoscan.data import DatasetError
    from pneumoscan.checkpoint import CheckpointError
    from pneumoscan.io import ImageError
    from pneumoscan.train import RunExistsError

    return (ConfigError, DatasetError, ImageError, CheckpointError, RunExistsError, FileNotFoundError,
            PermissionError, IsADirectoryError)


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
