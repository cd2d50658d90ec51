"""DICOM results on disk: one file atomically, never replacing another; one image's SR and SC; a batch."""

from __future__ import annotations

import io
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.dicom_out.sc import caption_for, make_sc, sc_pixels
from pneumoscan.dicom_out.source import pseudonymise_dataset, read_source
from pneumoscan.dicom_out.sr import make_sr
from pneumoscan.errors import PneumoscanError
from pneumoscan.utils import remove_stale_temps

if TYPE_CHECKING:
    import pydicom

    from pneumoscan.predict import FileResult, Predictor

__all__ = ["DicomBatch", "write_dataset", "write_dicom_batch", "write_dicom_results"]

log = logging.getLogger("pneumoscan.dicom_out")


def write_dataset(ds: pydicom.Dataset, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``ds`` as ``out_dir/<SOPInstanceUID>.dcm`` (DICOM Part 10): atomically (a temporary file, linked into
    place), readable by the owner only, never replacing a file. Returns the path.

    Raises:
        FileExistsError: a file of that name exists (it is left as it was).
        OSError: the folder cannot be written.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / f"{ds.SOPInstanceUID}.dcm"
    if target.exists():
        raise FileExistsError(f"{target} exists; DICOM results never replace a file")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    tmp = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"  # utils.remove_stale_temps' pattern
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target)  # fails if the target exists: no file is ever replaced
        except FileExistsError:
            raise FileExistsError(f"{target} exists; DICOM results never replace a file") from None
        except OSError:  # a file system without hard links: check, then rename (a tiny race, not a lost file)
            if target.exists():
                raise FileExistsError(f"{target} exists; DICOM results never replace a file") from None
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_dicom_results(source_path_or_bytes: str | os.PathLike[str] | bytes | pydicom.Dataset, *,
                        probability: float, decision: str, threshold: float, in_scope: bool, scope_reason: str,
                        model_name: str, model_version: str, out_dir: str | os.PathLike[str],
                        overlay_rgb: np.ndarray | None = None,
                        pseudonym_key: bytes | str | None = None) -> list[Path]:
    """Make the SR (:func:`make_sr`) and, with ``overlay_rgb``, the SC (:func:`make_sc`, captioned by
    :func:`caption_for`) of one source image and write them with :func:`write_dataset`.

    ``source_path_or_bytes``: the scored DICOM file, its bytes, or its Dataset. With ``pseudonym_key`` both carry
    keyed pseudonyms instead of the source's identifiers (:func:`pseudonymise_dataset`).

    Returns:
        the written paths: ``[sr]`` or ``[sr, sc]``. Both are made before either is written.

    Raises:
        DicomOutputError: the source is not readable DICOM, lacks a needed UID, or highdicom refused the content.
        ValueError: an invalid result (see :func:`make_sr`) or overlay.
        OSError: the folder cannot be written.
    """
    source = read_source(source_path_or_bytes)
    if pseudonym_key is not None:
        source = pseudonymise_dataset(source, pseudonym_key)
    result: dict[str, Any] = {"probability": probability, "decision": decision, "threshold": threshold,
                              "in_scope": in_scope, "scope_reason": scope_reason}
    made = [make_sr(source, **result, model_name=model_name, model_version=model_version)]
    if overlay_rgb is not None:
        made.append(make_sc(source, overlay_rgb, caption=caption_for(**result)))
    return [write_dataset(ds, out_dir) for ds in made]




@dataclass
class DicomBatch:
    """What :func:`write_dicom_batch` did: ``written`` (input path -> its DICOM files), ``not_dicom`` (inputs
    skipped: not DICOM), ``unread`` (DICOM inputs not scored: no result to write), ``failed`` (input path -> why)
    and ``no_sc`` (why no Secondary Captures were made, e.g. an ONNX model; ``""`` when they were)."""

    written: dict[str, list[Path]] = field(default_factory=dict)
    not_dicom: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    no_sc: str = ""

    def summary(self, out_dir: str | os.PathLike[str]) -> str:
        """One line for people: counts of SR and SC files written, inputs skipped and failed (with the first
        failure's reason)."""
        files = [p for paths in self.written.values() for p in paths]
        n_sc = sum(len(paths) - 1 for paths in self.written.values())
        parts = [f"DICOM results: {len(files) - n_sc} SR and {n_sc} SC file(s) written to {out_dir}"]
        if self.no_sc:
            parts.append(f"no SC: {self.no_sc}")
        if self.not_dicom:
            parts.append(f"{len(self.not_dicom)} non-DICOM input(s) skipped")
        if self.unread:
            parts.append(f"{len(self.unread)} unreadable DICOM input(s) skipped")
        if self.failed:
            path, why = next(iter(self.failed.items()))
            parts.append(f"{len(self.failed)} failed (e.g. {Path(path).name}: {why})")
        return "; ".join(parts)


def _looks_dicom(path: str) -> bool:
    from pneumoscan.io import sniff_format

    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(132)) == "DICOM"
    except OSError:
        return path.lower().endswith((".dcm", ".dicom"))


def write_dicom_batch(predictor: Predictor, results: Sequence[FileResult], out_dir: str | os.PathLike[str], *,
                      pseudonym_key: bytes | str | None = None) -> DicomBatch:
    """``predict --dicom-out``: for every scored DICOM input among ``results``, its SR and, when the predictor can
    make a heatmap (the torch backend), its SC (the Grad-CAM overlay in scope; the film alone, captioned NOT
    ASSESSED, out of scope). Inputs that are not DICOM are listed as skipped; a file whose output fails is listed
    with why (and logged), and the others go on."""
    from pneumoscan.errors import ImageError
    from pneumoscan.io import read_image_with_context
    from pneumoscan.scoring import decide, decision_label

    batch = DicomBatch()
    can_sc = bool(getattr(predictor, "can_explain", predictor.backend == "torch"))
    if not can_sc:
        batch.no_sc = "Grad-CAM needs the .safetensors checkpoint; this model was loaded from an ONNX export alone"
    remove_stale_temps(out_dir)
    for r in results:
        if r.probability is None:
            (batch.unread if _looks_dicom(r.path) else batch.not_dicom).append(r.path)
            continue
        if r.context is None or r.context.format != "DICOM":
            batch.not_dicom.append(r.path)
            continue
        in_scope = r.in_scope is not False
        decision = decision_label(decide(r.probability, predictor.threshold)) if in_scope else "OUT_OF_SCOPE"
        try:
            overlay = None
            if can_sc:
                gray, context = read_image_with_context(r.path)
                heat = predictor.assess(gray, context, heatmap=True)[1] if in_scope else None
                overlay = sc_pixels(gray, heat)
            batch.written[r.path] = write_dicom_results(
                r.path, probability=r.probability, decision=decision, threshold=predictor.threshold,
                in_scope=in_scope, scope_reason=r.scope_reason, model_name=predictor.model_name,
                model_version=predictor.version, out_dir=out_dir, overlay_rgb=overlay, pseudonym_key=pseudonym_key)
        except Exception as exc:  # one file's failure is that file's note, never the batch's
            why = str(exc) if isinstance(exc, (PneumoscanError, ImageError)) else f"{type(exc).__name__}: {exc}"
            batch.failed[r.path] = why
            log.warning("no DICOM result for %s: %s", r.path, why)
            log.debug("the failure in full", exc_info=True)
    return batch
