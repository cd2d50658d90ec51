"""``pneumoscan data ...``: inspect, split, cache a labelled data set, and prune old caches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from pneumoscan.cli.common import click_errors as _click_errors
from pneumoscan.cli.common import console
from pneumoscan.constants import DEFAULT_CACHE_DIR

data_app = typer.Typer(help="Inspect, split and cache a labelled X-ray data set.", no_args_is_help=True)

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
