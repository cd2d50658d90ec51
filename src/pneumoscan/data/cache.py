"""The decoded-image cache: every image decoded and resized once, kept as a memory-mapped ``uint8`` array.

Training and evaluation read their batches from it; it is keyed by the inputs, the preprocessing spec's pixel
fields and the code that decodes and resizes (:func:`pneumoscan.preprocessing.pipeline_fingerprint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from pneumoscan.data.dataset import Record
from pneumoscan.errors import DatasetError, ImageError
from pneumoscan.io import DEFAULT_MAX_PIXELS
from pneumoscan.preprocessing import (
    DECODE_MARGIN,
    Preprocessing,
    decode_side,
    pipeline_fingerprint,
    read_film,
)
from pneumoscan.utils import atomic_write_text, remove_stale_temps

__all__ = ["MAX_FAILURES_LOGGED", "ImageCache", "build_cache", "fits_on_device", "images_on_device", "prune_cache"]

log = logging.getLogger("pneumoscan.data")


@dataclass(eq=False)
class ImageCache:
    """Decoded images, ``images[i]`` of shape (size, size), uint8 0..255, aligned with ``records``.

    ``images`` is a read-only memory map; ``failures`` lists ``(path, reason)`` of files left out.
    """

    images: np.ndarray
    records: list[Record]
    failures: list[tuple[str, str]]
    size: int
    key: str
    path: Path

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        """Labels as an int64 array of shape (N,)."""
        return np.array([r.label for r in self.records], dtype=np.int64)


def _fingerprint(records: Sequence[Record], spec: Any, max_pixels: int) -> dict[str, Any]:
    inputs = []
    for rec in records:
        try:
            st = os.stat(rec.path)
            inputs.append([rec.path, st.st_size, st.st_mtime_ns])
        except OSError:
            inputs.append([rec.path, -1, -1])
    pixels = {"image_size": spec.image_size, "resize": spec.resize, "interpolation": spec.interpolation,
              "decode_margin": decode_side(spec) // spec.image_size}
    return {"pipeline": pipeline_fingerprint(), "pixels": pixels, "max_pixels": max_pixels, "inputs": inputs}


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path``, so that only one process builds in a cache folder at a time."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock; run one builder at a time
        yield
        return
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load_cache(npy: Path, meta_path: Path, records: list[Record], size: int, key: str) -> ImageCache | None:
    """Return the cache if its sidecar matches ``key`` and the array has the expected shape, else None."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("size") != size:
            return None
        images = np.load(npy, mmap_mode="r")
        if images.shape != (len(records), size, size) or images.dtype != np.uint8:
            log.warning("cache %s has shape %s, expected %s: rebuilding",
                        npy, images.shape, (len(records), size, size))
            return None
        failed = {int(f["index"]): str(f["reason"]) for f in meta["failures"]}
        if meta["n_images"] != len(records) - len(failed):
            return None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cache %s is unreadable (%s): rebuilding", npy, exc)
        return None
    good = [r for i, r in enumerate(records) if i not in failed]
    failures = [(records[i].path, reason) for i, reason in sorted(failed.items())]
    try:
        os.utime(meta_path)  # last use, for prune_cache
    except OSError:
        pass  # a read-only cache folder still works
    return ImageCache(images[: len(good)], good, failures, size, key, npy)


def prune_cache(cache_dir: str | os.PathLike[str], *, older_than_days: float = 30.0, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Delete the caches in ``cache_dir`` last used (built or reused) more than ``older_than_days`` ago.

    Every input list and image size gets its own cache file, so a folder that sees many data sets
    grows without bound; this is how to shrink it. Leftover ``.partial`` files of interrupted builds
    older than the cut-off go too. Nothing else in the folder is touched.

    Returns ``(path, bytes)`` of each file deleted (or that would be, with ``dry_run``).
    """
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    folder = Path(cache_dir)
    if not folder.is_dir():
        return []
    cutoff = time.time() - older_than_days * 86400.0
    removed: list[tuple[Path, int]] = []
    with _lock(folder / ".build.lock"):  # never delete a cache another process is building
        for meta_path in sorted(folder.glob("*.json")):
            npy = meta_path.with_suffix(".npy")
            if not npy.exists() or meta_path.stat().st_mtime >= cutoff:
                continue
            for f in (npy, meta_path):  # the array first: a sidecar alone is never taken for a valid cache
                removed.append((f, f.stat().st_size))
                if not dry_run:
                    f.unlink()
        for partial in sorted(folder.glob("*.partial")):
            if partial.stat().st_mtime < cutoff:
                removed.append((partial, partial.stat().st_size))
                if not dry_run:
                    partial.unlink()
    return removed


def _decode_ordered(fn: Callable[[str], Any], paths: list[str], workers: int, chunk: int = 64) -> Iterator[Any]:
    """Yield ``fn(path)`` in input order from ``workers`` threads, at most ``chunk`` results in flight."""
    if workers <= 1:
        yield from map(fn, paths)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pneumoscan-cache") as pool:
        for lo in range(0, len(paths), chunk):
            yield from pool.map(fn, paths[lo:lo + chunk])


#: At most this many undecodable files are named in the log; the cache's sidecar JSON lists them all.
MAX_FAILURES_LOGGED = 20


def _log_failures(cache: ImageCache, n_records: int) -> None:
    """Name each file the cache left out, with its reason (WARNING), whether the cache was just built or reused."""
    shown = cache.failures[:MAX_FAILURES_LOGGED]
    for path, reason in shown:
        log.warning("cannot cache %s: %s", path, reason)
    if len(cache.failures) > len(shown):
        log.warning("... and %d more file(s) that could not be decoded (all listed in %s)",
                    len(cache.failures) - len(shown), cache.path.with_suffix(".json"))
    log.warning("cache %s: %d of %d image(s) could not be decoded and were left out",
                cache.path, len(cache.failures), n_records)


class _PixelSpec(NamedTuple):
    """The pixel fields of a :class:`Preprocessing` at the defaults, for a cache asked for by size alone (any size,
    also below a model's 64-pixel minimum)."""

    image_size: int
    resize: str = "squash"
    interpolation: str = "bilinear"
    decode_margin: int = DECODE_MARGIN


def build_cache(records: Sequence[Record], spec: Preprocessing | int, cache_dir: str | os.PathLike[str], *,
                max_pixels: int = DEFAULT_MAX_PIXELS, num_workers: int = 2, progress: bool = True,
                log_failures: bool = True) -> ImageCache:
    """Decode each image once, to the square the predictor scores (:func:`pneumoscan.preprocessing.read_film`, the one
    path from a file to the model's square: a large JPEG at reduced scale), into ``<cache_dir>/<key>.npy``, or reuse
    it.

    ``spec`` is the model's :class:`Preprocessing` (an ``int`` means the default spec at that size); only its
    pixel fields (size, resize mode, interpolation, decode margin) matter here: the normalisation happens per batch. The key
    is the sha256 of the inputs' paths, file sizes and mtimes, those pixel fields, ``max_pixels`` and
    :func:`~pneumoscan.preprocessing.pipeline_fingerprint` (the code that decodes and resizes), so a changed
    file, list, spec or decoder gives a new cache, with nothing to bump by hand. Its files are owner-only (0600), and
    so is ``cache_dir`` (0700) when this call creates it: they hold patients' images. The array is written as
    ``<key>.npy.partial`` and renamed, then the sidecar ``<key>.json`` is written atomically, last:
    a crash never leaves a cache that looks valid. Undecodable files are left out, and named in the log
    (WARNING, up to :data:`MAX_FAILURES_LOGGED`; with ``log_failures``) when the cache is built *and* when it
    is reused, so a run that reuses a cache still says which files it lacks and why.
    The ``.npy`` has one row per input record; rows past ``len(cache)`` are unused (zeros).

    Raises:
        DatasetError: ``records`` is empty.
    """
    records = list(records)
    if not records:
        raise DatasetError("no images to cache")
    if not isinstance(spec, Preprocessing):
        if int(spec) < 1:
            raise ValueError(f"size must be positive, got {spec}")
        spec = _PixelSpec(int(spec))
    folder = Path(cache_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # owner only when we make it; a user's folder is theirs
    fp = _fingerprint(records, spec, max_pixels)
    key = hashlib.sha256(json.dumps(fp, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    npy, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    with _lock(folder / ".build.lock"):
        remove_stale_temps(folder)  # sidecars half-written by a killed build
        cache = _load_cache(npy, meta_path, records, spec.image_size, key)
        if cache is not None:
            log.info("reusing cache %s (%d images)", npy, len(cache))
        else:
            _build(records, spec, folder, key, fp, max_pixels=max_pixels, num_workers=num_workers, progress=progress)
            cache = _load_cache(npy, meta_path, records, spec.image_size, key)
    if cache is None:  # pragma: no cover - only if the files vanish between write and read
        raise OSError(f"cache {npy} disappeared right after it was built")
    if cache.failures and log_failures:
        _log_failures(cache, len(records))
    return cache


def _build(records: list[Record], spec: Any, folder: Path, key: str, fp: dict[str, Any], *, max_pixels: int,
           num_workers: int, progress: bool) -> None:
    """Decode every record into ``<key>.npy`` (via ``.partial``), then write the sidecar; the caller holds the lock."""
    size = spec.image_size
    npy, meta_path, partial = folder / f"{key}.npy", folder / f"{key}.json", folder / f"{key}.npy.partial"
    meta_path.unlink(missing_ok=True)  # from here on, nothing may look valid until the build ends
    for stale in folder.glob("*.npy.partial"):  # left by a killed build; we hold the folder's lock
        with contextlib.suppress(OSError):
            stale.unlink()

    def decode(path: str) -> np.ndarray | ImageError | OSError:
        try:  # the one path from a file to the model's square: the predictor scores exactly this
            return read_film(path, spec, max_pixels=max_pixels).square
        except (ImageError, OSError) as exc:
            return exc

    log.info("building cache %s: %d images at %dx%d", npy, len(records), size, size)
    failures: list[dict[str, Any]] = []
    # Owner-only before a single pixel lands in it (the .npy is this file renamed; the .json is atomic_path's).
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.chmod(partial, 0o600)
    images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(records), size, size))
    try:
        row = 0
        paths = [r.path for r in records]
        with tqdm(total=len(paths), desc=f"caching {size}x{size}", unit="img", disable=None if progress else True) as bar:
            for i, result in enumerate(_decode_ordered(decode, paths, num_workers)):
                if isinstance(result, np.ndarray):
                    images[row] = result  # rows are compacted: failures leave no gap
                    row += 1
                else:
                    reason = getattr(result, "reason", None) or str(result)
                    failures.append({"index": i, "path": paths[i], "reason": reason})
                bar.update(1)
        images.flush()
        del images
        os.replace(partial, npy)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    meta = {"pipeline": fp["pipeline"], "pixels": fp["pixels"], "key": key, "size": size, "n_records": len(records),
            "n_images": row, "failures": failures, "max_pixels": max_pixels, "inputs": fp["inputs"]}
    atomic_write_text(meta_path, json.dumps(meta) + "\n")


def fits_on_device(nbytes: int, free_bytes: int, max_fraction: float) -> bool:
    """Whether a cache of ``nbytes`` may live on a device with ``free_bytes`` free: at most ``max_fraction`` of it,
    so that the model, its activations and the optimiser keep the rest."""
    return max_fraction > 0 and 0 < nbytes <= max_fraction * free_bytes


def images_on_device(images: np.ndarray, device: Any, *, max_fraction: float = 0.25,
                     chunk_rows: int = 1024) -> Any:
    """The cache's images (uint8 ``(N, S, S)``) as one uint8 tensor on the CUDA ``device``, copied in chunks of
    ``chunk_rows`` (the memory map is never read whole into host memory), when they fit
    (:func:`fits_on_device` with the device's free memory now).

    Returns None, and the caller reads batches from the host memory map, when ``device`` is not CUDA (host memory
    is where the map already is), ``max_fraction`` is 0, the cache does not fit, or the copy runs out of memory.
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda" or max_fraction <= 0 or len(images) == 0:
        return None
    free, _total = torch.cuda.mem_get_info(device)
    mib = images.nbytes / 2**20
    if not fits_on_device(images.nbytes, free, max_fraction):
        log.info("decoded cache (%.0f MiB) stays in host memory: more than %.0f%% of the %.0f MiB free on %s",
                 mib, 100 * max_fraction, free / 2**20, device)
        return None
    try:
        out = torch.empty(images.shape, dtype=torch.uint8, device=device)
        for lo in range(0, len(images), chunk_rows):
            out[lo : lo + chunk_rows].copy_(torch.from_numpy(np.ascontiguousarray(images[lo : lo + chunk_rows])))
    except torch.OutOfMemoryError:
        log.warning("decoded cache (%.0f MiB) did not fit on %s after all: batches come from host memory", mib, device)
        torch.cuda.empty_cache()
        return None
    log.info("decoded cache on %s: %d images, %.0f MiB of %.0f MiB free", device, len(images), mib, free / 2**20)
    return out
