"""The archive's file list, streamed: folders, globs and manifests in, absolute paths out, one block at a time.

Nothing here holds the whole list. A folder is walked as ``predict`` walks it
(:func:`pneumoscan.worklist.collect.iter_folder`: hidden and system files and files that are not images are
skipped, and counted); a glob (``'archive/**/*.dcm'``, quoted so that the shell leaves it alone) is expanded lazily
and its matches filtered by the same rules; a manifest (:func:`read_manifest`) is read line by line, and every path
it names gets a row, like a file named on the command line. Paths are made absolute (the workers of a cluster read
them, and a run is resumed by path), and a path listed twice is scored once.

:func:`pending_blocks` cuts the listing into small Arrow tables (the blocks Ray Data hands to the scorers), leaving
out, when a run is resumed, the files its shards hold already (:class:`~pneumoscan.scale.shards.DoneIndex`).
"""

from __future__ import annotations

import glob
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pneumoscan.constants import JUNK_NAMES
from pneumoscan.errors import UsageError
from pneumoscan.scale.shards import DoneIndex, path_key
from pneumoscan.worklist.collect import HIDDEN, OTHER, iter_folder, looks_like_image

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Listing", "has_glob", "iter_paths", "pending_blocks", "read_manifest"]

log = logging.getLogger("pneumoscan.scale")

#: A name that is not valid UTF-8 cannot be stored in the results (Arrow text is UTF-8); such files are skipped,
#: counted and warned about.
UNENCODABLE = "name that is not UTF-8"
#: Threads that ``stat`` the files a resumed run has scored already (to prove them unchanged): on network storage a
#: ``stat`` waits on the server, so several are in flight at once.
STAT_THREADS = 16


def has_glob(text: str) -> bool:
    """Whether ``text`` holds a glob's wildcards (``*``, ``?``, ``[``)."""
    return any(c in text for c in "*?[")


def read_manifest(manifest: str | os.PathLike[str]) -> Iterator[str]:
    """The paths a manifest names, as absolute paths, one line at a time: a text file (UTF-8), one path per line;
    blank lines and lines starting with ``#`` are skipped; a relative path is relative to the manifest's folder.

    Raises:
        UsageError: the manifest cannot be opened (before any path is yielded).
    """
    where = Path(manifest)
    try:
        fh = open(where, encoding="utf-8", errors="surrogateescape", newline=None)
    except OSError as exc:
        raise UsageError(f"cannot read the manifest {where}: {exc.strerror or exc}", "--manifest") from exc
    base = os.path.dirname(os.path.abspath(where))
    with fh:
        for line in fh:
            text = line.rstrip("\n").rstrip("\r")
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            yield os.path.normpath(os.path.join(base, text))


@dataclass
class Listing:
    """What the listing found so far: ``skipped`` entries by kind (those of
    :func:`pneumoscan.worklist.collect.skipped_summary`, and :data:`UNENCODABLE`), ``n_listed`` files (each once),
    ``n_repeated`` paths listed again (scored once), ``n_done`` files a resumed run had scored already and left
    out."""

    skipped: Counter[str] = field(default_factory=Counter)
    n_listed: int = 0
    n_repeated: int = 0
    n_done: int = 0


def iter_paths(inputs: Sequence[str | os.PathLike[str]], manifests: Sequence[str | os.PathLike[str]], *,
               recursive: bool, listing: Listing) -> Iterator[str]:
    """Every file to score, as an absolute path, in order: the ``inputs`` (files, folders, globs) as given, then the
    ``manifests``' paths. Skipped entries are counted in ``listing.skipped``; nothing is held but one folder's
    entries while it is walked."""
    for raw in inputs:
        text = os.fspath(raw)
        if os.path.isdir(text):
            yield from _folder(text, recursive, listing)
        elif has_glob(text) and not os.path.lexists(text):
            yield from _glob(text, recursive, listing)
        else:  # a file named: it always gets a row (missing, broken or not an image: its error says so)
            yield os.path.abspath(text)
    for manifest in manifests:
        yield from read_manifest(manifest)


def _folder(folder: str, recursive: bool, listing: Listing) -> Iterator[str]:
    for path, kind in iter_folder(Path(os.path.abspath(folder)), recursive):
        if kind is None:
            yield str(path)
        else:
            listing.skipped[kind] += 1


def _glob(pattern: str, recursive: bool, listing: Listing) -> Iterator[str]:
    """A glob's files (a match that is a folder is walked like a folder named), filtered as a folder's are."""
    for match in glob.iglob(os.path.abspath(pattern), recursive=True):
        name = os.path.basename(match)
        if os.path.isdir(match):
            if "**" not in pattern:  # with ** the glob itself reaches the files below
                yield from _folder(match, recursive, listing)
        elif name.startswith(".") or name.lower() in JUNK_NAMES:
            listing.skipped[HIDDEN] += 1
        elif looks_like_image(match):
            yield match
        else:
            listing.skipped[OTHER] += 1


def pending_blocks(paths: Iterable[str], listing: Listing, *, block_rows: int, done: DoneIndex | None = None,
                   rehash: bool = False) -> Iterator[pa.Table]:
    """The files still to score, as Arrow tables of at most ``block_rows`` rows: ``path`` (absolute),
    ``listing_index`` (its place in the listing, counted before anything is left out, so that it is the same on every
    run of the same inputs: the worklist breaks ties in this order) and ``expected_sha256`` (null, or with ``rehash``
    the content hash a resumed run recorded for it).

    A resumed run (``done``: the files its complete shards hold) leaves out each file whose size and modification
    time (ns) are those recorded when it was read and hashed: unchanged, so its content hash and result stand. With
    ``rehash`` the file is not left out here: the scorer reads it again, hashes it, and drops it when the hash is
    the recorded one (no decoding, no model), for storage whose times cannot be trusted. A file that changed is
    scored again; its new row supersedes the old one.
    """
    import numpy as np
    import pyarrow as pa

    seen: set[bytes] = set()
    index = -1
    chunk: list[tuple[str, bytes, int]] = []

    def flush() -> Iterator[pa.Table]:
        keys = [k for _, k, _ in chunk]
        expected: list[str | None] = [None] * len(chunk)
        keep = np.ones(len(chunk), dtype=bool)
        if done is not None and len(done):
            found, where = done.lookup(keys)
            hits = np.flatnonzero(found)
            if rehash:
                for i in hits:
                    expected[i] = done.sha256_at(where[i])
            elif len(hits):
                with ThreadPoolExecutor(max_workers=STAT_THREADS) as pool:
                    stats = list(pool.map(_stat, (chunk[i][0] for i in hits)))
                for i, st in zip(hits, stats):
                    if st is not None and done.unchanged(where[i], st[0], st[1]):
                        keep[i] = False
            listing.n_done += int((~keep).sum())
        rows = [i for i in range(len(chunk)) if keep[i]]
        if rows:
            yield pa.table({"path": pa.array([chunk[i][0] for i in rows], pa.string()),
                            "listing_index": pa.array([chunk[i][2] for i in rows], pa.int64()),
                            "expected_sha256": pa.array([expected[i] for i in rows], pa.string())})
        chunk.clear()

    for path in paths:
        index += 1
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            log.warning("skipped a file whose name is not UTF-8 (listing entry %d); rename it to score it", index)
            listing.skipped[UNENCODABLE] += 1
            continue
        key = path_key(path)
        if key in seen:
            listing.n_repeated += 1
            continue
        seen.add(key)
        listing.n_listed += 1
        chunk.append((path, key, index))
        if len(chunk) >= block_rows:
            yield from flush()
    if chunk:
        yield from flush()


def _stat(path: str) -> tuple[int, int] | None:
    """``(size in bytes, modification time in ns)`` of ``path``, or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
