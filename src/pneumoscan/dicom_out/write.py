"""DICOM results on disk: one file atomically, never replacing another; one result's SR and SC; a batch of results.

Everything here reads :class:`~pneumoscan.result.Result` objects: nothing runs a model or decodes a film again."""

from __future__ import annotations

import io
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pneumoscan.dicom_out.sc import make_sc, sc_pixels
from pneumoscan.dicom_out.source import pseudonymise_dataset, read_source
from pneumoscan.dicom_out.sr import make_sr
from pneumoscan.errors import PneumoscanError
from pneumoscan.utils import remove_stale_temps

if TYPE_CHECKING:
    import pydicom

    from pneumoscan.result import Result

__all__ = ["DicomBatch", "is_dicom_file", "part10_bytes", "write_dataset", "write_dicom_batch", "write_dicom_results"]

log = logging.getLogger("pneumoscan.dicom_out")


def part10_bytes(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file's bytes (preamble, file meta with its transfer syntax, data set): what the
    DICOM node keeps in its outbox and C-STOREs from, so a retry sends the very same object, UIDs included."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


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
    data = part10_bytes(ds)
    tmp = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"  # utils.remove_stale_temps' pattern
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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


def write_dicom_results(source: str | os.PathLike[str] | bytes | pydicom.Dataset, result: Result, *,
                        out_dir: str | os.PathLike[str], with_sc: bool | None = None,
                        pseudonym_key: bytes | str | None = None, outline: bool = False) -> list[Path]:
    """Make the SR (:func:`make_sr`) and, with ``with_sc`` (default: when the result kept its film), the SC
    (:func:`make_sc`) of one result and write them with :func:`write_dataset`.

    ``source``: the scored DICOM file, its bytes, or its Dataset (only its header is read). With ``pseudonym_key``
    both carry keyed pseudonyms instead of the source's identifiers (:func:`pseudonymise_dataset`). ``outline``: the
    SC's heatmap also outlines the strongest region (:func:`pneumoscan.inference.render.render_overlay`).

    Returns:
        the written paths: ``[sr]`` or ``[sr, sc]``. Both are made before either is written.

    Raises:
        DicomOutputError: the source is not readable DICOM, lacks a needed UID, highdicom refused the content, or an
            SC was asked for a result that kept no film.
        OSError: the folder cannot be written.
    """
    header = read_source(source)
    if pseudonym_key is not None:
        header = pseudonymise_dataset(header, pseudonym_key)
    made = [make_sr(header, result)]
    if result.film is not None if with_sc is None else with_sc:
        made.append(make_sc(header, result, sc_pixels(result, outline=outline)))
    return [write_dataset(ds, out_dir) for ds in made]


@dataclass
class DicomBatch:
    """What :func:`write_dicom_batch` did: ``written`` (input path -> its DICOM files), ``not_dicom`` (inputs
    skipped: not DICOM), ``unread`` (DICOM inputs not scored: no result to write), ``failed`` (input path -> why)
    and ``outline`` (the setting: the SCs outline the strongest region of their heatmap)."""

    written: dict[str, list[Path]] = field(default_factory=dict)
    not_dicom: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    outline: bool = False

    def summary(self, out_dir: str | os.PathLike[str]) -> str:
        """One line for people: counts of SR and SC files written, inputs skipped and failed (with the first
        failure's reason)."""
        files = [p for paths in self.written.values() for p in paths]
        n_sc = sum(len(paths) - 1 for paths in self.written.values())
        parts = [f"DICOM results: {len(files) - n_sc} SR and {n_sc} SC file(s) written to {out_dir}"]
        if self.not_dicom:
            parts.append(f"{len(self.not_dicom)} non-DICOM input(s) skipped")
        if self.unread:
            parts.append(f"{len(self.unread)} unreadable DICOM input(s) skipped")
        if self.failed:
            path, why = next(iter(self.failed.items()))
            parts.append(f"{len(self.failed)} failed (e.g. {Path(path).name}: {why})")
        return "; ".join(parts)

    def add(self, result: Result, out_dir: str | os.PathLike[str], *, looks_dicom: bool,
            pseudonym_key: bytes | str | None = None) -> None:
        """One result of ``predict --dicom-out``: a scored DICOM input gets its SR and, when the result kept its
        film (it was explained), its SC (the heatmap overlay in scope; the film alone, captioned
        "Not assessed", out of scope). Inputs that are not DICOM are listed as skipped; an input whose output
        fails is listed with why (and logged), and the others go on."""
        if not result.read:
            (self.unread if looks_dicom else self.not_dicom).append(result.source)
            return
        if result.context.format != "DICOM":
            self.not_dicom.append(result.source)
            return
        try:
            self.written[result.source] = write_dicom_results(result.source, result, out_dir=out_dir,
                                                              pseudonym_key=pseudonym_key, outline=self.outline)
        except Exception as exc:  # one file's failure is that file's note, never the batch's
            why = str(exc) if isinstance(exc, PneumoscanError) else f"{type(exc).__name__}: {exc}"
            self.failed[result.source] = why
            log.warning("no DICOM result for %s: %s", result.source, why)
            log.debug("the failure in full", exc_info=True)


def write_dicom_batch(results: Sequence[Result], out_dir: str | os.PathLike[str], *,
                      pseudonym_key: bytes | str | None = None, outline: bool = False) -> DicomBatch:
    """``predict --dicom-out`` for results already made (:meth:`DicomBatch.add` each; a result that kept no film
    gets its SR alone)."""
    batch = DicomBatch(outline=outline)
    remove_stale_temps(out_dir)
    for r in results:
        batch.add(r, out_dir, looks_dicom=not r.read and is_dicom_file(r.source), pseudonym_key=pseudonym_key)
    return batch


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True when the file's first bytes are a DICOM Part 10 header (or, when it cannot be opened, its name ends in
    ``.dcm``/``.dicom``): the inputs ``predict --dicom-out`` makes DICOM results for, told apart before scoring."""
    from pneumoscan.io import sniff_format

    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(132)) == "DICOM"
    except OSError:
        return os.fspath(path).lower().endswith((".dcm", ".dicom"))
