"""What bulk scoring (:meth:`pneumoscan.inference.predictor.Predictor.iter_results`) does around the model: decode the
inputs in batches, overlapped with the model (a bounded pipeline on the predictor's decoding pool), and write each
film's heatmap overlay.

Decoding failures of any kind are that input's error: :func:`decode_item` turns them into a message, and the
other inputs keep their results. Every input becomes a :class:`~pneumoscan.preprocessing.Film` through
:func:`pneumoscan.preprocessing.read_film`, the one path from a file to the model's square.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor

import numpy as np
from PIL import Image

from pneumoscan.errors import ImageError
from pneumoscan.inference.pipeline import batched, ordered_map
from pneumoscan.preprocessing import Film, Preprocessing, read_film
from pneumoscan.result import Result

__all__ = ["HEATMAP_BATCH", "KEPT_FILM_SIDE", "Decoded", "ImageInput", "as_list", "decode_item", "decoded_batches",
           "describe", "display_copy", "prepare_heatmaps", "write_heatmap_for"]

log = logging.getLogger(__name__)

#: The most full-size films a batch holds at once when films are explained (each
#: film is decoded at its own size).
HEATMAP_BATCH = 16
#: Longest side of the film a :class:`~pneumoscan.result.Result` keeps (``keep_film``): what a Secondary Capture and
#: an overlay PNG show (:data:`pneumoscan.inference.render.MAX_OVERLAY_SIDE`).
KEPT_FILM_SIDE = 1024

#: An image given as a file path, the file's bytes, or an already-decoded ``(H, W) uint8`` array.
ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray
#: One decoded input: its :class:`~pneumoscan.preprocessing.Film`, or the message saying why it could not be read.
Decoded = Film | str


def as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One image or a sequence of them (a ``(N, H, W)`` array is N images) as a list of inputs."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            return [images]
        if images.ndim == 3 and images.shape[-1] in (3, 4):
            raise ValueError(f"array of shape {images.shape} looks like a colour image (H, W, C); pass grayscale "
                             "(H, W) uint8, e.g. from pneumoscan.io.read_image, or a batch (N, H, W)")
        if images.ndim == 3:
            return list(images)
        raise ValueError(f"an image array must be (H, W) or a batch (N, H, W), got shape {images.shape}")
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(f"images must be paths, bytes or uint8 arrays, got {type(images).__name__}")


def describe(item: ImageInput) -> str:
    """How a result names an input: a path as given; for in-memory data, its kind and size."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, np.ndarray):
        return f"<array {item.dtype} {'x'.join(map(str, item.shape))}>"
    return f"<{type(item).__name__} of {len(item)} bytes>"


def decode_item(item: ImageInput, spec: Preprocessing, *, full: bool = False, raise_errors: bool,
                name: str | None = None) -> Decoded:
    """:func:`~pneumoscan.preprocessing.read_film` of one input (with ``full`` the film at its own size too); with
    ``raise_errors=False`` any failure becomes its message. ``name``: the file's name for a file given as its bytes
    (the archive engine reads each file once, to hash it too), so that its messages are the path's."""
    try:
        return read_film(item, spec, full=full, name=name)
    except ImageError as exc:
        if raise_errors:
            raise
        return exc.reason
    except MemoryError:
        if raise_errors:
            raise
        return "not enough memory to decode this image"
    except Exception as exc:  # noqa: BLE001 - any failure is this item's, never the batch's
        if raise_errors:
            raise
        log.debug("decoding %s failed", describe(item), exc_info=True)
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        return f"the image could not be read ({type(exc).__name__}: {detail})"


def _decode_job(job: tuple[ImageInput, Preprocessing, bool]) -> Decoded:
    """:func:`decode_item` of one ``(item, spec, full)``, never raising: a module-level function, so that a process
    pool can run it as well as a thread pool."""
    item, spec, full = job
    return decode_item(item, spec, full=full, raise_errors=False)


def decoded_batches(items: Sequence[ImageInput], spec: Preprocessing, step: int, *, full: Callable[[int], bool],
                    pool: Callable[[], Executor] | None, workers: int) -> Iterator[tuple[int, list[Decoded]]]:
    """``(index of the first item, decoded batch)`` in input order, ``step`` at a time; ``full(i)``: whether item
    ``i`` is decoded at its own size too. With a ``pool`` (the predictor's decoding threads; a process pool works
    too: the work sent is picklable) decoding runs ahead of the consumer: up to two batches of squares, or, when any
    film is kept at full size, as many films as there are decoding threads, so memory stays bounded however many
    files come."""
    if pool is None or workers < 1:
        for start in range(0, len(items), step):
            yield start, [_decode_job((items[i], spec, full(i))) for i in range(start, min(len(items), start + step))]
        return
    window = max(1, workers) if any(full(i) for i in range(len(items))) else 2 * step
    jobs = ((items[i], spec, full(i)) for i in range(len(items)))
    stream = ordered_map(pool(), _decode_job, jobs, window=window)
    try:
        for n, batch in enumerate(batched(stream, step)):
            yield n * step, batch
    finally:
        stream.close()


def display_copy(gray: np.ndarray, side: int = KEPT_FILM_SIDE) -> np.ndarray:
    """``gray`` scaled down to at most ``side`` on its long side (Lanczos, aspect kept); itself when it fits."""
    h, w = gray.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale >= 1.0:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS))


def prepare_heatmaps(paths: Sequence[str | os.PathLike[str]], folder: str | os.PathLike[str] | None) -> list[str]:
    """The heatmap file stems of ``paths`` (``[]`` without a folder), after clearing overlays half-written by a
    killed run."""
    if folder is None:
        return []
    from pneumoscan.inference.render import unique_stems
    from pneumoscan.utils import remove_stale_temps

    stems = unique_stems(paths)
    remove_stale_temps(folder)
    return stems


def write_heatmap_for(folder: str | os.PathLike[str], stem: str, result: Result, gray: np.ndarray, *,
                      save_raw: bool, outline: bool = False) -> Result:
    """Write one film's overlay (its :meth:`~pneumoscan.result.Result.caption`; the map only where the film was
    assessed: on a film out of scope a map of "evidence" would read as a finding) and return the result with
    ``heatmap_path``; a file that cannot be written (a full disk, a name the file system refuses) costs that film
    its heatmap (``heatmap_path`` ``""``, ``note`` says why), never its score."""
    from pneumoscan.inference.render import write_heatmap

    film = display_copy(gray)
    heat = result.heatmap(film.shape)
    raw = result.heatmap(gray.shape) if save_raw and result.explanation is not None else None
    try:
        path = write_heatmap(folder, stem, film, heat if heat is not None else np.zeros((1, 1), np.float32),
                             caption=result.caption(), raw=raw if save_raw else None, save_raw=save_raw,
                             original_size=gray.shape, outline=outline)
        return result.replace(heatmap_path=str(path))
    except OSError as exc:
        log.debug("heatmap for %s not written", result.source, exc_info=True)
        why = f"scored, but its heatmap could not be written ({exc.strerror or exc})"
    except Exception as exc:  # noqa: BLE001 - one image's overlay must not stop the batch
        log.debug("heatmap for %s not written", result.source, exc_info=True)
        why = f"scored, but its heatmap could not be made ({type(exc).__name__}: {exc})"
    return result.replace(heatmap_path="", note=f"{result.note}; {why}" if result.note else why)
