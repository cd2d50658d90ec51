"""``pneumoscan predict``: score X-rays and list them as a triage worklist (registered on the app by the package)."""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from pneumoscan.cli.common import ADULT_AGE_DEFAULT, BACKEND_HELP, Backend, console, usage_errors

log = logging.getLogger(__name__)


class Engine(str, Enum):
    """``--engine``: this process (the default) or Ray Data (:mod:`pneumoscan.scale`, the ``ray`` extra)."""

    local = "local"
    ray = "ray"


#: The options only ``--engine ray`` takes, and those it does not.
_RAY_ONLY = ("--address", "--run-dir", "--manifest", "--actors", "--rehash")
_NOT_WITH_RAY = ("--heatmaps", "--save-raw", "--outline", "--dicom-out", "--backend torch")


def predict_cmd(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Image files (JPEG, PNG, DICOM) and/or folders of them; with --engine ray also globs, quoted ('archive/**/*.dcm').", show_default=False)] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Checkpoint (.safetensors) or ONNX export. Default: $PNEUMOSCAN_MODEL, else the packaged model.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also scan sub-folders.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the worklist to this .csv or .json file (instead of printing it).")] = None,
    heatmaps: Annotated[Optional[Path], typer.Option(help="Write a heatmap overlay <stem>_heatmap.png per image into this folder: where hiding the film lowered the score (occlusion sensitivity), coloured only where that evidence is.")] = None,
    save_raw: Annotated[bool, typer.Option("--save-raw", help="With --heatmaps, also save each raw map (float32, image size) as <stem>_heatmap.npy.")] = False,
    outline: Annotated[bool, typer.Option("--outline", help="Outline the strongest region (the map at 60% of its maximum or more) in cyan on every heatmap overlay and Secondary Capture.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass (with --heatmaps at most 16 full-size films are held at once).")] = 64,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for the model, with either backend (default: all cores; 1 is faster on a busy machine). With --engine ray: per actor (default 1).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help=BACKEND_HELP)] = Backend.onnx,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file and existing heatmap files of the same names (otherwise the command refuses before scoring anything).")] = False,
    adult_age: Annotated[float, typer.Option("--adult-age", metavar="YEARS", help="A DICOM PatientAge at or above this many years puts the image out of scope (adult patient).")] = ADULT_AGE_DEFAULT,
    dicom_out: Annotated[Optional[Path], typer.Option("--dicom-out", metavar="DIR", help="For every DICOM input, write a Structured Report of the result and a Secondary Capture of the heatmap overlay into DIR as <SOPInstanceUID>.dcm, in the input's study, new series. Other inputs are skipped; files are never replaced.")] = None,
    pseudonymise: Annotated[bool, typer.Option("--pseudonymise", help="Replace patient IDs, accession numbers and study/instance UIDs in every output (worklist, DICOM results) with keyed pseudonyms: the same ID and secret always give the same pseudonym. Needs a site secret (--secret-file or $PNEUMOSCAN_PSEUDONYM_KEY). File paths are kept as given.")] = False,
    secret_file: Annotated[Optional[Path], typer.Option("--secret-file", metavar="PATH", help="The site secret for --pseudonymise (default: $PNEUMOSCAN_PSEUDONYM_KEY).")] = None,
    engine: Annotated[Engine, typer.Option("--engine", help="local: score in this process (the default). ray: score an archive with Ray Data (the 'ray' extra): a pool of model actors, results as Parquet shards in --run-dir, resumable (rerun the same command after a crash or Ctrl+C: files already scored are skipped), the drift check once at the end. Not with --heatmaps, --dicom-out or --backend torch.")] = Engine.local,
    address: Annotated[Optional[str], typer.Option("--address", metavar="ADDR", help="With --engine ray: the Ray cluster to join (as 'ray start --head' printed it, e.g. 10.0.0.5:6379, or 'auto'); its nodes must see the files and the model at the same paths. Default: start Ray on this machine.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", metavar="DIR", help="With --engine ray: the run folder (the Parquet shards in DIR/shards, run.json, summary.json). Rerun with the same DIR to resume.")] = None,
    manifest: Annotated[Optional[list[Path]], typer.Option("--manifest", metavar="FILE", help="With --engine ray: a text file of image paths, one per line (relative to the file's folder; blank and # lines skipped). Repeatable.")] = None,
    actors: Annotated[Optional[int], typer.Option("--actors", min=1, help="With --engine ray: model actors (each loads the model once and uses --threads CPUs; default: the cluster's CPUs / --threads).")] = None,
    rehash: Annotated[bool, typer.Option("--rehash", help="With --engine ray, on a resumed run: read and hash again the files scored before, and skip only those whose content hash is unchanged (by default an unchanged size and modification time proves it, without reading).")] = False,
    shard_rows: Annotated[int, typer.Option("--shard-rows", min=1, hidden=True, help="Rows per Parquet shard.")] = 5000,
) -> None:
    """Score X-rays for pneumonia and list them as a triage worklist, highest probability first.

    Every image passes the scope gate first (DICOM metadata, pixel statistics and, when the model carries a
    reference of its training films, the model's own features): an image that is not a pediatric frontal
    chest radiograph is not assessed (decision OUT_OF_SCOPE, with the reason) and is listed after the scored
    images, without a rank. With 50 or more in-scope images and a model that carries a reference, the
    summary also gives the batch's drift verdict (see 'pneumoscan drift --help'), also recorded in a JSON
    worklist. A model adapted or calibrated at a site (pneumoscan adapt, pneumoscan calibrate) says so in one
    line, and the JSON worklist records it (site_state, adaptation, site_calibration). Unreadable files are
    listed with their error and skipped; the others are still scored.
    A DICOM input's context goes into the worklist (patient_id, accession, study_date, age, sex, view,
    study_uid, sop_uid; empty for other formats); patient names never appear in any output or log.
    Outputs are checked before any image is scored: an existing --out file or heatmap is never replaced
    without --overwrite. Exit code 0 when at least one image was read (scored or not assessed), 1 when none
    could be (or on a bad model file), 2 on a bad invocation. Decision support, not a diagnosis.
    """
    from pneumoscan.constants import DISCLAIMER
    from pneumoscan.errors import UsageError
    from pneumoscan.worklist import drift_message

    ray_only = dict(zip(_RAY_ONLY, (address, run_dir, manifest, actors, rehash)))
    not_with_ray = dict(zip(_NOT_WITH_RAY, (heatmaps, save_raw, outline, dicom_out, backend.value == "torch")))
    with usage_errors():
        if engine is Engine.ray:
            if given := [k for k, v in not_with_ray.items() if v]:
                raise UsageError(f"{', '.join(given)}: not with --engine ray, which scores an archive into Parquet "
                                 "shards; score the films you need them for with the default engine")
            if run_dir is None:
                raise UsageError("--engine ray needs --run-dir DIR (its results; rerun with the same DIR to resume)")
        elif given := [k for k, v in ray_only.items() if v]:
            raise UsageError(f"{', '.join(given)}: only with --engine ray")
        elif not paths:
            raise UsageError("give image files or folders to score")
    if engine is Engine.ray:
        _archive(paths or [], run_dir, manifest or [], model=model, recursive=recursive, out=out, batch_size=batch_size,
                 threads=threads, actors=actors, address=address, progress=progress, overwrite=overwrite,
                 adult_age=adult_age, pseudonymise=pseudonymise, secret_file=secret_file, rehash=rehash,
                 shard_rows=shard_rows)
        return
    from pneumoscan.worklist.job import PredictRequest, predict_job

    with usage_errors():
        report = predict_job(PredictRequest(
            paths=paths, model=model, recursive=recursive, out=out, heatmaps=heatmaps, save_raw=save_raw, outline=outline,
            batch_size=batch_size, threads=threads, backend=backend.value, progress=progress, overwrite=overwrite,
            adult_age=adult_age, dicom_out=dicom_out, pseudonymise=pseudonymise, secret_file=secret_file))
    if out is None:
        _print_worklist(report.rows)
    if report.site_line:  # a model adapted or calibrated at a site says so, every time
        console.print(f"{report.site_line}.", highlight=False, soft_wrap=True)
    console.print(report.summary, highlight=False)
    if report.dicom_note:
        console.print(report.dicom_note, highlight=False, soft_wrap=True)
    if report.drift is not None:
        console.print(drift_message(report.drift), style="bold yellow" if report.drift.shifted else None,
                      highlight=False, soft_wrap=True)
    if report.skipped_note:
        console.print(f"{report.skipped_note}; -v lists them", highlight=False)
    console.print(f"[bold]{DISCLAIMER}[/bold]", soft_wrap=True)
    if not report.any_read:
        raise typer.Exit(code=1)


def _print_worklist(rows: list[dict]) -> None:
    """The worklist as people read it everywhere (the page, the CSV's decision_text, the report), one line per film
    at the terminal's width: :func:`pneumoscan.cli.table.worklist_view`."""
    from pneumoscan.cli.table import worklist_view

    console.print(worklist_view(rows, console.width).renderable(), highlight=False)


def _archive(paths: list[Path], run_dir: Path, manifests: list[Path], **options: object) -> None:
    """``--engine ray``: one call to :func:`pneumoscan.scale.archive_job` (Ray is imported there, never by the
    default engine), then the summary: no worklist at the terminal (an archive's is too long; see --out)."""
    from pneumoscan.constants import DISCLAIMER
    from pneumoscan.scale import ArchiveRequest, archive_job
    from pneumoscan.worklist import drift_message

    threads = options.pop("threads") or 1
    with usage_errors():
        report = archive_job(ArchiveRequest(paths=paths, run_dir=run_dir, manifests=manifests, threads=threads,
                                            **options))  # type: ignore[arg-type]
    if report.site_line:
        console.print(f"{report.site_line}.", highlight=False, soft_wrap=True)
    console.print(f"{report.n_listed} file(s) listed; {report.n_done + report.n_unchanged} scored before (skipped); "
                  f"{report.n_scored} scored now by {report.n_actors} Ray actor(s)", highlight=False, soft_wrap=True)
    console.print(report.summary, highlight=False, soft_wrap=True)
    if report.drift is not None:
        console.print(drift_message(report.drift), style="bold yellow" if report.drift.shifted else None,
                      highlight=False, soft_wrap=True)
    elif report.drift_reason:
        console.print(f"Drift not checked: {report.drift_reason}", highlight=False, soft_wrap=True)
    if report.skipped_note:
        console.print(report.skipped_note, highlight=False, soft_wrap=True)
    console.print(f"[bold]{DISCLAIMER}[/bold]", soft_wrap=True)
    if not report.any_read:
        raise typer.Exit(code=1)
