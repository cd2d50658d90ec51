"""The triage worklist: find the images to score, turn each file's score into a row, rank the rows, write them.

A worklist lists every input file: the images in scope first, highest pneumonia probability first (``rank`` 1);
then the images the scope gate refused (decision ``OUT_OF_SCOPE``, no rank, with the reason: they are not
assessed, so they never sit at the top of a triage list); then the files that could not be read, each with its
error. It is decision support, not a diagnosis.

* :func:`collect`: files and folders in, the files to score out (and what was skipped, and why).
* :func:`triage`: score files with a :class:`~pneumoscan.predict.Predictor` and return ranked rows.
* :func:`worklist_row`, :func:`rank`, :func:`worklist_rows`: one file's row; the one ranking (the CLI's worklist
  and the web API's results both use it); both together.
* :func:`count_results`, :func:`batch_drift`, :func:`drift_message`: what a batch held (scored, out of scope,
  unreadable) and its drift verdict, for the summary of ``predict`` and ``drift``.
* :func:`context_columns`: an image's DICOM context as worklist columns (keyed pseudonyms with ``--pseudonymise``;
  the patient's name never).
* :func:`write_results`: rows to CSV or JSON.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumoscan.constants import DISCLAIMER, IMAGE_SUFFIXES, JUNK_NAMES, OTHER_IMAGE_SUFFIXES
from pneumoscan.drift import MIN_IMAGES, NotEnoughImagesError
from pneumoscan.io import ImageContext, sniff_format
from pneumoscan.metrics import decision_words, score_100
from pneumoscan.pseudonym import pseudonymise, pseudonymise_uid
from pneumoscan.scope import OUT_OF_SCOPE
from pneumoscan.scoring import decide, decision_label
from pneumoscan.utils import atomic_write_text, csv_safe_text

if TYPE_CHECKING:
    from pneumoscan.drift import DriftResult
    from pneumoscan.predict import FileResult, Predictor

__all__ = ["CONTEXT_COLUMNS", "IMAGE_SUFFIXES", "OTHER_IMAGE_SUFFIXES", "RESULT_COLUMNS", "Collected", "Skipped",
           "batch_drift", "collect", "collect_images", "context_columns", "count_results", "drift_message",
           "looks_like_image", "rank", "triage", "worklist_row", "worklist_rows", "write_results"]

log = logging.getLogger(__name__)

# IMAGE_SUFFIXES (formats io decodes) and OTHER_IMAGE_SUFFIXES (image kinds it cannot read: such a file is still
# listed, with io's error that says so, rather than skipped without a word) live in pneumoscan.constants.
#: The image's DICOM context in a worklist (:func:`context_columns`); empty for JPEG, PNG, TIFF and BMP.
CONTEXT_COLUMNS = ("patient_id", "accession", "study_date", "age", "sex", "view", "study_uid", "sop_uid")
#: Columns of the CSV worklist, in order (``heatmap`` only when heatmaps were made, ``dicom_out`` only with DICOM
#: results): who and what first, then the result (the score and threshold on 0-100 and the decision in words, as
#: people see them; then the machine columns), then the UIDs a PACS finds the image by, then on every row what
#: made it and when, and the disclaimer (columns, not a comment line, so every spreadsheet and CSV reader keeps
#: them).
RESULT_COLUMNS = ("rank", "path", "patient_id", "accession", "study_date", "age", "sex", "view", "score",
                  "score_threshold", "decision_text", "probability", "decision", "positive", "in_scope",
                  "scope_reason", "threshold", "error", "study_uid", "sop_uid", "heatmap", "dicom_out", "model",
                  "model_version", "created", "disclaimer")
#: Columns a CSV has only when some row has them.
_OPTIONAL_COLUMNS = ("heatmap", "dicom_out")
#: ISO-BMFF brands of HEIF/HEIC and AVIF still images (bytes 8..12 after ``ftyp``); video brands are not images.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})

HIDDEN = "hidden/system file"
OTHER = "other"
SUBFOLDER = "sub-folder"
UNLISTED = "folder that cannot be listed"


@dataclass(frozen=True)
class Skipped:
    """An entry of a folder that gets no row: ``kind`` is :data:`HIDDEN` (hidden or system file, or a hidden
    folder), :data:`OTHER` (a file that is not an image), :data:`SUBFOLDER` (not searched without
    ``recursive``) or :data:`UNLISTED` (a folder whose contents cannot be read, e.g. permission denied)."""

    path: Path
    kind: str


@dataclass(frozen=True)
class Collected:
    """What :func:`collect` found: ``files`` to score (each gets a row) and the folder entries ``skipped``."""

    files: list[Path]
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people, e.g. ``3 other file(s) in the folders skipped (not images: 2 hidden/system
        files, 1 other)``; ``""`` when nothing was skipped."""
        counts = Counter(s.kind for s in self.skipped)
        parts = []
        n_files = counts[HIDDEN] + counts[OTHER]
        if n_files:
            kinds = [f"{counts[HIDDEN]} hidden/system file{'s' * (counts[HIDDEN] != 1)}" if counts[HIDDEN] else "",
                     f"{counts[OTHER]} other" if counts[OTHER] else ""]
            parts.append(f"{n_files} other file(s) in the folders skipped (not images: "
                         f"{', '.join(k for k in kinds if k)})")
        if counts[SUBFOLDER]:
            parts.append(f"{counts[SUBFOLDER]} sub-folder(s) not searched (use --recursive)")
        if counts[UNLISTED]:
            parts.append(f"{counts[UNLISTED]} folder(s) could not be listed (see the warnings)")
        return "; ".join(parts)


def collect(inputs: Iterable[str | os.PathLike[str]], *, recursive: bool = False) -> Collected:
    """Expand files and folders into the files to score, and account for everything else.

    Files named on the command line are always kept (a missing, broken or non-image one gets its error in the
    results). From a folder (and its sub-folders with ``recursive``) a file is kept when it looks like an
    image (:func:`looks_like_image`: by name or by content, so DICOM files without an extension are found),
    when it cannot be opened to tell, and when it is a broken symbolic link or a loop of links: all of these
    get a row, scored or with their error. Only hidden and system files (``.DS_Store``, ``._*``,
    ``Thumbs.db``, ``desktop.ini``), hidden folders and files that are not images are skipped, and each is
    listed in :attr:`Collected.skipped`. Folder contents are sorted by path; duplicates (same resolved path)
    are kept once; a folder reached twice through links is searched once.
    """
    files: list[Path] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = _key(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    for raw in inputs:
        path = Path(raw)
        if not path.is_dir():
            add(path)
            continue
        found: list[Path] = []
        _walk(path, recursive, found, skipped, {_key(path)})
        for p in sorted(found):
            add(p)
    skipped.sort(key=lambda s: s.path)
    for s in skipped:
        if s.kind != UNLISTED:  # those were warned about already
            log.info("skipped %s (%s)", s.path, "not searched" if s.kind == SUBFOLDER else s.kind)
    return Collected(files, skipped)


def collect_images(inputs: Iterable[str | os.PathLike[str]], *, recursive: bool = False) -> list[Path]:
    """The files :func:`collect` keeps (for callers that do not report what was skipped)."""
    return collect(inputs, recursive=recursive).files


def _key(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13): its own name decides
        return Path(os.path.abspath(p))


def _walk(folder: Path, recursive: bool, found: list[Path], skipped: list[Skipped], visited: set[Path]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:  # its files cannot be listed, so they cannot be counted either: say so
        log.warning("cannot list the folder %s: %s", folder, exc.strerror or exc)
        skipped.append(Skipped(folder, UNLISTED))
        return
    for entry in entries:
        p = Path(entry.path)
        name = entry.name
        if name.startswith(".") or name.lower() in JUNK_NAMES:
            skipped.append(Skipped(p, HIDDEN))
            continue
        try:
            is_dir = entry.is_dir()  # follows links
            is_file = entry.is_file()
        except OSError:
            is_dir = is_file = False
        if is_dir:
            if not recursive:
                skipped.append(Skipped(p, SUBFOLDER))
            elif (key := _key(p)) not in visited:  # a link back up the tree is searched once
                visited.add(key)
                _walk(p, recursive, found, skipped, visited)
            continue
        if not is_file:
            if entry.is_symlink():  # broken link or a loop of links: its row says which
                found.append(p)
            else:  # a FIFO, socket or device: reading it could block, and it is no image
                skipped.append(Skipped(p, OTHER))
            continue
        if looks_like_image(p):
            found.append(p)
        else:
            skipped.append(Skipped(p, OTHER))


def looks_like_image(path: str | os.PathLike[str]) -> bool:
    """True when the name ends like an image (:data:`IMAGE_SUFFIXES`, :data:`OTHER_IMAGE_SUFFIXES`) or the
    first bytes are one (a supported format, GIF, WebP, JPEG 2000, HEIC/HEIF or AVIF), or when the file
    cannot be opened to tell (then reading it will report why)."""
    if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES | OTHER_IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return True
    return sniff_format(head) is not None or _other_image_magic(head)


def _other_image_magic(head: bytes) -> bool:
    return (head.startswith(b"GIF8")
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n")  # JPEG 2000 (JP2) signature box
            or head.startswith(b"\xff\x4f\xff\x51")  # JPEG 2000 codestream (J2K)
            or (head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS))


def triage(predictor: Predictor, paths: Sequence[str | os.PathLike[str]], *, batch_size: int = 16,
           progress: bool = False, heatmaps: str | os.PathLike[str] | None = None,
           save_raw: bool = False, pseudonym_key: bytes | str | None = None) -> list[dict[str, Any]]:
    """Score ``paths`` with ``predictor`` (:meth:`~pneumoscan.predict.Predictor.score_files`, which documents the
    arguments) and return one :func:`worklist_row` per file, in :func:`rank` order: in-scope images by probability,
    highest first; then out-of-scope images; then files that could not be read, both in input order. Nothing
    stops at a bad file; its row carries the error."""
    results = predictor.score_files(paths, batch_size=batch_size, progress=progress, heatmaps=heatmaps,
                                    save_raw=save_raw)
    return worklist_rows(results, predictor.threshold, pseudonym_key=pseudonym_key)


def worklist_rows(results: Sequence[FileResult], threshold: float, *,
                  pseudonym_key: bytes | str | None = None) -> list[dict[str, Any]]:
    """:func:`worklist_row` of each result, in :func:`rank` order (for callers that keep the results, e.g. for
    :func:`batch_drift`)."""
    return rank([worklist_row(r, threshold, pseudonym_key=pseudonym_key) for r in results])


def context_columns(context: ImageContext | None, pseudonym_key: bytes | str | None = None) -> dict[str, str]:
    """An image's DICOM context as the :data:`CONTEXT_COLUMNS`: ``patient_id``, ``accession``, ``study_date``
    (``YYYYMMDD``), ``age`` (the DICOM Age String, e.g. ``"004Y"``), ``sex``, ``view`` (ViewPosition), ``study_uid``
    and ``sop_uid``; every value ``""`` for a non-DICOM image, an unread file, or a tag the header lacks. Never the
    patient's name.

    With ``pseudonym_key`` the identifiers are keyed pseudonyms (:mod:`pneumoscan.pseudonym`): ``patient_id`` and
    ``accession`` ``anon-<16 hex>``, the UIDs ``2.25.<decimal>`` (what ``--dicom-out`` writes with the same key);
    the same value and key always give the same pseudonym."""
    ctx = context or ImageContext()
    values = {"patient_id": ctx.patient_id, "accession": ctx.accession, "study_date": ctx.study_date,
              "age": ctx.patient_age, "sex": ctx.patient_sex, "view": ctx.view_position, "study_uid": ctx.study_uid,
              "sop_uid": ctx.sop_uid}
    if pseudonym_key is not None:
        for name in ("patient_id", "accession"):
            values[name] = pseudonymise(values[name], pseudonym_key)
        for name in ("study_uid", "sop_uid"):
            values[name] = pseudonymise_uid(values[name], pseudonym_key)
    return values


def worklist_row(result: FileResult, threshold: float, *,
                 pseudonym_key: bytes | str | None = None) -> dict[str, Any]:
    """One file's worklist row: ``rank`` (None until :func:`rank` numbers it; always None out of scope), ``path``,
    the image's DICOM context (:func:`context_columns`, pseudonymised with ``pseudonym_key``; ``""`` for other
    formats), ``probability``, ``decision`` (``"PNEUMONIA"``/``"NORMAL"`` by :func:`pneumoscan.scoring.decide`;
    ``"OUT_OF_SCOPE"`` when the scope gate refused the image; ``""`` when the file could not be read), ``positive``
    (bool; False out of scope; None when not read), ``in_scope`` (the gate's verdict; None when not read),
    ``scope_reason`` (``""`` in scope), ``threshold``, ``error`` (``""`` when ok) and, when a heatmap was asked for
    and the file scored, ``heatmap`` (the overlay's path; ``""`` when it could not be written). ``predict
    --dicom-out`` adds ``dicom_out`` (the DICOM result files written for the image).

    An out-of-scope image keeps its probability, for audit only: it is not a risk and is never ranked."""
    ctx = context_columns(result.context, pseudonym_key)
    row: dict[str, Any] = {"rank": None, "path": result.path, **{k: ctx[k] for k in CONTEXT_COLUMNS[:6]},
                           "probability": None, "decision": "", "positive": None, "in_scope": result.in_scope,
                           "scope_reason": result.scope_reason, "threshold": threshold, "error": result.error,
                           "study_uid": ctx["study_uid"], "sop_uid": ctx["sop_uid"]}
    if result.probability is not None:
        if result.in_scope is False:
            row.update(probability=result.probability, decision=OUT_OF_SCOPE, positive=False)
        else:
            positive = decide(result.probability, threshold)
            row.update(probability=result.probability, decision=decision_label(positive), positive=positive)
    if result.heatmap is not None:
        row["heatmap"] = result.heatmap
    return row


def rank(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Number the in-scope scored rows by risk, in place: each row with a ``probability`` (present and not None)
    whose ``in_scope`` is not False gets ``rank``, 1 for the highest probability, ties in input order. A row the
    scope gate refused (``in_scope`` False) gets ``rank`` None, whatever its probability; the other rows (files
    that could not be read) are left as they are.

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


def count_results(results: Sequence[FileResult]) -> dict[str, int]:
    """What a batch held: ``n_files``, ``n_in_scope`` (scored and in scope), ``n_out_of_scope`` (scored, refused by
    the scope gate) and ``n_unreadable`` (no probability)."""
    n_read = sum(r.probability is not None for r in results)
    n_out = sum(r.probability is not None and r.in_scope is False for r in results)
    return {"n_files": len(results), "n_in_scope": n_read - n_out, "n_out_of_scope": n_out,
            "n_unreadable": len(results) - n_read}


def batch_drift(predictor: Predictor, results: Sequence[FileResult]) -> tuple[DriftResult | None, str]:
    """The drift verdict on the in-scope images of a batch (:meth:`~pneumoscan.predict.Predictor.check_drift`),
    or why there is none: returns ``(result, "")`` or ``(None, reason)``, the reason in words for people (the
    model carries no reference of its training films; fewer than :data:`pneumoscan.drift.MIN_IMAGES` in-scope
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
                "differ from the training data; results may not hold; calibrate the model on this site's films "
                f"(pneumoscan calibrate){note}")
    return f"{head}: not shifted (statistic {result.statistic:.2f} <= threshold {result.threshold:.2f})"


def write_results(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], *,
                  info: dict[str, Any] | None = None) -> Path:
    """Write rows atomically as CSV or JSON, chosen by the suffix of ``path``.

    CSV: one row per image with :data:`RESULT_COLUMNS` (``heatmap`` and ``dicom_out`` only when a row has them;
    ``score`` and ``score_threshold`` on 0-100 with one decimal, ``decision_text`` in the one wording of
    :data:`pneumoscan.constants.DECISION_WORDS`; on every row the model's name and version from ``info``
    (``model``, ``model_version``), the time written (``created``, UTC) and the disclaimer;
    probability with 6 decimals, booleans as
    ``true``/``false``, empty cells for missing values; text that a spreadsheet would take for a formula,
    such as a file named ``=1+1.png``, starts with ``'``: :func:`pneumoscan.utils.csv_safe_text`). JSON: ``{"disclaimer", "created", **info,
    "results": [rows]}`` where ``info`` describes the model (name, version, threshold...) and the batch (e.g. its
    drift verdict).

    Raises:
        ValueError: the suffix is neither ``.csv`` nor ``.json``.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if suffix == ".csv":
        atomic_write_text(out, _csv_text(rows, info or {}, created))
    elif suffix == ".json":
        doc = {"disclaimer": DISCLAIMER, "created": created, **(info or {}), "results": list(rows)}
        atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    else:
        raise ValueError(f"{out}: results file must end in .csv or .json, not {out.suffix or 'nothing'!r}")
    return out


def _csv_text(rows: Sequence[dict[str, Any]], info: dict[str, Any], created: str) -> str:
    columns = [c for c in RESULT_COLUMNS if c not in _OPTIONAL_COLUMNS or any(c in r for r in rows)]
    every_row = {"model": info.get("model") or "", "model_version": info.get("model_version") or "",
                 "created": created, "disclaimer": DISCLAIMER}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        full = {**row, **_people_columns(row), **every_row}
        writer.writerow({c: _cell(c, full.get(c)) for c in columns})
    return buf.getvalue()


def _people_columns(row: dict[str, Any]) -> dict[str, Any]:
    """What people read: ``score`` (0-100, one decimal; empty when not assessed or not read: no risk),
    ``score_threshold`` (0-100) and ``decision_text`` (:func:`pneumoscan.metrics.decision_words`)."""
    scored = row.get("probability") is not None and row.get("in_scope") is not False
    threshold = row.get("threshold")
    return {"score": f"{score_100(row['probability']):.1f}" if scored else None,
            "score_threshold": None if threshold is None else f"{score_100(threshold):.1f}",
            "decision_text": decision_words(row.get("decision"))}


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if column in ("probability", "threshold") and isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, (list, tuple)):  # dicom_out: the files written for one image
        value = ";".join(map(str, value))
    if isinstance(value, str):  # paths, file names, errors: text a spreadsheet must not run as a formula
        return csv_safe_text(value)
    return str(value)  # numbers stay numbers
