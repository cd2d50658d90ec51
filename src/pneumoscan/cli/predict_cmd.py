"""``pneumoscan predict``: score X-rays and list them as a triage worklist (registered on the app by the package)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from pneumoscan.cli.common import (
    ADULT_AGE_DEFAULT,
    BACKEND_HELP,
    Backend,
    check_adult_age,
    console,
    writable_folder,
)
from pneumoscan.cli.common import click_errors as _click_errors

log = logging.getLogger(__name__)


def predict_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, DICOM) and/or folders of them.", show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Checkpoint (.safetensors) or ONNX export. Default: $PNEUMOSCAN_MODEL, else the packaged model.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also scan sub-folders.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the worklist to this .csv or .json file (instead of printing it).")] = None,
    heatmaps: Annotated[Optional[Path], typer.Option(help="Write a Grad-CAM overlay <stem>_gradcam.png per image into this folder (needs a .safetensors model).")] = None,
    save_raw: Annotated[bool, typer.Option("--save-raw", help="With --heatmaps, also save each raw map (float32, image size) as <stem>_gradcam.npy.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass (with --heatmaps at most 16 full-size films are held at once).")] = 64,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for the model, with either backend (default: all cores; 1 is faster on a busy machine).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help=BACKEND_HELP)] = Backend.onnx,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file and existing heatmap files of the same names (otherwise the command refuses before scoring anything).")] = False,
    adult_age: Annotated[float, typer.Option("--adult-age", metavar="YEARS", help="A DICOM PatientAge at or above this many years puts the image out of scope (adult patient).")] = ADULT_AGE_DEFAULT,
    dicom_out: Annotated[Optional[Path], typer.Option("--dicom-out", metavar="DIR", help="For every DICOM input, write a Structured Report of the result and (with a .safetensors model) a Secondary Capture of the Grad-CAM overlay into DIR as <SOPInstanceUID>.dcm, in the input's study, new series. Other inputs are skipped; files are never replaced.")] = None,
    pseudonymise: Annotated[bool, typer.Option("--pseudonymise", help="Replace patient IDs, accession numbers and study/instance UIDs in every output (worklist, DICOM results) with keyed pseudonyms: the same ID and secret always give the same pseudonym. Needs a site secret (--secret-file or $PNEUMOSCAN_PSEUDONYM_KEY). File paths are kept as given.")] = False,
    secret_file: Annotated[Optional[Path], typer.Option("--secret-file", metavar="PATH", help="The site secret for --pseudonymise (default: $PNEUMOSCAN_PSEUDONYM_KEY).")] = None,
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
    from pneumoscan.predict import (
        DISCLAIMER,
        Predictor,
        RuntimeOptions,
        default_model_path,
    )
    from pneumoscan.provenance import provenance
    from pneumoscan.worklist import (
        batch_drift,
        collect,
        count_results,
        drift_message,
        worklist_rows,
        write_results,
    )

    _check_predict_args(out, heatmaps, save_raw=save_raw, adult_age=adult_age, secret_file=secret_file,
                        pseudonymise=pseudonymise)
    pseudonym_key = _pseudonym_key(secret_file) if pseudonymise else None
    model_path = model if model is not None else default_model_path()
    _check_model_choice(model_path, heatmaps, backend)
    collected = collect(paths, recursive=recursive)  # names what it skips at INFO (-v)
    files, skipped_note = collected.files, collected.summary()
    if not files:
        hint = "" if recursive else " (use --recursive to search sub-folders)"
        raise _click_errors.UsageError(f"no image files found in {', '.join(map(str, paths))}{hint}"
                                       + (f"; {skipped_note}" if skipped_note else ""))
    _check_predict_outputs(out, heatmaps, files, save_raw=save_raw, overwrite=overwrite)
    if dicom_out is not None:  # its files are named by new UIDs: none can clash with an existing one
        writable_folder(dicom_out, "--dicom-out")
    predictor = Predictor.from_checkpoint(model_path, options=RuntimeOptions(threads=threads, backend=backend.value),
                                          adult_age_years=adult_age)
    results = predictor.score_files(files, batch_size=batch_size, progress=progress, heatmaps=heatmaps,
                                    save_raw=save_raw)
    rows = worklist_rows(results, predictor.threshold, pseudonym_key=pseudonym_key)
    dicom_note = "" if dicom_out is None else _write_dicom(predictor, results, rows, dicom_out, pseudonym_key)
    counts = count_results(results)
    drift, no_drift_reason = batch_drift(predictor, results)
    if drift is None:
        log.info("drift not checked: %s", no_drift_reason)
    n_no_heatmap = sum(r["probability"] is not None and bool(r["error"]) for r in rows)
    if out is None:
        _print_worklist(rows)
    else:
        info = {"model": predictor.model_name, "model_file": predictor.path, "model_version": predictor.version,
                "threshold": predictor.threshold, "temperature": predictor.temperature,
                **provenance(predictor.meta), "adult_age_years": adult_age, "pseudonymised": pseudonymise, **counts,
                "drift": None if drift is None else drift.to_dict(), "drift_reason": no_drift_reason}
        write_results(rows, out, info=info)
    site_line = provenance(predictor.meta)["provenance"]
    if site_line:  # a model adapted or calibrated at a site says so, every time
        console.print(f"{site_line}.", highlight=False, soft_wrap=True)
    console.print(_summary_line(rows, counts, predictor.threshold)
                  + (f" -> {out}" if out is not None else "") + (f"; heatmaps in {heatmaps}" if heatmaps else "")
                  + (f" ({n_no_heatmap} could not be written, see the error column)" if n_no_heatmap else ""),
                  highlight=False)
    if dicom_note:
        console.print(dicom_note, highlight=False, soft_wrap=True)
    if drift is not None:
        console.print(drift_message(drift), style="bold yellow" if drift.shifted else None, highlight=False,
                      soft_wrap=True)
    if skipped_note:
        console.print(f"{skipped_note}; -v lists them", highlight=False)
    console.print(f"[bold]{DISCLAIMER}[/bold]", soft_wrap=True)
    if counts["n_in_scope"] + counts["n_out_of_scope"] == 0:
        raise typer.Exit(code=1)


def _check_predict_args(out: Optional[Path], heatmaps: Optional[Path], *, save_raw: bool, adult_age: float,
                        secret_file: Optional[Path], pseudonymise: bool) -> None:
    """The option combinations ``predict`` refuses before it reads anything."""
    if out is not None and out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; give the .csv or .json file to write", param_hint="--out")
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise typer.BadParameter(f"must end in .csv or .json, got {out.name!r}", param_hint="--out")
    if save_raw and heatmaps is None:
        raise _click_errors.UsageError("--save-raw needs --heatmaps DIR")
    check_adult_age(adult_age)
    if secret_file is not None and not pseudonymise:
        raise _click_errors.UsageError("--secret-file is the secret for --pseudonymise; pass --pseudonymise too")


def _check_model_choice(model_path: Path, heatmaps: Optional[Path], backend: Backend) -> None:
    """Grad-CAM and the torch backend need the ``.safetensors`` checkpoint, not an ONNX export alone."""
    if heatmaps is not None and model_path.suffix.lower() == ".onnx":
        raise _click_errors.UsageError(
            "--heatmaps needs the .safetensors checkpoint: Grad-CAM uses gradients, which an ONNX export lacks")
    if backend is Backend.torch and model_path.suffix.lower() == ".onnx":
        raise _click_errors.UsageError("--backend torch needs the .safetensors checkpoint; an ONNX export runs "
                                       "with ONNX Runtime (the default backend)")


def _write_dicom(predictor, results, rows: list[dict], dicom_out: Path, pseudonym_key: Optional[bytes]) -> str:
    """DICOM SR (and SC with a heatmap) per DICOM input; a row whose files could not be written says why."""
    from pneumoscan.dicom_out import write_dicom_batch

    dicom = write_dicom_batch(predictor, results, dicom_out, pseudonym_key=pseudonym_key)
    for row in rows:
        row["dicom_out"] = [str(p) for p in dicom.written.get(row["path"], [])]
        if row["path"] in dicom.failed:  # like a heatmap that could not be written: the row says why
            why = f"DICOM results not written: {dicom.failed[row['path']]}"
            row["error"] = f"{row['error']}; {why}" if row["error"] else why
    return dicom.summary(dicom_out)


def _summary_line(rows: list[dict], counts: dict, threshold: float) -> str:
    """How many were scored, flagged, not assessed and not read, in the decision wording of the page and report."""
    from pneumoscan.constants import DECISION_WORDS, NOT_READ_WORDS
    from pneumoscan.metrics import score_100

    n_pos = sum(bool(r["positive"]) for r in rows)
    return (f"{counts['n_in_scope']} of {len(rows)} image(s) scored; {DECISION_WORDS['PNEUMONIA']}: {n_pos} "
            f"(score at or above the threshold {score_100(threshold):.1f} / 100); "
            f"{DECISION_WORDS['OUT_OF_SCOPE']}: {counts['n_out_of_scope']}; "
            f"{NOT_READ_WORDS}: {counts['n_unreadable']}")


def _pseudonym_key(secret_file: Optional[Path]) -> bytes:
    """The site secret for --pseudonymise, or a usage error that says how to make one."""
    from pneumoscan.pseudonym import PseudonymKeyError, load_key

    try:
        return load_key(secret_file)
    except PseudonymKeyError as exc:
        raise _click_errors.UsageError(str(exc)) from exc


def _check_predict_outputs(out: Optional[Path], heatmaps: Optional[Path], files: list[Path], *, save_raw: bool,
                           overwrite: bool) -> None:
    """Refuse, before any image is scored, outputs that cannot be written or would replace a user's files."""
    if out is not None:
        writable_folder(out.parent, "--out")
        if out.exists() and not overwrite:
            raise typer.BadParameter(f"{out} already exists; pass --overwrite to replace it, or choose another "
                                     "file", param_hint="--out")
    if heatmaps is not None:
        from pneumoscan.explain import (
            unique_stems,  # torch: only with heatmaps, which need it anyway
        )

        writable_folder(heatmaps, "--heatmaps")
        suffixes = ("_gradcam.png", "_gradcam.npy") if save_raw else ("_gradcam.png",)
        clash = [heatmaps / f"{stem}{sfx}" for stem in unique_stems(files) for sfx in suffixes
                 if (heatmaps / f"{stem}{sfx}").exists()]
        if clash and not overwrite:
            raise typer.BadParameter(
                f"{len(clash)} heatmap file(s) would replace existing ones (e.g. {clash[0]}); pass --overwrite "
                "to replace them, or choose another folder", param_hint="--heatmaps")


def _print_worklist(rows: list[dict]) -> None:
    """The worklist as people read it everywhere (the page, the CSV's decision_text, the report): the score and
    the threshold on 0-100, the decision in the one wording (:func:`pneumoscan.metrics.decision_words`)."""
    from rich.markup import escape

    from pneumoscan.metrics import decision_words, score_100

    table = Table(title="Pneumonia triage worklist (highest score first; images not assessed after them)")
    who = [c for c in ("patient_id", "accession", "age", "view") if any(r.get(c) for r in rows)]  # DICOM inputs
    for name, justify in (("rank", "right"), ("path", "left"), *((c, "left") for c in who),
                          ("score (0-100)", "right"), ("decision", "left"), ("threshold (0-100)", "right"),
                          ("error", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        words = escape(decision_words(r["decision"]))
        if r.get("in_scope") is False:  # its probability is kept in the files for audit, never shown as a risk
            score, decision = "–", f"[yellow]{words}[/yellow]: {escape(r['scope_reason'])}"
        else:
            score = "" if r["probability"] is None else f"{score_100(r['probability']):.1f}"
            decision = f"[bold red]{words}[/bold red]" if r["positive"] else words
        table.add_row("" if r["rank"] is None else str(r["rank"]), escape(r["path"]),
                      *(escape(r.get(c) or "") for c in who), score, decision, f"{score_100(r['threshold']):.1f}",
                      escape(r["error"]))
    console.print(table)
