"""Scoring files in bulk for :meth:`pneumoscan.predict.Predictor.score_files`: decoding overlapped with the model
(a bounded pipeline on the predictor's decoding pool), the scope gate, heatmaps, one :class:`FileResult` per file.

Decoding failures of any kind are that file's error: :func:`decode_item` turns them into a message, and the
other files keep their results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pneumoscan.errors import ImageError
from pneumoscan.io import ImageContext, read_image_with_context
from pneumoscan.pipeline import batched, ordered_map
from pneumoscan.preprocessing import Preprocessing, decode_side, resize_for_model
from pneumoscan.reference import intensity_descriptors
from pneumoscan.scope import ScopeResult

__all__ = ["HEATMAP_BATCH", "Decoded", "FileResult", "ImageInput", "as_list", "decode_item", "score_files"]

log = logging.getLogger("pneumoscan.predict")

#: The most full-size films a heatmap batch holds at once (Grad-CAM overlays need each film at its own size).
HEATMAP_BATCH = 16

#: An image given as a file path, the file's bytes, or an already-decoded ``(H, W) uint8`` array.
ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray
#: One decoded input: ``(gray or model square, context)``, or the message saying why it could not be read.
Decoded = tuple[np.ndarray, ImageContext] | str


@dataclass(frozen=True)
class FileResult:
    """One file's outcome in :meth:`Predictor.score_files`.

    Attributes:
        path: the file as given.
        probability: of pneumonia in [0, 1] (calibrated); None when the file could not be read.
        error: ``""`` when all went well; else why the file could not be read or, with a probability, why its
            heatmap could not be written.
        heatmap: the overlay PNG written for it; ``""`` when it could not be written; None when no heatmap was
            asked for or the file was not scored.
    """

    path: str
    probability: float | None
    error: str = ""
    heatmap: str | None = None
    #: The scope gate's verdict (None when the file could not be read) and its reason ("" when in scope).
    in_scope: bool | None = None
    scope_reason: str = ""
    #: The image's DICOM context (empty fields for other formats); None when the file could not be read.
    context: ImageContext | None = None
    #: Pooled features and intensity descriptors, for the drift check (not part of any output file).
    features: np.ndarray | None = field(default=None, repr=False, compare=False)
    descriptor: np.ndarray | None = field(default=None, repr=False, compare=False)




def score_files(pred: Any, paths: Sequence[str | os.PathLike[str]], *, batch_size: int = 64, progress: bool = False,
                heatmaps: str | os.PathLike[str] | None = None, save_raw: bool = False) -> list[FileResult]:
    """:meth:`pneumoscan.predict.Predictor.score_files` (see there) for the predictor ``pred``."""
    from tqdm import tqdm

    stems = _prepare_heatmaps(pred, paths, heatmaps)
    items = [str(p) for p in paths]
    step = max(1, batch_size if heatmaps is None else min(batch_size, HEATMAP_BATCH))
    results: list[FileResult] = []
    with tqdm(total=len(items), unit="img", desc="predict", disable=None if progress else True) as bar:
        for start, decoded in _decoded_batches(pred, items, step, resize=heatmaps is None):
            chunk = items[start:start + len(decoded)]
            results += _score_chunk(pred, chunk, decoded, stems[start:start + len(decoded)], heatmaps, save_raw)
            bar.update(len(chunk))
    return results


def _decoded_batches(pred: Any, items: list[str], step: int, *, resize: bool) -> Iterator[tuple[int, list[Decoded]]]:
    """``(index of the first item, decoded batch)`` in order. With ``pred.options.overlap`` the decoding pool runs
    ahead of the model: up to two batches of model squares, or (``resize`` False: full-size films for Grad-CAM)
    as many films as there are decoding threads, so memory stays bounded."""
    spec = pred.preprocessing if resize else None
    if not pred.options.overlap or pred.options.decode_workers < 1:
        for start in range(0, len(items), step):
            yield start, pred._decode_many(items[start:start + step], raise_errors=False, resize=resize)
        return
    window = 2 * step if resize else max(1, pred.options.decode_workers)
    stream = ordered_map(pred._decode_pool(), lambda item: decode_item(item, spec, raise_errors=False), items,
                         window=window)
    try:
        for n, batch in enumerate(batched(stream, step)):
            yield n * step, batch
    finally:
        stream.close()


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


def decode_item(item: ImageInput, spec: Preprocessing | None, *, raise_errors: bool) -> Decoded:
    """Decode one input to ``((H, W) uint8, context)`` (with ``spec``: straight to the model's ``(S, S)`` square,
    so that full-size films never pile up, from a JPEG decoded at reduced scale as the training cache decodes it:
    :func:`~pneumoscan.preprocessing.decode_side`); with ``raise_errors=False`` any failure becomes its message."""
    try:
        gray, ctx = _decode(item, None if spec is None else decode_side(spec))
        return (resize_for_model(gray, spec) if spec is not None else gray), ctx
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
        log.debug("decoding %s failed", _describe(item), exc_info=True)
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        return f"the image could not be read ({type(exc).__name__}: {detail})"


def _prepare_heatmaps(pred: Any, paths: Sequence[str | os.PathLike[str]],
                      folder: str | os.PathLike[str] | None) -> list[str]:
    """The heatmap file stems of ``paths`` (``[]`` without a folder), after checking that Grad-CAM can run
    (loading the torch model) and clearing overlays half-written by a killed run."""
    if folder is None:
        return []
    pred._require_torch()
    from pneumoscan.explain import unique_stems
    from pneumoscan.utils import remove_stale_temps

    stems = unique_stems(paths)
    remove_stale_temps(folder)
    return stems


def _score_chunk(pred: Any, chunk: list[str], decoded: list[Decoded], stems: list[str],
                 heatmaps: str | os.PathLike[str] | None, save_raw: bool) -> list[FileResult]:
    """One batch of :func:`score_files`, already decoded: score (and explain), gate, in input order."""
    ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    scored: dict[int, FileResult] = {}
    if not ok:
        return [FileResult(path, None, error=str(d)) for path, d in zip(chunk, decoded)]
    images = [decoded[i][0] for i in ok]
    if heatmaps is None:
        squares = images
        probs, feats = pred._forward(images)
        maps: list[Any] = [None] * len(ok)
    else:
        squares = [pred.model_square(chunk[i], g, decoded[i][1]) for i, g in zip(ok, images)]
        probs, maps, feats = pred._explain_batch(squares, [g.shape for g in images])
    descriptors = intensity_descriptors(np.stack(squares))
    for n, i in enumerate(ok):
        ctx = decoded[i][1]
        scope = pred.gate.assess(ctx, squares[n], feats[n])
        heatmap, why = None, ""
        if heatmaps is not None:  # a heatmap that could not be written costs that file its heatmap, never its score
            heatmap, why = _write_heatmap(pred, heatmaps, stems[i], chunk[i], images[n], probs[n], maps[n],
                                          save_raw, scope)
        scored[i] = FileResult(chunk[i], float(probs[n]), error=why, heatmap=heatmap, in_scope=scope.in_scope,
                               scope_reason=scope.reason, context=ctx, features=feats[n],
                               descriptor=descriptors[n])
    return [scored[i] if i in scored else FileResult(path, None, error=str(decoded[i]))
            for i, path in enumerate(chunk)]


def _write_heatmap(pred: Any, folder: str | os.PathLike[str], stem: str, path: str, gray: np.ndarray,
               prob: float, heat: np.ndarray, save_raw: bool, scope: ScopeResult | None = None) -> tuple[str, str]:
    """Write one overlay; return ``(its path, "")``, or ``("", why)`` when it could not be written (a full
    disk, a name the file system refuses, a rendering failure): that image keeps its score."""
    from pneumoscan.explain import write_heatmap

    pred = pred._decide(prob, scope)
    caption = (f"P(pneumonia) {pred.probability:.2f} - {pred.label} at threshold {pred.threshold:.2f}"
               if pred.in_scope else f"NOT ASSESSED: {pred.scope_reason}")
    try:
        return str(write_heatmap(folder, stem, gray, heat, caption=caption, save_raw=save_raw)), ""
    except OSError as exc:
        log.debug("heatmap for %s not written", path, exc_info=True)
        return "", f"scored, but its heatmap could not be written ({exc.strerror or exc})"
    except Exception as exc:  # noqa: BLE001 - one image's overlay must not stop the batch
        log.debug("heatmap for %s not written", path, exc_info=True)
        return "", f"scored, but its heatmap could not be made ({type(exc).__name__}: {exc})"


def _decode(item: ImageInput, reduce_to: int | None = None) -> tuple[np.ndarray, ImageContext]:
    """Decode one input to ``((H, W) uint8, context)``; arrays are checked, not converted (empty context).
    ``reduce_to``: as :func:`pneumoscan.io.read_image` takes it (a large JPEG decoded at reduced scale)."""
    if isinstance(item, np.ndarray):
        if item.ndim != 2 or item.dtype != np.uint8:
            raise ValueError(f"a decoded image must be a 2-D uint8 array (grayscale, 0..255), got {item.dtype} "
                             f"{item.shape}; decode files with pneumoscan.io.read_image")
        return item, ImageContext()
    if isinstance(item, (bytearray, memoryview)):
        item = bytes(item)
    return read_image_with_context(item, reduce_to=reduce_to)


def _describe(item: ImageInput) -> str:
    """A short name for an input in log lines (a path, or the kind and size of in-memory data)."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, np.ndarray):
        return f"array {item.dtype} {item.shape}"
    return f"{type(item).__name__} of {len(item)} bytes"

