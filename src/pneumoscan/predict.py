"""Predictor: a checkpoint (``.safetensors``) or an ONNX export in, pneumonia probabilities out.

Decision support, not a diagnosis: every result is a second reading for a clinician.

The model file carries everything needed to reproduce a prediction (model name, preprocessing, operating
threshold, calibration temperature), so nothing here asks for an image size or a threshold. Every image goes
through the same path as the training cache: :func:`pneumoscan.io.read_image` (exact decode) ->
:func:`pneumoscan.io.resize_square` -> :func:`pneumoscan.models.preprocess`. The probability is
``sigmoid(logit / temperature)``; an image is flagged PNEUMONIA when ``probability >= threshold``.

One :class:`Predictor` may serve many threads at once (a web server): the torch model runs in eval mode under
``inference_mode`` (forward passes share no mutable state), onnxruntime's ``InferenceSession.run`` is
thread-safe, and Grad-CAM (:mod:`pneumoscan.explain`) attaches its hooks per call, only to its own thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumoscan.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from pneumoscan.io import ImageError, read_image, resize_square
from pneumoscan.models import Preprocessing, create_model, preprocess

__all__ = [
    "CLASS_LABELS", "DISCLAIMER", "MODEL_ENV_VAR", "PACKAGED_MODEL", "HeatmapUnavailableError", "ModelNotFoundError",
    "Prediction", "Predictor", "RuntimeOptions", "default_model_path", "load_model", "model_from_checkpoint",
]

log = logging.getLogger(__name__)

#: Labels of a negative and a positive decision.
CLASS_LABELS = ("NORMAL", "PNEUMONIA")
#: One line shown with every printed result.
DISCLAIMER = "Decision support only, not a diagnosis: a clinician must review every image."
#: Environment variable naming the model used when none is given.
MODEL_ENV_VAR = "PNEUMOSCAN_MODEL"
#: Where the packaged default model lives (shipped by a later release; absent until then).
PACKAGED_MODEL = Path(__file__).resolve().parent / "assets" / "model.safetensors"

#: An image given as a file path, the file's bytes, or an already-decoded ``(H, W) uint8`` array.
ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray


class ModelNotFoundError(CheckpointError):
    """No model was given and no default model is installed."""


class HeatmapUnavailableError(RuntimeError):
    """Grad-CAM needs the torch model (a ``.safetensors`` checkpoint); an ONNX predictor cannot explain."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How inference runs. The defaults are the fastest measured (see ``benchmarks/inference.py``).

    Attributes:
        threads: torch: when given, ``torch.set_num_threads(threads)`` (process-wide, so only when asked);
            onnxruntime: intra-op threads of this session (None: one per CPU core; 0: onnxruntime's default).
        inter_op_threads: onnxruntime inter-op threads (None: onnxruntime's default).
        channels_last: run the torch model in channels-last memory format.
        inference_mode: torch ``inference_mode`` instead of ``no_grad``.
        decode_workers: threads decoding the images of one batch (Pillow and pydicom release the GIL).
        batch_size: images per forward pass in :meth:`Predictor.predict_proba`.
    """

    threads: int | None = None
    inter_op_threads: int | None = 1
    channels_last: bool = True
    inference_mode: bool = True
    decode_workers: int = 2
    batch_size: int = 32


@dataclass(frozen=True)
class Prediction:
    """One image's result: ``probability`` of pneumonia in [0, 1] and the decision at ``threshold``."""

    probability: float
    positive: bool
    threshold: float

    @property
    def label(self) -> str:
        """``"PNEUMONIA"`` or ``"NORMAL"``."""
        return CLASS_LABELS[int(self.positive)]


def default_model_path() -> Path:
    """Return the model to use when none is given: ``$PNEUMOSCAN_MODEL``, else the packaged model.

    Raises:
        ModelNotFoundError: the variable names a missing file, or no packaged model is installed.
    """
    env = os.environ.get(MODEL_ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"${MODEL_ENV_VAR} names {path}, which is not a file; fix it or pass --model")
        return path
    if PACKAGED_MODEL.is_file():
        return PACKAGED_MODEL
    raise ModelNotFoundError(
        f"no model given and no packaged default model is installed (expected {PACKAGED_MODEL}); pass --model "
        f"with a .safetensors checkpoint (e.g. runs/NAME/best.safetensors) or an .onnx export, or set ${MODEL_ENV_VAR}"
    )


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Build the checkpoint's network with its weights, in eval mode, on the CPU.

    Raises:
        CheckpointError: the weights do not fit the named model.
    """
    model = create_model(ckpt.model_name, pretrained=False)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.path}: weights do not fit model {ckpt.model_name!r} ({exc})") from exc
    return model.eval()


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Load a ``.safetensors`` checkpoint as an eval-mode torch module (input: :func:`preprocess` output)."""
    return model_from_checkpoint(load_checkpoint(path))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expit(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow for large |z|


class _TorchRunner:
    """Logits from the eager torch model; safe to call from several threads."""

    backend = "torch"

    def __init__(self, model: nn.Module, options: RuntimeOptions) -> None:
        if options.threads:
            torch.set_num_threads(options.threads)
        model.eval()
        for p in model.parameters():  # no .grad ever accumulates on shared weights (Grad-CAM differentiates
            p.requires_grad_(False)   # w.r.t. activations only)
        self.memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.grad_context: Callable[[], Any] = torch.inference_mode if options.inference_mode else torch.no_grad

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        with self.grad_context():
            out = self.model(x.contiguous(memory_format=self.memory_format))
        return out.float().reshape(len(x), -1)[:, 0].numpy().astype(np.float64)


class _OnnxRunner:
    """Logits from an onnxruntime session (``InferenceSession.run`` is thread-safe)."""

    backend = "onnxruntime"

    def __init__(self, session: Any) -> None:
        self.session = session

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        out = self.session.run(["logit"], {"image": x.numpy()})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(x), -1)[:, 0]


class Predictor:
    """Pneumonia probabilities and decisions for chest X-rays, from one model file.

    Build it with :meth:`from_checkpoint` (a ``.safetensors`` checkpoint or an ``.onnx`` export made by
    :func:`pneumoscan.export.export_onnx`) or :meth:`from_model`. Attributes: ``model_name``, ``threshold``,
    ``temperature``, ``preprocessing``, ``meta`` (the checkpoint's metadata), ``version`` (first 12 hex digits
    of the model file's SHA-256, identifying the exact weights; ``"in-memory"`` for :meth:`from_model`),
    ``backend`` (``"torch"`` or ``"onnxruntime"``) and ``path``.
    """

    def __init__(self, runner: Callable[[torch.Tensor], np.ndarray], meta: Mapping[str, Any], *,
                 model: nn.Module | None = None, path: str | None = None, version: str = "in-memory",
                 options: RuntimeOptions | None = None) -> None:
        ckpt = Checkpoint(state_dict={}, meta=dict(meta), path=path)
        self._runner = runner
        self._model = model
        self.options = options or RuntimeOptions()
        self.meta: dict[str, Any] = dict(meta)
        self.model_name = ckpt.model_name
        self.threshold = ckpt.threshold
        self.temperature = ckpt.temperature
        if not (0.0 <= self.threshold <= 1.0) or not self.temperature > 0:
            raise CheckpointError(f"{path}: invalid operating threshold {self.threshold} or temperature "
                                  f"{self.temperature} in the model's metadata")
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.path = path
        self.version = version
        self.backend: str = getattr(runner, "backend", "custom")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, options: RuntimeOptions | None = None) -> "Predictor":
        """Load a ``.safetensors`` checkpoint (torch) or an ``.onnx`` export (onnxruntime), judged by suffix.

        Raises:
            CheckpointError: missing, unreadable, or not a pneumoscan model file.
        """
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"{p}: model file not found")
        options = options or RuntimeOptions()
        if p.suffix.lower() == ".onnx":
            from pneumoscan.export import open_onnx_session

            session, meta = open_onnx_session(p, threads=options.threads, inter_op_threads=options.inter_op_threads)
            return cls(_OnnxRunner(session), meta, path=str(p), version=_file_sha256(p)[:12], options=options)
        ckpt = load_checkpoint(p)
        model = model_from_checkpoint(ckpt)
        return cls(_TorchRunner(model, options), ckpt.meta, model=model, path=str(p),
                   version=_file_sha256(p)[:12], options=options)

    @classmethod
    def from_model(cls, model: nn.Module, meta: Mapping[str, Any], *,
                   options: RuntimeOptions | None = None) -> "Predictor":
        """Wrap an in-memory torch model; ``meta`` as in a checkpoint (needs ``model`` and ``preprocessing``).

        The predictor takes the model over: it is put in eval mode and its parameters stop requiring grad.
        """
        options = options or RuntimeOptions()
        return cls(_TorchRunner(model, options), meta, model=model, options=options)

    # ------------------------------------------------------------------ inference

    def predict_proba(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Pneumonia probabilities, float64 ``(N,)`` in [0, 1], one per image, in input order.

        ``images``: one image or a sequence of them; each a file path, the file's bytes (JPEG, PNG, DICOM...),
        or a decoded ``(H, W) uint8`` array of any size (a ``(N, H, W) uint8`` array is N images).

        Raises:
            ImageError: an image cannot be decoded (use :meth:`predict_paths` to skip bad files instead).
        """
        items = _as_list(images)
        out = np.empty(len(items), dtype=np.float64)
        step = max(1, self.options.batch_size)
        for start in range(0, len(items), step):
            gray = self._decode_many(items[start:start + step], raise_errors=True, resize=True)
            out[start:start + len(gray)] = self._probabilities(self._input_batch(gray))
        return out

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[Prediction]:
        """Probability and decision at the stored operating threshold, one :class:`Prediction` per image."""
        return [self._decide(p) for p in self.predict_proba(images)]

    def explain(self, image: ImageInput) -> tuple[float, np.ndarray]:
        """Probability and Grad-CAM heatmap for one image.

        Returns:
            ``(probability, heatmap)``; ``heatmap`` is float32 ``(H, W)`` in [0, 1] at the decoded image's own
            size (all zeros where the model found no evidence for pneumonia).

        Raises:
            HeatmapUnavailableError: this predictor runs an ONNX export.
        """
        gray = self._decode_many([image], raise_errors=True)
        probs, maps = self._explain_batch(gray)
        return float(probs[0]), maps[0]

    def predict_paths(self, paths: Sequence[str | os.PathLike[str]], *, batch_size: int = 16, progress: bool = False,
                      heatmaps: str | os.PathLike[str] | None = None, save_raw: bool = False) -> list[dict[str, Any]]:
        """Triage a list of files: one row per file, ranked by risk (highest probability first).

        Unreadable files do not stop the batch: their row carries the error and no probability. Rows have
        ``rank`` (1 = highest probability; None for failures), ``path``, ``probability``, ``decision``
        (``"PNEUMONIA"``/``"NORMAL"``, ``""`` on failure), ``positive`` (bool or None), ``threshold``,
        ``error`` (``""`` when ok) and, with ``heatmaps``, ``heatmap`` (the overlay PNG written into that
        folder as ``<stem>_gradcam.png``; with ``save_raw`` also the raw map as ``<stem>_gradcam.npy``; stems
        from :func:`pneumoscan.explain.unique_stems`, so every name fits the file system). A heatmap that
        cannot be written fails only that row's heatmap: the row keeps its probability and rank, ``heatmap``
        is ``""`` and ``error`` says why. Returned in rank order, failures last in input order.
        """
        from tqdm import tqdm

        if heatmaps is not None:
            self._require_torch()
            from pneumoscan.explain import unique_stems
            from pneumoscan.utils import remove_stale_temps

            stems = unique_stems(paths)
            remove_stale_temps(heatmaps)  # overlays half-written by a killed run
        rows: list[dict[str, Any]] = []
        with tqdm(total=len(paths), unit="img", desc="predict", disable=None if progress else True) as bar:
            for start in range(0, len(paths), max(1, batch_size)):
                chunk = [str(p) for p in paths[start:start + max(1, batch_size)]]
                decoded = self._decode_many(chunk, raise_errors=False, resize=heatmaps is None)
                ok = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
                probs = np.empty(0)
                written: dict[int, tuple[str, str]] = {}  # row -> (heatmap file, why it was not written)
                if ok and heatmaps is None:
                    probs = self._probabilities(self._input_batch([decoded[i] for i in ok]))
                elif ok:
                    probs, maps = self._explain_batch([decoded[i] for i in ok])
                    for i, p, m in zip(ok, probs, maps):
                        written[i] = self._write_heatmap(heatmaps, stems[start + i], chunk[i], decoded[i], p, m,
                                                         save_raw)
                by_index = dict(zip(ok, probs))
                for i, path in enumerate(chunk):
                    rows.append(self._row(path, by_index.get(i), decoded[i]))
                    if heatmaps is not None and i in by_index:
                        # A heatmap that could not be written costs that row its heatmap, never its score.
                        rows[-1]["heatmap"], rows[-1]["error"] = written[i]
                bar.update(len(chunk))
        return _rank(rows)

    # ------------------------------------------------------------------ internals

    def _decide(self, probability: float) -> Prediction:
        p = float(probability)
        return Prediction(probability=p, positive=p >= self.threshold, threshold=self.threshold)

    def _row(self, path: str, probability: float | None, decoded: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"rank": None, "path": path, "probability": None, "decision": "", "positive": None,
                               "threshold": self.threshold, "error": ""}
        if probability is None:
            row["error"] = str(decoded)
        else:
            pred = self._decide(probability)
            row.update(probability=pred.probability, decision=pred.label, positive=pred.positive)
        return row

    def _decode_many(self, items: Sequence[ImageInput], *, raise_errors: bool, resize: bool = False) -> list[Any]:
        """Decode items (paths/bytes/arrays) to ``(H, W) uint8`` (with ``resize``: straight to the model's
        ``(S, S)``, in the worker, so that a batch never holds all its full-size films at once); with
        ``raise_errors=False`` a failure is its message string in place of the array."""
        size = self.preprocessing.image_size

        def one(item: ImageInput) -> Any:
            try:
                gray = _to_gray(item)
                return resize_square(gray, size) if resize and gray.shape != (size, size) else gray
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

        workers = min(self.options.decode_workers, len(items))
        if workers <= 1 or all(isinstance(i, np.ndarray) for i in items):
            return [one(i) for i in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pneumoscan-decode") as pool:
            return list(pool.map(one, items))

    def _input_batch(self, gray: Sequence[np.ndarray]) -> torch.Tensor:
        """Resize each image to the model's square and normalise: float32 ``(N, 1, S, S)``."""
        size = self.preprocessing.image_size
        batch = np.empty((len(gray), size, size), dtype=np.uint8)
        for i, g in enumerate(gray):
            batch[i] = g if g.shape == (size, size) else resize_square(g, size)
        return preprocess(batch, self.preprocessing)

    def _probabilities(self, x: torch.Tensor) -> np.ndarray:
        return _expit(self._runner(x) / self.temperature)

    def _require_torch(self) -> nn.Module:
        if self._model is None:
            raise HeatmapUnavailableError(
                f"{self.path}: Grad-CAM heatmaps need the .safetensors checkpoint (the torch model); an ONNX "
                "export holds no gradients to explain with. Pass the checkpoint the ONNX file was exported from")
        return self._model

    def _explain_batch(self, gray: Sequence[np.ndarray], chunk: int = 8) -> tuple[np.ndarray, list[np.ndarray]]:
        """Probabilities and per-image heatmaps at each image's own size (Grad-CAM runs ``chunk`` at a time,
        because it keeps activations for the backward pass)."""
        from pneumoscan.explain import GradCAM, upsample_cam

        cam = GradCAM(self._require_torch())
        probs, maps = [], []
        for start in range(0, len(gray), chunk):
            part = gray[start:start + chunk]
            logits, low = cam(self._input_batch(part))
            probs.append(_expit(logits.numpy().astype(np.float64) / self.temperature))
            maps += [upsample_cam(low[i], g.shape) for i, g in enumerate(part)]
        return np.concatenate(probs), maps

    def _write_heatmap(self, folder: str | os.PathLike[str], stem: str, path: str, gray: np.ndarray,
                       prob: float, heat: np.ndarray, save_raw: bool) -> tuple[str, str]:
        """Write one overlay; return ``(its path, "")``, or ``("", why)`` when it could not be written (a full
        disk, a name the file system refuses, a rendering failure): that image keeps its score."""
        from pneumoscan.explain import write_heatmap

        pred = self._decide(prob)
        caption = f"P(pneumonia) {pred.probability:.2f} - {pred.label} at threshold {pred.threshold:.2f}"
        try:
            return str(write_heatmap(folder, stem, gray, heat, caption=caption, save_raw=save_raw)), ""
        except OSError as exc:
            log.debug("heatmap for %s not written", path, exc_info=True)
            return "", f"scored, but its heatmap could not be written ({exc.strerror or exc})"
        except Exception as exc:  # noqa: BLE001 - one image's overlay must not stop the batch
            log.debug("heatmap for %s not written", path, exc_info=True)
            return "", f"scored, but its heatmap could not be made ({type(exc).__name__}: {exc})"


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
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


def _to_gray(item: ImageInput) -> np.ndarray:
    """Decode one input to ``(H, W) uint8``; arrays are checked, not converted."""
    if isinstance(item, np.ndarray):
        if item.ndim != 2 or item.dtype != np.uint8:
            raise ValueError(f"a decoded image must be a 2-D uint8 array (grayscale, 0..255), got {item.dtype} "
                             f"{item.shape}; decode files with pneumoscan.io.read_image")
        return item
    if isinstance(item, (bytearray, memoryview)):
        item = bytes(item)
    return read_image(item)


def _describe(item: ImageInput) -> str:
    """A short name for an input in log lines (a path, or the kind and size of in-memory data)."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, np.ndarray):
        return f"array {item.dtype} {item.shape}"
    return f"{type(item).__name__} of {len(item)} bytes"


def _rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank successful rows by probability (1 = highest; ties keep input order) and put failures last."""
    ok = sorted((r for r in rows if r["probability"] is not None), key=lambda r: -r["probability"])
    for rank, row in enumerate(ok, start=1):
        row["rank"] = rank
    return ok + [r for r in rows if r["probability"] is None]
