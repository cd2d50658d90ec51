"""Worklist rows to a file: CSV (one row per image, the columns people read and the machine columns) or JSON; and
Parquet, for the archive engine's shards (:mod:`pneumoscan.scale`; pyarrow comes with the ``ray`` extra and is
imported only there)."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumoscan.constants import DISCLAIMER
from pneumoscan.metrics import decision_words, score_100
from pneumoscan.utils import atomic_path, atomic_write_text, csv_safe_text
from pneumoscan.worklist.rows import OPTIONAL_COLUMNS, RESULT_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["arrow_schema", "csv_text", "write_parquet", "write_results"]

#: Worklist columns that hold numbers (float64 in Arrow; None is null) and booleans; every other column is text
#: (``rank`` an integer, ``dicom_out`` a list of paths).
NUMBER_COLUMNS = ("score", "score_threshold", "probability", "threshold", "cause_score", "cause_probability",
                  "cause_threshold")
BOOL_COLUMNS = ("positive", "in_scope")


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
        atomic_write_text(out, csv_text(rows, info or {}, created))
    elif suffix == ".json":
        doc = {"disclaimer": DISCLAIMER, "created": created, **(info or {}), "results": list(rows)}
        atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    else:
        raise ValueError(f"{out}: results file must end in .csv or .json, not {out.suffix or 'nothing'!r}")
    return out


def csv_text(rows: Sequence[dict[str, Any]], info: dict[str, Any], created: str | None = None, *,
             columns: Sequence[str] = RESULT_COLUMNS, stamp: str = "created") -> str:
    """The CSV of :func:`write_results` as text (also what the server sends as ``GET /api/v1/worklist.csv``):
    ``columns`` in order, an optional column only when some row has it; on every row the model's name and version
    from ``info`` unless the row names them, the time written (in the column ``stamp``) and the disclaimer."""
    created = created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    names = [c for c in columns if c not in OPTIONAL_COLUMNS or any(c in r for r in rows)]
    every_row = {stamp: created, "disclaimer": DISCLAIMER}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        full = {"model_name": info.get("model") or "", "model_version": info.get("model_version") or "", **row,
                **_people_columns(row), **every_row}
        writer.writerow({c: _cell(c, full.get(c)) for c in names})
    return buf.getvalue()


def _people_columns(row: dict[str, Any]) -> dict[str, Any]:
    """What people read, for rows that do not carry it already (``score`` 0-100, one decimal, empty when not
    assessed or not read: no risk; ``score_threshold``; ``decision_text`` in the one wording)."""
    out: dict[str, Any] = {}
    if "score" not in row:
        scored = row.get("probability") is not None and row.get("in_scope") is not False
        out["score"] = score_100(row["probability"]) if scored else None
    if "score_threshold" not in row:
        threshold = row.get("threshold")
        out["score_threshold"] = None if threshold is None else score_100(threshold)
    if "decision_text" not in row:
        out["decision_text"] = decision_words(row.get("decision"))
    return out


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if column in ("probability", "threshold", "cause_probability", "cause_threshold") and isinstance(value, float):
        return f"{value:.6f}"
    if column in ("score", "score_threshold", "cause_score") and isinstance(value, (int, float)):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):  # dicom_out: the files written for one image
        value = ";".join(map(str, value))
    if isinstance(value, str):  # paths, file names, errors: text a spreadsheet must not run as a formula
        return csv_safe_text(value)
    return str(value)  # numbers stay numbers


def arrow_schema(columns: Sequence[str] = RESULT_COLUMNS, extra: Sequence[pa.Field] = ()) -> pa.Schema:
    """The Arrow schema of worklist rows (:func:`pneumoscan.worklist.rows.worklist_row`) with ``columns``, in order,
    then the fields ``extra``: probabilities, thresholds and scores (0-100) float64, ``positive`` and ``in_scope``
    bool, ``rank`` int64, ``dicom_out`` a list of strings, every other column a string; all nullable (None: not
    read, not assessed, no cause)."""
    import pyarrow as pa

    def arrow_type(name: str) -> pa.DataType:
        if name in NUMBER_COLUMNS:
            return pa.float64()
        if name in BOOL_COLUMNS:
            return pa.bool_()
        if name == "rank":
            return pa.int64()
        if name == "dicom_out":
            return pa.list_(pa.string())
        return pa.string()

    return pa.schema([pa.field(c, arrow_type(c)) for c in columns] + list(extra))


def write_parquet(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` to ``path`` as one Parquet file (zstd), atomically and readable by its owner only
    (:func:`pneumoscan.utils.atomic_path`): a reader sees the whole file or none, so a file's final name is the
    proof that it is complete."""
    import pyarrow.parquet as pq

    out = Path(path)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return out
