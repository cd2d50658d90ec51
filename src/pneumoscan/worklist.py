"""Find the images to score, and write a triage worklist (CSV or JSON) from :meth:`Predictor.predict_paths` rows.

A worklist lists every input file, highest pneumonia probability first (``rank`` 1), with files that could not
be read at the end, each with its error. It is decision support, not a diagnosis.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pneumoscan.io import sniff_format
from pneumoscan.predict import DISCLAIMER
from pneumoscan.utils import atomic_write_text

__all__ = ["IMAGE_SUFFIXES", "RESULT_COLUMNS", "collect_images", "write_results"]

log = logging.getLogger(__name__)

#: File name endings always taken from a folder (a damaged one is then reported, not silently skipped).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"})
#: Columns of the CSV worklist, in order (``heatmap`` only when heatmaps were made).
RESULT_COLUMNS = ("rank", "path", "probability", "decision", "positive", "threshold", "error", "heatmap")
_JUNK = frozenset({"thumbs.db", "desktop.ini"})


def collect_images(inputs: Iterable[str | os.PathLike[str]], *, recursive: bool = False) -> list[Path]:
    """Expand files and folders into the list of files to score.

    Files named on the command line are always kept (a missing or non-image one gets its error in the
    results). From a folder (and its sub-folders with ``recursive``), a file is taken when its name ends in
    an image suffix (:data:`IMAGE_SUFFIXES`) or when its content is an image format (for example DICOM files
    without an extension, as PACS exports often are); hidden files and other files are skipped. Folder
    contents are sorted by path; duplicates (same resolved path) are kept once.
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for raw in inputs:
        path = Path(raw)
        if not path.is_dir():
            add(path)
            continue
        found = path.rglob("*") if recursive else path.iterdir()
        for p in sorted(found):
            rel = p.relative_to(path).parts
            if any(part.startswith(".") for part in rel) or p.name.lower() in _JUNK or not p.is_file():
                continue
            if p.suffix.lower() in IMAGE_SUFFIXES or _looks_like_image(p):
                add(p)
            else:
                log.debug("skipping %s: not an image file", p)
    return out


def _looks_like_image(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(132)) is not None
    except OSError:
        return False


def write_results(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], *,
                  info: dict[str, Any] | None = None) -> Path:
    """Write rows atomically as CSV or JSON, chosen by the suffix of ``path``.

    CSV: one row per image with :data:`RESULT_COLUMNS` (probability with 6 decimals, booleans as
    ``true``/``false``, empty cells for missing values). JSON: ``{"disclaimer", "created", **info,
    "results": [rows]}`` where ``info`` describes the model (name, version, threshold...).

    Raises:
        ValueError: the suffix is neither ``.csv`` nor ``.json``.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix == ".csv":
        atomic_write_text(out, _csv_text(rows))
    elif suffix == ".json":
        doc = {"disclaimer": DISCLAIMER, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               **(info or {}), "results": list(rows)}
        atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    else:
        raise ValueError(f"{out}: results file must end in .csv or .json, not {out.suffix or 'nothing'!r}")
    return out


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    columns = [c for c in RESULT_COLUMNS if c != "heatmap" or any("heatmap" in r for r in rows)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(c, row.get(c)) for c in columns})
    return buf.getvalue()


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if column in ("probability", "threshold") and isinstance(value, float):
        return f"{value:.6f}"
    return str(value)
