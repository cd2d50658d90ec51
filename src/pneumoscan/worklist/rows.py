"""Results as worklist rows, the one ranking, and what a batch held.

A worklist lists every input file: the images in scope first, highest pneumonia probability first (``rank`` 1);
then the images the scope gate refused (decision ``OUT_OF_SCOPE``, no rank, with the reason: they are not assessed,
so they never sit at the top of a triage list); then the files that could not be read, each with its error. It is
decision support, not a diagnosis.

* :func:`worklist_row`: one :class:`~pneumoscan.result.Result` as a row (it reads the result's decision; it decides
  nothing).
* :func:`rank`: THE ranking, for the CLI's worklists and the web API's results alike.
* :func:`worklist_rows`, :func:`triage`: both together (and scoring, for :func:`triage`).
* :func:`count_results`, :func:`batch_drift`, :func:`drift_message`: what a batch held (scored, out of scope,
  unreadable) and its drift verdict, for the summaries of ``predict`` and ``drift``.
* :func:`context_columns`: an image's DICOM context as worklist columns (keyed pseudonyms with ``--pseudonymise``;
  the patient's name never).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pneumoscan.gate.drift import MIN_IMAGES, NotEnoughImagesError
from pneumoscan.io import ImageContext
from pneumoscan.pseudonym import pseudonymise, pseudonymise_uid
from pneumoscan.result import CONTEXT_KEYS, Result

if TYPE_CHECKING:
    from pneumoscan.gate.drift import DriftResult
    from pneumoscan.inference.predictor import Predictor

__all__ = ["CONTEXT_COLUMNS", "OPTIONAL_COLUMNS", "RESULT_COLUMNS", "batch_drift", "context_columns",
           "count_results", "drift_message", "rank", "triage", "worklist_row", "worklist_rows"]

#: The image's DICOM context in a worklist (:func:`context_columns`): the one vocabulary of
#: :class:`~pneumoscan.io.ImageContext`; empty for JPEG, PNG, TIFF and BMP.
CONTEXT_COLUMNS = CONTEXT_KEYS
#: Columns of the CSV worklist, in order (``heatmap`` only when heatmaps were made, ``dicom_out`` only with DICOM
#: results): who and what first, then the result (the score and threshold on 0-100 and the decision in words, as
#: people see them; then the machine columns), then the UIDs a PACS finds the image by, then on every row what
#: made it and when, and the disclaimer (columns, not a comment line, so every spreadsheet and CSV reader keeps
#: them).
RESULT_COLUMNS = ("rank", "path", "patient_id", "accession", "study_date", "age", "sex", "view", "score",
                  "score_threshold", "score_calibration", "decision_text", "probability", "decision", "positive", "in_scope",
                  "scope_reason", "scope_caution", "threshold", "cause", "cause_text", "cause_score",
                  "cause_probability", "cause_threshold", "error", "study_uid", "series_uid", "sop_uid", "heatmap",
                  "dicom_out", "model_name", "model_version", "created", "disclaimer")
#: Columns a CSV has only when some row has them.
OPTIONAL_COLUMNS = ("heatmap", "dicom_out")


def context_columns(context: ImageContext | None, pseudonym_key: bytes | str | None = None) -> dict[str, str]:
    """An image's DICOM context as the :data:`CONTEXT_COLUMNS` (``study_date`` ``YYYYMMDD``, ``age`` the DICOM Age
    String, e.g. ``"004Y"``, ``view`` the ViewPosition); every value ``""`` for a non-DICOM image, an unread file,
    or a tag the header lacks. Never the patient's name.

    With ``pseudonym_key`` the identifiers are keyed pseudonyms (:mod:`pneumoscan.pseudonym`): ``patient_id`` and
    ``accession`` ``anon-<16 hex>``, the UIDs ``2.25.<decimal>`` (what ``--dicom-out`` writes with the same key);
    the same value and key always give the same pseudonym."""
    values = (context or ImageContext()).to_dict()
    if pseudonym_key is not None:
        for name in ("patient_id", "accession"):
            values[name] = pseudonymise(values[name], pseudonym_key)
        for name in ("study_uid", "series_uid", "sop_uid"):
            values[name] = pseudonymise_uid(values[name], pseudonym_key)
    return values


def worklist_row(result: Result, *, pseudonym_key: bytes | str | None = None) -> dict[str, Any]:
    """One result's worklist row: ``rank`` (None until :func:`rank` numbers it; always None out of scope), ``path``
    (the result's source), the image's DICOM context (:func:`context_columns`, pseudonymised with
    ``pseudonym_key``), ``score`` and ``score_threshold`` (0-100, one decimal; no score when not assessed), ``score_calibration``
    (where the model's score was calibrated, in words),
    ``decision_text`` (the one wording), ``probability``, ``decision`` (the result's: ``PNEUMONIA``, ``NORMAL``,
    ``OUT_OF_SCOPE``, or ``""`` when the file could not be read), ``positive`` (None when not read), ``in_scope``,
    ``scope_reason``, ``scope_caution`` (in scope: a chest radiograph unlike the training films, scored and ranked
    like any other, with this caution beside its score; ``""`` otherwise), ``threshold``, the cause of a flagged film (``cause`` ``BACTERIAL``/``VIRAL``, ``cause_text``,
    ``cause_score`` the viral score on 0-100, ``cause_probability`` P(viral): blank for every film that is not
    flagged, and for a model without a cause output; ``cause_threshold``, like ``threshold``, on every row of a model
    with a cause output), ``error`` (why the file could not be read, or what went wrong with an output of
    a scored file; ``""`` when all went well), ``model_name``, ``model_version`` and, when a heatmap was asked for and the
    file scored, ``heatmap`` (its path; ``""`` when it could not be written). ``predict --dicom-out`` adds
    ``dicom_out``.

    An out-of-scope image keeps its probability, for audit only: it is not a risk and is never ranked."""
    ctx = context_columns(result.context, pseudonym_key)
    cause = result.to_dict()  # the cause columns as every output gives them (blank unless the film has a cause)
    row: dict[str, Any] = {
        "rank": None, "path": result.source, **{k: ctx[k] for k in CONTEXT_COLUMNS[:6]},
        "score": result.score, "score_threshold": result.score_threshold,
        "score_calibration": result.model.calibration, "decision_text": result.decision_text,
        "probability": result.probability, "decision": result.decision,
        "positive": result.positive if result.read else None, "in_scope": result.in_scope,
        "scope_reason": result.scope_reason, "scope_caution": result.scope_caution, "threshold": result.threshold,
        **{k: cause[k] for k in ("cause", "cause_text", "cause_score", "cause_probability", "cause_threshold")},
        "error": result.error or result.note,
        **{k: ctx[k] for k in CONTEXT_COLUMNS[6:]},
        "model_name": result.model.name, "model_version": result.model.version}
    if result.heatmap_path is not None:
        row["heatmap"] = result.heatmap_path
    return row


def rank(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """THE ranking: number the in-scope scored rows by risk, in place. Each row with a ``probability`` (present and
    not None) whose ``in_scope`` is not False gets ``rank``, 1 for the highest probability, ties in input order. A
    row the scope gate refused (``in_scope`` False) gets ``rank`` None, whatever its probability; the other rows
    (files that could not be read) are left as they are.

    Returns the ranked rows in rank order, then the out-of-scope rows, then the others, both in input order.
    """
    refused = [r for r in rows if r.get("in_scope") is False]
    scored = sorted((r for r in rows if r.get("probability") is not None and r.get("in_scope") is not False),
                    key=lambda r: -r["probability"])
    for number, row in enumerate(scored, start=1):
        row["rank"] = number
    for row in refused:
        row["rank"] = None
    return scored + refused + [r for r in rows if r.get("probability") is None and r.get("in_scope") is not False]


def worklist_rows(results: Sequence[Result], *, pseudonym_key: bytes | str | None = None) -> list[dict[str, Any]]:
    """:func:`worklist_row` of each result, in :func:`rank` order."""
    return rank([worklist_row(r, pseudonym_key=pseudonym_key) for r in results])


def triage(predictor: Predictor, paths: Sequence[str | os.PathLike[str]], *, batch_size: int = 16,
           progress: bool = False, heatmaps: str | os.PathLike[str] | None = None,
           save_raw: bool = False, pseudonym_key: bytes | str | None = None) -> list[dict[str, Any]]:
    """Score ``paths`` with ``predictor`` (:meth:`~pneumoscan.inference.predictor.Predictor.score_files`, which
    documents the arguments) and return their :func:`worklist_rows`. Nothing stops at a bad file; its row carries
    the error."""
    results = predictor.score_files(paths, batch_size=batch_size, progress=progress, heatmaps=heatmaps,
                                    save_raw=save_raw)
    return worklist_rows(results, pseudonym_key=pseudonym_key)


def count_results(results: Sequence[Result]) -> dict[str, int]:
    """What a batch held: ``n_files``, ``n_in_scope`` (scored and in scope), ``n_cautioned`` (of those, the chest
    films unlike the training films: scored, with :data:`~pneumoscan.constants.UNFAMILIAR_CAUTION`),
    ``n_out_of_scope`` (scored, refused by the scope gate) and ``n_unreadable`` (not read)."""
    n_read = sum(r.read for r in results)
    n_out = sum(r.read and not r.in_scope for r in results)
    n_caution = sum(r.read and bool(r.in_scope) and bool(r.scope_caution) for r in results)
    return {"n_files": len(results), "n_in_scope": n_read - n_out, "n_cautioned": n_caution, "n_out_of_scope": n_out,
            "n_unreadable": len(results) - n_read}


def batch_drift(predictor: Predictor, results: Sequence[Result]) -> tuple[DriftResult | None, str]:
    """The drift verdict on the in-scope images of a batch (:meth:`~pneumoscan.inference.predictor.Predictor.check_drift`),
    or why there is none: returns ``(result, "")`` or ``(None, reason)``, the reason in words for people (the
    model carries no reference of its training films; fewer than :data:`pneumoscan.gate.drift.MIN_IMAGES` in-scope
    images)."""
    if predictor.reference is None:
        return None, ("the model carries no reference of its training films, so drift cannot be checked "
                      "(add one with scripts/build_reference.py)")
    n_in = count_results(results)["n_in_scope"]
    if n_in < MIN_IMAGES:
        return None, f"only {n_in} in-scope image(s); a drift check needs at least {MIN_IMAGES}"
    try:
        result = predictor.check_drift(results)
    except NotEnoughImagesError as exc:  # in scope, but the model file gave no features for them
        return None, f"drift not checked: {exc}"
    if result is None:
        return None, "the model carries no reference of its training films, so drift cannot be checked"
    return result, ""


def drift_message(result: DriftResult) -> str:
    """One sentence for people: the verdict, the statistic against its threshold and, when shifted, what to do."""
    head = f"Drift check on {result.n_images} in-scope image(s)"
    if result.n_used != result.n_images:
        head += f" ({result.n_used} sampled)"
    if result.shifted:
        note = f". Note: {result.case_mix_note}" if result.case_mix_note else ""
        return (f"{head}: SHIFTED (statistic {result.statistic:.2f} > threshold {result.threshold:.2f}): these images "
                "differ from the training data; results may not hold; first adapt the model to this site's films, "
                "which needs no labels (pneumoscan adapt), then calibrate it on labelled films of this site "
                f"(pneumoscan calibrate){note}")
    return f"{head}: not shifted (statistic {result.statistic:.2f} <= threshold {result.threshold:.2f})"
