"""Finding the files to score: files and folders in, the files to score out, and what was skipped, and why.

* :func:`collect`: expand files and folders (every file named gets a row; a folder's hidden and system files and its
  files that are not images are skipped, and listed).
* :func:`looks_like_image`: by name or by content (so DICOM files without an extension are found).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pneumoscan.constants import IMAGE_SUFFIXES, JUNK_NAMES, OTHER_IMAGE_SUFFIXES
from pneumoscan.io import sniff_format

__all__ = ["HIDDEN", "OTHER", "SUBFOLDER", "UNLISTED", "Collected", "Skipped", "collect", "collect_images",
           "iter_folder", "looks_like_image", "skipped_summary"]

log = logging.getLogger("pneumoscan.worklist")

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
        return skipped_summary(Counter(s.kind for s in self.skipped))


def skipped_summary(counts: Counter[str] | dict[str, int]) -> str:
    """:meth:`Collected.summary` from the number of skipped entries of each kind (:data:`HIDDEN`, :data:`OTHER`,
    :data:`SUBFOLDER`, :data:`UNLISTED`): for a listing too long to keep every :class:`Skipped`."""
    counts = Counter(counts)
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
    for path, kind in iter_folder(folder, recursive, visited):
        if kind is None:
            found.append(path)
        else:
            skipped.append(Skipped(path, kind))


def iter_folder(folder: Path, recursive: bool, visited: set[Path] | None = None) -> Iterator[tuple[Path, str | None]]:
    """Walk ``folder`` as :func:`collect` does, one entry at a time (for listings too long to hold): yields
    ``(path, None)`` for a file to score and ``(path, kind)`` for an entry skipped (:data:`HIDDEN`, :data:`OTHER`,
    :data:`SUBFOLDER` without ``recursive``, :data:`UNLISTED`, after a warning). Entries come in name order, a
    sub-folder's where its name falls; ``visited`` (resolved folders) keeps a folder reached twice through links
    from being searched twice."""
    visited = {_key(folder)} if visited is None else visited
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:  # its files cannot be listed, so they cannot be counted either: say so
        log.warning("cannot list the folder %s: %s", folder, exc.strerror or exc)
        yield folder, UNLISTED
        return
    for entry in entries:
        p = Path(entry.path)
        name = entry.name
        if name.startswith(".") or name.lower() in JUNK_NAMES:
            yield p, HIDDEN
            continue
        try:
            is_dir = entry.is_dir()  # follows links
            is_file = entry.is_file()
        except OSError:
            is_dir = is_file = False
        if is_dir:
            if not recursive:
                yield p, SUBFOLDER
            elif (key := _key(p)) not in visited:  # a link back up the tree is searched once
                visited.add(key)
                yield from iter_folder(p, recursive, visited)
            continue
        if not is_file:
            if entry.is_symlink():  # broken link or a loop of links: its row says which
                yield p, None
            else:  # a FIFO, socket or device: reading it could block, and it is no image
                yield p, OTHER
            continue
        yield p, (None if looks_like_image(p) else OTHER)


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

