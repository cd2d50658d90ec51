"""The jobs behind ``pneumoscan predict`` and ``pneumoscan drift``, as library calls: the command line only parses
options, calls one of these and prints what it returns.

* :func:`predict_job`: check the options and outputs before anything is scored, collect the files, score them (one
  :class:`~pneumoscan.result.Result` each, streamed: a DICOM input's SR and SC are written as its result arrives,
  then its film is dropped), rank the rows, check drift, write the worklist.
* :func:`drift_job`: score a folder of a site's films and give the drift verdict on its in-scope images.

Decision support, not a diagnosis.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumoscan.constants import DECISION_WORDS, NOT_READ_WORDS
from pneumoscan.errors import UsageError
from pneumoscan.gate.drift import MIN_IMAGES
from pneumoscan.metrics import score_100
from pneumoscan.result import Result
from pneumoscan.utils import atomic_write_text, check_writable_folder
from pneumoscan.worklist.collect import collect
from pneumoscan.worklist.rows import batch_drift, count_results, drift_message, worklist_rows
from pneumoscan.worklist.write import write_results

if TYPE_CHECKING:
    from pneumoscan.dicom_out import DicomBatch
    from pneumoscan.gate.drift import DriftResult
    from pneumoscan.inference.predictor import Predictor

__all__ = ["DriftReport", "PredictReport", "PredictRequest", "check_model_choice", "check_predict_outputs",
           "check_predict_request", "drift_job", "predict_job", "summary_line"]

log = logging.getLogger("pneumoscan.worklist")


@dataclass(frozen=True)
class PredictRequest:
    """What ``pneumoscan predict`` was asked to do (its options; see ``pneumoscan predict --help``)."""

    paths: Sequence[Path]
    model: Path | None = None
    recursive: bool = False
    out: Path | None = None
    heatmaps: Path | None = None
    save_raw: bool = False
    outline: bool = False
    batch_size: int = 64
    threads: int | None = None
    backend: str = "onnx"
    progress: bool = False
    overwrite: bool = False
    adult_age: float = 18.0
    dicom_out: Path | None = None
    pseudonymise: bool = False
    secret_file: Path | None = None


@dataclass
class PredictReport:
    """What :func:`predict_job` did: the ranked worklist ``rows``, what the batch held (``counts``), its drift
    verdict (or why there is none), the DICOM outputs, and the lines a person reads."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]
    drift: DriftResult | None
    drift_reason: str
    site_line: str
    summary: str
    dicom: DicomBatch | None = None
    dicom_note: str = ""
    skipped_note: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def any_read(self) -> bool:
        """True when at least one image was read (scored, or not assessed): the command's success."""
        return self.counts["n_in_scope"] + self.counts["n_out_of_scope"] > 0


def check_predict_request(req: PredictRequest) -> None:
    """The option combinations ``predict`` refuses before it reads anything.

    Raises:
        UsageError: naming the option at fault.
    """
    out = req.out
    if out is not None and out.is_dir():
        raise UsageError(f"{out} is a folder; give the .csv or .json file to write", "--out")
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise UsageError(f"must end in .csv or .json, got {out.name!r}", "--out")
    if req.save_raw and req.heatmaps is None:
        raise UsageError("--save-raw needs --heatmaps DIR")
    if req.outline and req.heatmaps is None and req.dicom_out is None:
        raise UsageError("--outline draws on heatmaps; pass --heatmaps DIR or --dicom-out DIR")
    if not req.adult_age > 0:
        raise UsageError(f"must be a positive number of years, got {req.adult_age:g}", "--adult-age")
    if req.secret_file is not None and not req.pseudonymise:
        raise UsageError("--secret-file is the secret for --pseudonymise; pass --pseudonymise too")
    if req.model is not None:
        check_model_choice(req, req.model)


def check_model_choice(req: PredictRequest, model: Path) -> None:
    """The torch backend needs the ``.safetensors`` checkpoint, not an ONNX export alone (heatmaps do not: occlusion
    sensitivity runs on ONNX Runtime).

    Raises:
        UsageError: ``--backend torch`` with an ONNX model.
    """
    if model.suffix.lower() == ".onnx":
        if req.backend == "torch":
            raise UsageError("--backend torch needs the .safetensors checkpoint; an ONNX export runs with ONNX "
                             "Runtime (the default backend)")


def check_predict_outputs(req: PredictRequest, files: Sequence[Path]) -> None:
    """Refuse, before any image is scored, outputs that cannot be written or would replace a user's files.

    Raises:
        UsageError: naming the option at fault.
    """
    if req.out is not None:
        check_writable_folder(req.out.parent, "--out")
        if req.out.exists() and not req.overwrite:
            raise UsageError(f"{req.out} already exists; pass --overwrite to replace it, or choose another file",
                             "--out")
    if req.heatmaps is not None:
        from pneumoscan.inference.render import unique_stems

        check_writable_folder(req.heatmaps, "--heatmaps")
        suffixes = ("_heatmap.png", "_heatmap.npy") if req.save_raw else ("_heatmap.png",)
        clash = [req.heatmaps / f"{stem}{sfx}" for stem in unique_stems(files) for sfx in suffixes
                 if (req.heatmaps / f"{stem}{sfx}").exists()]
        if clash and not req.overwrite:
            raise UsageError(f"{len(clash)} heatmap file(s) would replace existing ones (e.g. {clash[0]}); pass "
                             "--overwrite to replace them, or choose another folder", "--heatmaps")
    if req.dicom_out is not None:  # its files are named by new UIDs: none can clash with an existing one
        check_writable_folder(req.dicom_out, "--dicom-out")


def pseudonym_key(req: PredictRequest | Any) -> bytes | None:
    """The pseudonym key a request asks for (``req.pseudonymise``, ``req.secret_file``), or None.

    Raises:
        UsageError: the key file is missing or unusable."""
    if not req.pseudonymise:
        return None
    from pneumoscan.pseudonym import PseudonymKeyError, load_key

    try:
        return load_key(req.secret_file)
    except PseudonymKeyError as exc:
        raise UsageError(str(exc)) from exc


def _score(predictor: Predictor, files: Sequence[Path], req: PredictRequest, key: bytes | None
           ) -> tuple[list[Result], DicomBatch | None]:
    """Every file's result, in input order; with ``--dicom-out`` each DICOM input's SR (and SC, from the film its
    result kept) written as the result arrives, and the film dropped then (memory stays bounded)."""
    if req.dicom_out is None:
        return predictor.score_files(files, batch_size=req.batch_size, progress=req.progress,
                                     heatmaps=req.heatmaps, save_raw=req.save_raw, outline=req.outline), None
    from pneumoscan.dicom_out import DicomBatch, is_dicom_file
    from pneumoscan.utils import remove_stale_temps

    batch = DicomBatch(outline=req.outline)
    remove_stale_temps(req.dicom_out)
    results: list[Result] = []
    for r in predictor.iter_results(files, batch_size=req.batch_size, progress=req.progress, heatmaps=req.heatmaps,
                                    save_raw=req.save_raw, explain=is_dicom_file, outline=req.outline):
        batch.add(r, req.dicom_out, looks_dicom=not r.read and is_dicom_file(r.source), pseudonym_key=key)
        if r.source in batch.failed:  # like a heatmap that could not be written: the row says why
            why = f"DICOM results not written: {batch.failed[r.source]}"
            r = r.replace(note=f"{r.note}; {why}" if r.note else why)
        results.append(r.without_film())
    return results, batch


def summary_line(rows: Sequence[dict[str, Any]], counts: dict[str, int], threshold: float, *,
                 n_positive: int | None = None) -> str:
    """How many were scored, flagged, not flagged, scored with the unfamiliar-film caution (when any), not assessed
    and not read, in the decision wording of the page and report. ``n_positive``: the number flagged, for a caller
    that holds counts but no rows (the archive engine, :mod:`pneumoscan.scale`; ``rows`` may then be empty)."""
    n_pos = sum(bool(r["positive"]) for r in rows) if n_positive is None else n_positive
    n_caution = counts.get("n_cautioned", 0)
    return (f"{counts['n_in_scope']} of {counts.get('n_files', len(rows))} image(s) scored; "
            f"{DECISION_WORDS['PNEUMONIA']}: {n_pos} "
            f"(score at or above the threshold {score_100(threshold):.1f} / 100); "
            f"{DECISION_WORDS['NORMAL']}: {counts['n_in_scope'] - n_pos}; "
            + (f"scored with a caution (unfamiliar film, unlike the training films): {n_caution}; " if n_caution
               else "")
            + f"{DECISION_WORDS['OUT_OF_SCOPE']}: {counts['n_out_of_scope']}; "
            f"{NOT_READ_WORDS}: {counts['n_unreadable']}")


def predict_job(req: PredictRequest) -> PredictReport:
    """``pneumoscan predict``: see the module docstring. Every file gets a row, scored or with its error; the
    worklist is written to ``req.out`` (CSV or JSON) when given.

    Raises:
        UsageError: bad options, no image files found, or an output that exists (without ``overwrite``) or cannot be
            written; nothing is scored then.
        CheckpointError: the model file cannot be used.
    """
    from pneumoscan.inference.predictor import Predictor, RuntimeOptions, default_model_path
    from pneumoscan.inference.provenance import provenance

    check_predict_request(req)
    key = pseudonym_key(req)
    model_path = req.model if req.model is not None else default_model_path()
    check_model_choice(req, model_path)
    collected = collect(req.paths, recursive=req.recursive)  # names what it skips at INFO (-v)
    skipped_note = collected.summary()
    if not collected.files:
        hint = "" if req.recursive else " (use --recursive to search sub-folders)"
        raise UsageError(f"no image files found in {', '.join(map(str, req.paths))}{hint}"
                         + (f"; {skipped_note}" if skipped_note else ""))
    check_predict_outputs(req, collected.files)
    predictor = Predictor.from_checkpoint(model_path, options=RuntimeOptions(threads=req.threads,
                                                                             backend=req.backend),
                                          adult_age_years=req.adult_age)
    results, dicom = _score(predictor, collected.files, req, key)
    rows = worklist_rows(results, pseudonym_key=key)
    for row in rows:
        if dicom is not None:
            row["dicom_out"] = [str(p) for p in dicom.written.get(row["path"], [])]
    counts = count_results(results)
    drift, no_drift_reason = batch_drift(predictor, results)
    if drift is None:
        log.info("drift not checked: %s", no_drift_reason)
    prov = provenance(predictor.meta)
    info = {"model": predictor.model_name, "model_file": predictor.path, "model_version": predictor.version,
            "threshold": predictor.threshold, "temperature": predictor.temperature, **prov,
            "adult_age_years": req.adult_age, "pseudonymised": req.pseudonymise, **counts,
            "drift": None if drift is None else drift.to_dict(), "drift_reason": no_drift_reason}
    if req.out is not None:
        write_results(rows, req.out, info=info)
    n_no_heatmap = sum(r.read and bool(r.note) and r.heatmap_path == "" for r in results)
    summary = (summary_line(rows, counts, predictor.threshold) + f"; scores {prov['score_calibration']}"
               + (f" -> {req.out}" if req.out is not None else "")
               + (f"; heatmaps in {req.heatmaps}" if req.heatmaps else "")
               + (f" ({n_no_heatmap} could not be written, see the error column)" if n_no_heatmap else ""))
    return PredictReport(rows=rows, counts=counts, drift=drift, drift_reason=no_drift_reason,
                         site_line=prov["provenance"], summary=summary, dicom=dicom,
                         dicom_note="" if dicom is None or req.dicom_out is None else dicom.summary(req.dicom_out),
                         skipped_note=skipped_note, info=info)


@dataclass
class DriftReport:
    """What :func:`drift_job` found: the verdict, the batch's counts, the out-of-scope reasons, and the document
    ``--json`` writes."""

    drift: DriftResult
    counts: dict[str, int]
    reasons: dict[str, int]
    message: str
    doc: dict[str, Any]


def drift_job(paths: Sequence[Path], *, model: Path | None = None, recursive: bool = False, threads: int | None = None,
              batch_size: int = 64, progress: bool = False, adult_age: float = 18.0,
              json_out: Path | None = None) -> DriftReport:
    """``pneumoscan drift``: score ``paths`` and test whether their in-scope images still look like the model's
    training films (:func:`~pneumoscan.worklist.rows.batch_drift`); with ``json_out`` the verdict is written there.

    Raises:
        UsageError: bad options, no image files found, or ``json_out`` cannot be written.
        PneumoscanError: the model carries no reference, or too few in-scope images for a drift check (the
            message gives the counts and what to do).
    """
    from pneumoscan.errors import PneumoscanError
    from pneumoscan.inference.predictor import Predictor, RuntimeOptions, default_model_path

    if json_out is not None:
        if json_out.is_dir():
            raise UsageError(f"{json_out} is a folder; give the .json file to write", "--json")
        if json_out.suffix.lower() != ".json":
            raise UsageError(f"must end in .json, got {json_out.name!r}", "--json")
        check_writable_folder(json_out.parent, "--json")
    if not adult_age > 0:
        raise UsageError(f"must be a positive number of years, got {adult_age:g}", "--adult-age")
    model_path = model if model is not None else default_model_path()
    collected = collect(paths, recursive=recursive)
    if not collected.files:
        hint = "" if recursive else " (use --recursive to search sub-folders)"
        raise UsageError(f"no image files found in {', '.join(map(str, paths))}{hint}")
    predictor = Predictor.from_checkpoint(model_path, options=RuntimeOptions(threads=threads),
                                          adult_age_years=adult_age)
    if predictor.reference is None:
        raise PneumoscanError(
            f"{model_path} carries no reference of its training films, so there is nothing to compare the images "
            f"with. Add one without retraining (from the pneumoscan source tree): python scripts/build_reference.py "
            f"--model {model_path} --data TRAINING_FOLDER --out NEW.safetensors, then pass --model NEW.safetensors")
    results = predictor.score_files(collected.files, batch_size=batch_size, progress=progress)
    counts = count_results(results)
    if counts["n_in_scope"] < MIN_IMAGES:
        raise PneumoscanError(
            f"only {counts['n_in_scope']} in-scope image(s) found in {', '.join(map(str, paths))} "
            f"({counts['n_out_of_scope']} out of scope, {counts['n_unreadable']} unreadable, of {counts['n_files']} "
            f"file(s)); a drift check needs at least {MIN_IMAGES} in-scope images: add more of this site's films")
    drift, why = batch_drift(predictor, results)
    if drift is None:
        raise PneumoscanError(why)
    reasons = Counter(r.scope_reason for r in results if r.read and not r.in_scope)
    message = drift_message(drift)
    doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": predictor.model_name,
           "model_file": predictor.path, "model_version": predictor.version, "adult_age_years": adult_age,
           **drift.to_dict(), "message": message, **counts, "out_of_scope_reasons": dict(reasons.most_common()),
           "paths": [os.fspath(p) for p in paths]}
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(doc, indent=2) + "\n")
    return DriftReport(drift=drift, counts=counts, reasons=dict(reasons.most_common()), message=message, doc=doc)
