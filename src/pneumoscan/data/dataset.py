"""Index a labelled X-ray data set, parse patient and cause, and split it by patient (seeded, or by a
validation set the user gives).

A data set is either a folder ``<root>[/<split>]/<NORMAL|PNEUMONIA>/*`` (images lie
directly in the class folder; sub-folders are not searched) or a CSV manifest
``path,label[,patient_id][,cause][,split]``. Label 0 is NORMAL, 1 is PNEUMONIA.
"""

from __future__ import annotations

import csv
import io as _stdio
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.constants import CLASS_NAMES, JUNK_NAMES
from pneumoscan.errors import DatasetError
from pneumoscan.io import DEFAULT_MAX_PIXELS, ImageError, ImageInfo, read_image_info
from pneumoscan.utils import atomic_write_text, csv_restore_text, csv_safe_text

__all__ = [
    "CLASS_NAMES", "DatasetError", "DatasetIndex", "Record", "index_dataset", "parse_name", "split_by_patient",
    "split_index", "split_overlap", "split_with_validation", "summarize", "write_manifest", "write_scores_csv",
]

log = logging.getLogger("pneumoscan.data")


_CAUSES = ("bacteria", "virus")
_PERSON_RE = re.compile(r"^(person\d+)_(bacteria|virus)(?:_\d+)*$", re.IGNORECASE)
_IM_RE = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)(?:-\d+)+$", re.IGNORECASE)
_CAUSE_RE = re.compile(r"(?:^|[^a-z])(bacteria|virus)(?:[^a-z]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Record:
    """One labelled image. ``path`` is absolute; ``label`` is 0 (NORMAL) or 1 (PNEUMONIA)."""

    path: str
    label: int
    patient_id: str
    cause: str | None  # "bacteria" | "virus" | None


@dataclass
class DatasetIndex:
    """The usable images of a data set, plus the files that were skipped and why.

    ``infos`` holds one :class:`ImageInfo` per record when the index was built with
    ``check=True``, and is empty otherwise.
    """

    records: list[Record]
    skipped: list[tuple[str, str]]
    root: str
    infos: list[ImageInfo] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        """Labels as an int64 array of shape (N,)."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def patient_ids(self) -> list[str]:
        """Patient id of each record, aligned with ``records``."""
        return [r.patient_id for r in self.records]

    @property
    def patients(self) -> list[str]:
        """Sorted unique patient ids."""
        return sorted(set(self.patient_ids))

    def subset(self, mask_or_indices: np.ndarray | Sequence[int]) -> DatasetIndex:
        """Return the records selected by a bool mask or by indices (``skipped`` is not carried over)."""
        sel = np.asarray(mask_or_indices)
        idx = np.flatnonzero(sel) if sel.dtype == bool else sel.astype(np.int64)
        infos = [self.infos[i] for i in idx] if self.infos else []
        return DatasetIndex([self.records[i] for i in idx], [], self.root, infos)


def parse_name(filename: str) -> tuple[str | None, str | None]:
    """Return ``(patient_id, cause)`` parsed from a file name; either is None when absent.

    ``person1000_virus_1681.jpeg`` -> ``("person1000", "virus")``; ``IM-0115-0001.jpeg`` ->
    ``("IM-0115", None)``; ``NORMAL2-IM-0851-0001-0002.jpeg`` -> ``("NORMAL2-IM-0851", None)``
    (NORMAL2 ids are a namespace separate from IM ids). An unparsable name gives ``(None, cause)``,
    where ``cause`` is found if the name contains ``bacteria`` or ``virus`` as a word.
    """
    stem = os.path.splitext(os.path.basename(filename))[0]
    if m := _PERSON_RE.match(stem):
        return m.group(1).lower(), m.group(2).lower()
    if m := _IM_RE.match(stem):
        return m.group(1).upper(), None
    cause = _CAUSE_RE.search(stem)
    return None, cause.group(1).lower() if cause else None


def _make_record(path: str, label: int, display: str, patient_id: str = "", cause: str = "") -> Record:
    """Build a record; missing patient/cause come from the name, else the file is its own patient."""
    parsed_pid, parsed_cause = parse_name(path)
    cause = cause.strip().lower()
    return Record(path, label, patient_id.strip() or parsed_pid or f"file:{display}",
                  cause if cause in _CAUSES else parsed_cause)


def _label_dirs(base: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for child in sorted(base.iterdir(), key=lambda p: p.name):
        if child.name.upper() in CLASS_NAMES and child.is_dir():
            label = CLASS_NAMES.index(child.name.upper())
            if label in found:
                raise DatasetError(f"{base}: two folders for class {CLASS_NAMES[label]}: "
                                   f"'{found[label].name}' and '{child.name}'; merge them")
            found[label] = child
    return found


def _subdirs(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_folder(source: Path, split: str | None) -> tuple[list[Record], list[tuple[str, str]], Path]:
    if not source.is_dir():
        raise DatasetError(f"{source}: no such folder or CSV file")
    base = source / split if split else source
    if not base.is_dir():
        raise DatasetError(f"{source}: no split folder '{split}' (found: {', '.join(_subdirs(source)) or 'nothing'})")
    dirs = _label_dirs(base)
    if not dirs:
        splits = [d for d in _subdirs(base) if _label_dirs(base / d)]
        if splits:
            raise DatasetError(f"{base} has no NORMAL/PNEUMONIA folders but has split folder(s) "
                               f"{', '.join(splits)}: choose one with split='{splits[0]}' (--split {splits[0]})")
        found = ", ".join(_subdirs(base)) or "nothing"
        raise DatasetError(f"{base} has no NORMAL/PNEUMONIA folders (found: {found}); "
                           "expected <root>[/<split>]/<NORMAL|PNEUMONIA>/<images>")
    if len(dirs) < len(CLASS_NAMES):
        log.warning("%s: only class folder(s) %s found", base, ", ".join(d.name for d in dirs.values()))
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    for label in sorted(dirs):
        n_sub = 0
        for p in sorted(dirs[label].iterdir(), key=lambda p: p.name):
            if p.name.startswith(".") or p.name.lower() in JUNK_NAMES:
                continue
            if p.is_dir():
                n_sub += 1
            elif not p.is_file():
                skipped.append((os.path.abspath(p), "not a regular file (broken link?)"))
            else:
                records.append(_make_record(os.path.abspath(p), label, p.relative_to(base).as_posix()))
        if n_sub:
            log.warning("%s: ignored %d sub-folder(s); images must lie directly in the class folder",
                        dirs[label], n_sub)
    return records, skipped, base


def _parse_label(text: str) -> int | None:
    t = text.strip().upper()
    if t in CLASS_NAMES:
        return CLASS_NAMES.index(t)
    return int(t) if t in ("0", "1") else None


def _read_manifest(csv_path: Path, split: str | None) -> tuple[list[Record], list[tuple[str, str]]]:
    folder = csv_path.parent
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            reader.fieldnames = [(f or "").strip().lower() for f in reader.fieldnames or []]
            missing = {"path", "label"} - set(reader.fieldnames)
            if missing:
                raise DatasetError(f"{csv_path}: manifest lacks column(s) {', '.join(sorted(missing))}; "
                                   "expected a header path,label[,patient_id][,split]")
            if split is not None and "split" not in reader.fieldnames:
                raise DatasetError(f"{csv_path}: split='{split}' asked for but the manifest has no 'split' column")
            for row in reader:
                line = reader.line_num
                get = lambda key: (row.get(key) or "").strip()  # noqa: E731 - short rows give None
                if split is not None and get("split").casefold() != split.casefold():
                    continue
                raw_path = get("path")
                if not raw_path:
                    skipped.append((f"{csv_path}:{line}", "missing path"))
                    continue
                full = os.path.abspath(os.path.join(folder, raw_path))
                label = _parse_label(get("label"))
                if label is None:
                    skipped.append((full, f"line {line}: bad label {get('label')!r} "
                                          "(expected NORMAL, PNEUMONIA, 0 or 1)"))
                elif not os.path.isfile(full):
                    skipped.append((full, f"line {line}: file not found"))
                elif full in seen:
                    skipped.append((full, f"line {line}: duplicate of line {seen[full]}"))
                else:
                    seen[full] = line
                    records.append(_make_record(full, label, raw_path, csv_restore_text(get("patient_id")),
                                                get("cause")))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{csv_path}: cannot parse manifest: {exc}") from exc
    return records, skipped


def index_dataset(source: str | os.PathLike[str], *, split: str | None = None, check: bool = True,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> DatasetIndex:
    """Index a data set folder or CSV manifest; see the module docstring for the layouts.

    With ``check=True`` each file's header is read (cheap): unreadable files are skipped,
    logged one per line, and their reasons kept in ``skipped``; ``infos`` gets one entry per record.
    Records are in a deterministic order (class, then file name; manifest order for CSVs).

    Raises:
        DatasetError: missing folder or split, no class folders, bad manifest header, or no usable image.
    """
    src = Path(source)
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise DatasetError(f"{src}: not a data set folder or a .csv manifest")
        records, skipped = _read_manifest(src, split)
        root = src
    else:
        records, skipped, root = _scan_folder(src, split)
    infos: list[ImageInfo] = []
    if check:
        kept: list[Record] = []
        for rec in records:
            try:
                infos.append(read_image_info(rec.path, max_pixels=max_pixels))
                kept.append(rec)
            except (ImageError, OSError) as exc:
                skipped.append((rec.path, getattr(exc, "reason", None) or str(exc)))
        records = kept
    for path, reason in skipped:
        log.warning("skipping %s: %s", path, reason)
    if skipped:
        log.warning("%s: %d file(s) skipped, %d kept", root, len(skipped), len(records))
    if not records:
        raise DatasetError(f"{root}: no usable images ({len(skipped)} file(s) skipped)")
    return DatasetIndex(records, skipped, str(root), infos)


def split_by_patient(patient_ids: Sequence[str], labels: Sequence[int], val_fraction: float = 0.1,
                     seed: int = 42) -> np.ndarray:
    """Return a bool mask (True: validation) that keeps each patient on one side, stratified by label.

    A pure function of (patient ids, labels, seed), independent of the order of the images.
    A patient's label is the max of its images' labels. For each label, the sorted patient ids
    are permuted by ``np.random.default_rng([seed, label])`` and ``round(val_fraction * n)``
    (half up; at least 1 when n >= 2 and the fraction > 0; at most n - 1) go to validation.
    """
    if len(patient_ids) != len(labels):
        raise ValueError(f"{len(patient_ids)} patient ids but {len(labels)} labels")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    patient_label: dict[str, int] = {}
    for pid, lab in zip(patient_ids, labels):
        patient_label[pid] = max(int(lab), patient_label.get(pid, int(lab)))
    val_patients: set[str] = set()
    for label in sorted(set(patient_label.values())):
        pats = sorted(p for p, lab in patient_label.items() if lab == label)
        n = len(pats)
        k = int(np.floor(val_fraction * n + 0.5))
        if val_fraction > 0 and n >= 2:
            k = max(k, 1)
        k = min(k, n - 1)  # training keeps at least one patient of each label
        order = np.random.default_rng([seed, label]).permutation(n)
        val_patients.update(pats[i] for i in order[:k])
    return np.array([pid in val_patients for pid in patient_ids], dtype=bool)


def split_index(index: DatasetIndex, val_fraction: float = 0.1, seed: int = 42) -> tuple[DatasetIndex, DatasetIndex]:
    """Split an index into (train, validation) by patient; see :func:`split_by_patient`."""
    mask = split_by_patient(index.patient_ids, index.labels.tolist(), val_fraction, seed)
    return index.subset(~mask), index.subset(mask)


def split_with_validation(index: DatasetIndex, val: DatasetIndex) -> tuple[DatasetIndex, DatasetIndex, list[str]]:
    """Split ``index`` into (train, validation) by a validation set the user gave (``train --val``): the images
    of ``val`` validate and every other image of ``index`` trains.

    An image listed on both sides (the same file: same resolved path) validates only. Returns ``(train,
    validation, moved)``, ``moved`` being the paths (as ``index`` gives them) so taken out of training; the
    validation index is ``val`` itself.

    Patients are compared by ``patient_id``; an id made up from a file name that gave none (``file:...``, one
    patient per file) names no one and is not compared.

    Raises:
        DatasetError: a patient has images on both sides (says how many, with examples), or one file is
            labelled differently on the two sides.
    """
    val_by_path = {os.path.realpath(r.path): r for r in val.records}
    keep: list[int] = []
    moved: list[str] = []
    relabelled: list[str] = []
    for i, rec in enumerate(index.records):
        other = val_by_path.get(os.path.realpath(rec.path))
        if other is None:
            keep.append(i)
            continue
        moved.append(rec.path)
        if other.label != rec.label:
            relabelled.append(f"{rec.path} ({CLASS_NAMES[rec.label]} in training, {CLASS_NAMES[other.label]} "
                              "in validation)")
    if relabelled:
        raise DatasetError(f"{len(relabelled)} image(s) are labelled differently in the training data ({index.root}) "
                           f"and in the validation set ({val.root}), e.g. {'; '.join(relabelled[:3])}: "
                           "correct the labels so that each image has one")
    train = index.subset(np.array(keep, dtype=np.int64))
    val_files: dict[str, str] = {}
    for rec in val.records:
        val_files.setdefault(rec.patient_id, rec.path)
    both: dict[str, str] = {}
    for rec in train.records:
        if rec.patient_id in val_files and not rec.patient_id.startswith("file:"):
            both.setdefault(rec.patient_id, rec.path)
    if both:
        examples = "; ".join(f"{pid} (training: {both[pid]}, validation: {val_files[pid]})"
                             for pid in sorted(both)[:5])
        raise DatasetError(
            f"{len(both)} patient(s) have images both in the training data ({index.root}) and in the validation set "
            f"({val.root}), e.g. {examples}. A patient's images must all be on one side, or validation measures "
            "memory of the patient rather than the model: put each of these patients' images on one side only")
    return train, val, moved


def write_manifest(path: str | os.PathLike[str], records: Sequence[Record], splits: Sequence[str] | str) -> None:
    """Write ``path,label,patient_id,cause,split`` atomically; ``index_dataset(path)`` reads it back.

    Paths under the manifest's folder are written relative to it, others absolute.
    ``splits`` is one split name per record, or one name for all.

    People open manifests in spreadsheets, so no cell may start like a formula (OWASP CSV injection), yet the
    file must read back exactly. A relative path that would (a file named ``=1+1.png``, ``-x.png``) is
    written ``./=1+1.png``, the same path to every reader; the patient id, free text from a user's manifest,
    goes through :func:`csv_safe_text`, which :func:`index_dataset` undoes. The label, cause and split are
    fixed words.
    """
    if isinstance(splits, str):
        splits = [splits] * len(records)
    if len(splits) != len(records):
        raise ValueError(f"{len(records)} records but {len(splits)} split names")
    folder = os.path.abspath(os.path.dirname(os.path.abspath(path)))
    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "patient_id", "cause", "split"])
    for rec, sp in zip(records, splits):
        p = os.path.abspath(rec.path)
        rel = os.path.relpath(p, folder)
        out = Path(p if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel).as_posix()
        if csv_safe_text(out) != out:  # only a relative path can start like a formula; "./" keeps it the same path
            out = f"./{out}"
        writer.writerow([out, CLASS_NAMES[rec.label], csv_safe_text(rec.patient_id), rec.cause or "", sp])
    atomic_write_text(path, buf.getvalue())


def _stats(values: Sequence[int]) -> dict[str, Any]:
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


def summarize(index: DatasetIndex) -> dict[str, Any]:
    """Return JSON-safe figures: images, causes and patients per class, imbalance, images per patient,
    image sizes, modes and formats (when the index was checked), and the skipped files with reasons.

    Ratios are None where a class has no images.
    """
    recs, infos = index.records, index.infos
    per_class = {name: sum(r.label == i for r in recs) for i, name in enumerate(CLASS_NAMES)}
    per_cause = {name: {c: sum(r.label == i and r.cause == c for r in recs) for c in _CAUSES}
                 for i, name in enumerate(CLASS_NAMES)}
    for name, causes in per_cause.items():
        causes["unknown"] = per_class[name] - sum(causes.values())
    per_patient = list(Counter(r.patient_id for r in recs).values())
    lo, hi, n_normal = min(per_class.values()), max(per_class.values()), per_class["NORMAL"]
    return {
        "root": index.root,
        "n_images": len(recs),
        "n_patients": len(per_patient),
        "images_per_class": per_class,
        "images_per_cause": per_cause,
        "patients_per_class": {name: len({r.patient_id for r in recs if r.label == i})
                               for i, name in enumerate(CLASS_NAMES)},
        "imbalance_ratio": hi / lo if lo else None,
        "pneumonia_to_normal": per_class["PNEUMONIA"] / n_normal if n_normal else None,
        "images_per_patient": {**(_stats(per_patient) if per_patient else {"min": 0, "median": 0.0, "max": 0}),
                               "mean": float(np.mean(per_patient)) if per_patient else 0.0,
                               "histogram": {str(k): v for k, v in sorted(Counter(per_patient).items())}},
        "image_size": {"width": _stats([i.width for i in infos]), "height": _stats([i.height for i in infos])}
        if infos else None,
        "modes": dict(Counter(str(i.mode) for i in infos).most_common()),
        "formats": dict(Counter(str(i.format) for i in infos).most_common()),
        "n_skipped": len(index.skipped),
        "skipped": [{"path": p, "reason": r} for p, r in index.skipped],
    }


def write_scores_csv(path: str | os.PathLike[str], records: Sequence[Record], scores: np.ndarray) -> None:
    """Write ``path,label,patient_id,cause,score`` (score: pneumonia probability) atomically.

    For people and spreadsheets, not read back: text cells go through :func:`csv_safe_text`."""
    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "patient_id", "cause", "score"])
    for rec, s in zip(records, scores):
        writer.writerow([csv_safe_text(rec.path), CLASS_NAMES[rec.label], csv_safe_text(rec.patient_id),
                         rec.cause or "", f"{float(s):.6f}"])
    atomic_write_text(path, buf.getvalue())


def split_overlap(ckpt_path: str | None, records: Sequence[Record]) -> dict[str, int]:
    """How many evaluated images were in the checkpoint's training or validation split (from its run's split.csv)."""
    if not ckpt_path:
        return {}
    split_csv = Path(ckpt_path).parent / "split.csv"
    if not split_csv.is_file():
        return {}
    side: dict[str, str] = {}
    with open(split_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            side[os.path.normpath(os.path.join(split_csv.parent, row.get("path", "")))] = row.get("split", "")
    sides = [side.get(os.path.normpath(r.path), "") for r in records]
    return {"train": sides.count("train"), "val": sides.count("val"), "n_images": len(records)}


def model_split(data: str | os.PathLike[str], data_cfg: dict[str, Any], *,
                split: str | None = None) -> tuple[DatasetIndex, DatasetIndex]:
    """A trained model's (train, validation) split rebuilt over ``data`` from its stored ``config["data"]``: the
    user's validation set when ``val`` names one (``train --val``), else the seeded patient-level split."""
    index = index_dataset(data, split=split if split is not None else (data_cfg.get("split") or None), check=False)
    if data_cfg.get("val"):
        given = index_dataset(data_cfg["val"], split=data_cfg.get("val_split") or None, check=False)
        train, val, _ = split_with_validation(index, given)
        return train, val
    return split_index(index, float(data_cfg.get("val_fraction", 0.1)), int(data_cfg.get("split_seed", 42)))
