"""Predictor: a checkpoint (``.safetensors``) or an ONNX export in, pneumonia probabilities out.

Decision support, not a diagnosis: every result is a second reading for a clinician.

The model file carries everything needed to reproduce a prediction (model name, preprocessing, operating
threshold, calibration temperature), so nothing here asks for an image size or a threshold. Every image goes
through the same path as the training cache: :func:`pneumoscan.io.read_image` (a large JPEG at reduced scale,
``reduce_to=``:func:`pneumoscan.preprocessing.decode_side`) -> :func:`pneumoscan.preprocessing.to_model_array`.
Paths that also need the film at its own size (heatmaps, the server's previews) decode it in full for that and
score the square :meth:`Predictor.model_square` makes from the same file, so one film has one score on every path
(a square resized from the full decode of a large JPEG differs by up to 0.02 in probability on the full-resolution
samples). The probability is ``sigmoid(logit / temperature)``; the
decision is :func:`pneumoscan.scoring.decide`.

Two backends run the model (:data:`pneumoscan.scoring.BACKENDS`): ONNX Runtime, the default, which never imports
torch (a ``.safetensors`` checkpoint runs through its export: the packaged ``model.onnx``, or one built once and
cached, see :mod:`pneumoscan.onnx_cache`), and eager torch (``backend="torch"``). Grad-CAM needs torch: with a
``.safetensors`` checkpoint (:attr:`Predictor.can_explain`) the torch model is loaded on the first heatmap.

Every image also passes the out-of-scope gate (:mod:`pneumoscan.scope`: DICOM metadata, pixel statistics and the
distance of the model's own features to the training films, from the reference the checkpoint carries); an image
out of scope gets the decision ``OUT_OF_SCOPE``, never PNEUMONIA or NORMAL. :meth:`Predictor.predict_proba` alone
returns bare probabilities, ungated.

One :class:`Predictor` may serve many threads at once (a web server): the torch model runs in eval mode under
``inference_mode`` (forward passes share no mutable state), onnxruntime's ``InferenceSession.run`` is
thread-safe, and Grad-CAM (:mod:`pneumoscan.explain`) attaches its hooks per call, only to its own thread.
Decoding runs on one thread pool per predictor, started on first use and kept until :meth:`Predictor.close`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.backends import load_torch_model, open_model_file
from pneumoscan.checkpoint import ModelMeta
from pneumoscan.constants import DISCLAIMER
from pneumoscan.drift import DriftCheck, DriftResult
from pneumoscan.errors import HeatmapUnavailableError, ModelNotFoundError
from pneumoscan.io import ImageContext
from pneumoscan.predict_files import (
    FileResult,
    ImageInput,
    as_list,
    decode_item,
    score_files,
)
from pneumoscan.preprocessing import decode_side, resize_for_model, to_model_array
from pneumoscan.reference import Reference, intensity_descriptors
from pneumoscan.scope import ADULT_AGE_YEARS, OUT_OF_SCOPE, ScopeGate, ScopeResult
from pneumoscan.scoring import RuntimeOptions, decide, decision_label, expit

if TYPE_CHECKING:  # torch is loaded only for --backend torch, Grad-CAM and in-memory models
    from torch import nn

#: (``load_model`` and ``model_from_checkpoint`` are importable from here too, loading torch on first use.)
__all__ = [
    "DISCLAIMER", "MODEL_ENV_VAR", "PACKAGED_MODEL", "FileResult", "HeatmapUnavailableError", "ModelNotFoundError",
    "Prediction", "Predictor", "RuntimeOptions", "default_model_path",
]


def __getattr__(name: str) -> Any:
    if name in ("load_model", "model_from_checkpoint"):  # the torch side, re-exported; loaded on first use
        from pneumoscan import torch_scoring

        return getattr(torch_scoring, name)
    raise AttributeError(f"module 'pneumoscan.predict' has no attribute {name!r}")


log = logging.getLogger(__name__)

#: Environment variable naming the model used when none is given.
MODEL_ENV_VAR = "PNEUMOSCAN_MODEL"
#: Where the packaged default model lives (shipped by a later release; absent until then).
PACKAGED_MODEL = Path(__file__).resolve().parent / "assets" / "model.safetensors"


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's result: ``probability`` of pneumonia in [0, 1], the decision at ``threshold`` and the scope gate.

    An image out of scope keeps its probability for audit, but ``positive`` is False and :attr:`label` is
    ``OUT_OF_SCOPE``: it must not be shown as a risk.
    """

    probability: float
    positive: bool
    threshold: float
    in_scope: bool = True
    scope_reason: str = ""

    @property
    def label(self) -> str:
        """``"PNEUMONIA"``, ``"NORMAL"`` or ``"OUT_OF_SCOPE"``."""
        return decision_label(self.positive) if self.in_scope else OUT_OF_SCOPE


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


class Predictor:
    """Pneumonia probabilities and decisions for chest X-rays, from one model file.

    Build it with :meth:`from_checkpoint` (a ``.safetensors`` checkpoint or an ``.onnx`` export made by
    :func:`pneumoscan.export.export_onnx`) or :meth:`from_model`. Attributes: ``model_name``, ``threshold``,
    ``temperature``, ``preprocessing``, ``info`` (the checkpoint's metadata, typed:
    :class:`~pneumoscan.checkpoint.ModelMeta`), ``meta`` (the same, as a plain dict), ``version`` (first 12 hex
    digits of the model file's SHA-256, identifying the exact weights, whichever backend runs them; ``"in-memory"``
    for :meth:`from_model`), ``backend`` (``"onnxruntime"`` or ``"torch"``), ``path`` (the model file given),
    ``onnx_path`` (the export ONNX Runtime runs; None with torch), ``can_explain`` (Grad-CAM is available), and the
    site provenance ``adaptation`` and ``site_calibration`` (the metadata records of ``pneumoscan adapt`` and
    ``pneumoscan calibrate``; None when absent; :func:`pneumoscan.provenance.provenance_line` puts them in words).
    """

    def __init__(self, runner: Callable[[Any], np.ndarray], meta: Mapping[str, Any], *,
                 model: nn.Module | None = None, path: str | os.PathLike[str] | None = None, version: str = "in-memory",
                 options: RuntimeOptions | None = None, reference: Reference | None = None,
                 adult_age_years: float = ADULT_AGE_YEARS, checkpoint: str | None = None,
                 onnx_path: str | None = None) -> None:
        path = None if path is None else str(path)
        self.info = ModelMeta.from_dict(dict(meta), path)
        self.reference = reference
        self.gate = ScopeGate(reference, adult_age_years=adult_age_years)
        self._drift: DriftCheck | None = None
        self._drift_unavailable = False
        self._runner = runner
        self._model = model
        self._checkpoint = checkpoint  # the .safetensors Grad-CAM loads the torch model from, on first use
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.options = options or RuntimeOptions()
        self.meta: dict[str, Any] = dict(meta)
        self.model_name = self.info.model
        self.threshold = self.info.threshold
        self.temperature = self.info.temperature
        self.preprocessing = self.info.preprocessing
        self.path = path
        self.onnx_path = onnx_path
        self.version = version
        self.backend: str = getattr(runner, "backend", "custom")
        #: Where the model was adapted (``pneumoscan adapt``) or calibrated at a site; None for a model as shipped.
        self.adaptation: dict[str, Any] | None = self.meta.get("adaptation") or None
        self.site_calibration: dict[str, Any] | None = self.meta.get("site_calibration") or None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, options: RuntimeOptions | None = None,
                        adult_age_years: float = ADULT_AGE_YEARS, backend: str | None = None) -> "Predictor":
        """Load a ``.safetensors`` checkpoint or an ``.onnx`` export (judged by suffix), with the scope/drift
        reference it carries (a model without one is gated on metadata and pixels only, and the log says so).

        ``backend`` (default: ``options.backend``, ``"onnx"``): ``"onnx"`` runs ONNX Runtime without torch, on the
        export itself or, for a checkpoint, on its export (:func:`pneumoscan.onnx_cache.open_for_checkpoint`: the
        packaged ``model.onnx``, or one built once and cached); ``"torch"`` runs the checkpoint with torch.

        Raises:
            CheckpointError: missing, unreadable, or not a pneumoscan model file; ``"torch"`` with an ONNX file.
        """
        options = options or RuntimeOptions()
        if backend is not None and backend != options.backend:
            options = dataclasses.replace(options, backend=backend)
        return cls(**open_model_file(path, options), adult_age_years=adult_age_years)

    @classmethod
    def from_model(cls, model: nn.Module, meta: Mapping[str, Any], *, options: RuntimeOptions | None = None,
                   reference: Reference | None = None, adult_age_years: float = ADULT_AGE_YEARS) -> "Predictor":
        """Wrap an in-memory torch model; ``meta`` as in a checkpoint (needs ``model`` and ``preprocessing``).

        The predictor takes the model over: it is put in eval mode and its parameters stop requiring grad.
        """
        from pneumoscan.torch_scoring import TorchRunner

        options = dataclasses.replace(options or RuntimeOptions(), backend="torch")
        return cls(TorchRunner(model, options), meta, model=model, options=options, reference=reference,
                   adult_age_years=adult_age_years)

    @property
    def can_explain(self) -> bool:
        """True when Grad-CAM heatmaps are available: a torch model, or a ``.safetensors`` checkpoint to load it
        from on first use (an ONNX export alone holds no gradients)."""
        return self._model is not None or self._checkpoint is not None

    def close(self) -> None:
        """Stop the decoding threads (a predictor is still usable afterwards: they start again when needed)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ inference

    def predict_proba(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Pneumonia probabilities, float64 ``(N,)`` in [0, 1], one per image, in input order, WITHOUT the scope
        gate (use :meth:`predict` or :meth:`score_files` for decisions).

        ``images``: one image or a sequence of them; each a file path, the file's bytes (JPEG, PNG, DICOM...),
        or a decoded ``(H, W) uint8`` array of any size (a ``(N, H, W) uint8`` array is N images).

        Raises:
            ImageError: an image cannot be decoded (use :meth:`score_files` to skip bad files instead).
        """
        items = as_list(images)
        out = np.empty(len(items), dtype=np.float64)
        step = max(1, self.options.batch_size)
        for start in range(0, len(items), step):
            decoded = self._decode_many(items[start:start + step], raise_errors=True, resize=True)
            out[start:start + len(decoded)] = self._probabilities(self._input_batch([g for g, _ in decoded]))
        return out

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[Prediction]:
        """Probability, scope gate and decision at the stored operating threshold, one :class:`Prediction` each.

        Raises:
            ImageError: an image cannot be decoded.
        """
        items = as_list(images)
        out: list[Prediction] = []
        step = max(1, self.options.batch_size)
        for start in range(0, len(items), step):
            decoded = self._decode_many(items[start:start + step], raise_errors=True, resize=True)
            probs, feats = self._forward([g for g, _ in decoded])
            for (square, ctx), p, f in zip(decoded, probs, feats):
                out.append(self._decide(p, self.gate.assess(ctx, square, f)))
        return out

    def explain(self, image: ImageInput) -> tuple[float, np.ndarray]:
        """Probability and Grad-CAM heatmap for one image.

        Returns:
            ``(probability, heatmap)``; ``heatmap`` is float32 ``(H, W)`` in [0, 1] at the decoded image's own
            size (all zeros where the model found no evidence for pneumonia).

        Raises:
            HeatmapUnavailableError: this predictor runs an ONNX export without its checkpoint.
        """
        probability, heat, _ = self.explain_with_scope(image)
        return probability, heat

    def explain_with_scope(self, image: ImageInput) -> tuple[float, np.ndarray, Prediction]:
        """:meth:`explain` plus the image's gated :class:`Prediction` (one Grad-CAM pass gives both)."""
        self._require_torch()
        (gray, ctx), = self._decode_many([image], raise_errors=True)
        square = self.model_square(image, gray, ctx)
        probs, maps, feats = self._explain_batch([square], [gray.shape])
        pred = self._decide(probs[0], self.gate.assess(ctx, square, feats[0]))
        return float(probs[0]), maps[0], pred

    def model_square(self, source: Any, gray: np.ndarray, context: ImageContext | None = None) -> np.ndarray:
        """The model's input square for a film decoded at full size (``gray``, e.g. for a heatmap or a preview),
        made exactly as :meth:`score_files` and the training cache make it: a large JPEG file (``source``: its
        path or bytes) is decoded again at reduced scale (:func:`~pneumoscan.preprocessing.decode_side`), so the
        page, ``predict --heatmaps`` and ``predict`` give one film one score; anything else is resized from
        ``gray``."""
        side = decode_side(self.preprocessing)
        if (context is not None and context.format == "JPEG" and min(gray.shape) >= 2 * side
                and isinstance(source, (str, bytes, bytearray, os.PathLike))):
            return decode_item(source, self.preprocessing, raise_errors=True)[0]
        return resize_for_model(gray, self.preprocessing)

    def assess(self, gray: np.ndarray, context: ImageContext | None = None, *, heatmap: bool = False,
               square: np.ndarray | None = None
               ) -> tuple[Prediction, np.ndarray | None, np.ndarray | None, np.ndarray]:
        """One decoded image through the gated path, with its DICOM context (a web server decodes uploads itself,
        within its own limits): one forward pass (with ``heatmap``, one Grad-CAM pass) gives everything.

        Returns:
            ``(prediction, heatmap, features, descriptor)``: the gated :class:`Prediction`; the Grad-CAM map, float32
            ``(H, W)`` in [0, 1] at ``gray``'s size (None without ``heatmap``); the pooled features ``(C,)`` (None
            when the runner gives none) and the :func:`~pneumoscan.reference.intensity_descriptors` ``(7,)`` of the
            model-input square, for a drift window.

        ``square``: the model's input square when the caller made it (:meth:`model_square`: a large JPEG's square
        comes from a reduced-scale decode, as in :meth:`score_files`); else it is resized from ``gray``.

        Raises:
            HeatmapUnavailableError: ``heatmap`` and this predictor cannot explain (:attr:`can_explain`).
        """
        if square is None:
            square = resize_for_model(gray, self.preprocessing)
        if heatmap:
            probs, maps, feats = self._explain_batch([square], [gray.shape])
            heat: np.ndarray | None = maps[0]
        else:
            probs, feats = self._forward([square])
            heat = None
        pred = self._decide(probs[0], self.gate.assess(context, square, feats[0]))
        return pred, heat, feats[0], intensity_descriptors(square[None])[0]

    @property
    def drift(self) -> DriftCheck | None:
        """The drift check against this model's reference (None without one); built on first use."""
        if self._drift is None and self.reference is not None and not self._drift_unavailable:
            try:
                # A site reference (pneumoscan.site.adapt) carries its films' estimated prevalence: the case-mix
                # caution then compares with this site's films, not the training split's.
                prevalence = self.reference.info.get("prevalence", (self.info.val_summary or {}).get("prevalence"))
                self._drift = DriftCheck(self.reference, prevalence=None if prevalence is None else float(prevalence))
            except ValueError as exc:  # a reference from a tiny validation split
                log.warning("%s: no drift check: %s", self.path or "model", exc)
                self._drift_unavailable = True
        return self._drift

    def check_drift(self, results: Sequence[FileResult]) -> DriftResult | None:
        """The drift verdict on the in-scope images among ``results`` (None without a reference).

        Raises:
            NotEnoughImagesError: fewer than :data:`pneumoscan.drift.MIN_IMAGES` in-scope images with features.
        """
        if self.drift is None:
            return None
        used = [r for r in results if r.in_scope and r.features is not None and r.descriptor is not None]
        flag_rate = float(np.mean([decide(r.probability, self.threshold) for r in used])) if used else None
        return self.drift.test(np.stack([r.features for r in used]) if used else np.empty((0, 1)),
                               np.stack([r.descriptor for r in used]) if used else np.empty((0, 7)),
                               flag_rate=flag_rate)

    def score_files(self, paths: Sequence[str | os.PathLike[str]], *, batch_size: int = 64, progress: bool = False,
                    heatmaps: str | os.PathLike[str] | None = None, save_raw: bool = False) -> list[FileResult]:
        """Score a list of files, ``batch_size`` at a time (64: ONNX Runtime is faster per image in large batches;
        with ``heatmaps`` at most :data:`~pneumoscan.predict_files.HEATMAP_BATCH` full-size films at a time): one
        :class:`FileResult` per file, in input order.

        Decoding overlaps with the model (``options.overlap``): the decoding pool works on the next images while
        a batch is scored, never more than two batches ahead, so memory stays bounded however many files come.
        Unreadable files do not stop the batch: their result carries the error and no probability. Every scored
        file also carries the scope gate's verdict and its DICOM context. With ``heatmaps`` (a folder), each
        scored image's Grad-CAM overlay is written there as ``<stem>_gradcam.png`` (with ``save_raw`` also the
        raw map as ``<stem>_gradcam.npy``; stems from :func:`pneumoscan.explain.unique_stems`, so every name fits
        the file system). A heatmap that cannot be written fails only that file's heatmap: it keeps its
        probability, ``heatmap`` is ``""`` and ``error`` says why. Ranking and worklist rows are
        :mod:`pneumoscan.worklist`'s business.

        Raises:
            HeatmapUnavailableError: ``heatmaps`` is given and this predictor cannot explain (:attr:`can_explain`).
        """
        return score_files(self, paths, batch_size=batch_size, progress=progress, heatmaps=heatmaps,
                           save_raw=save_raw)

    # ------------------------------------------------------------------ internals

    def _decide(self, probability: float, scope: ScopeResult | None = None) -> Prediction:
        p = float(probability)
        in_scope = scope is None or scope.in_scope
        return Prediction(probability=p, positive=in_scope and decide(p, self.threshold), threshold=self.threshold,
                          in_scope=in_scope, scope_reason="" if scope is None else scope.reason)

    def _decode_pool(self) -> ThreadPoolExecutor:
        """The decoding threads, started on first use and kept for the predictor's life (or until :meth:`close`)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.options.decode_workers),
                                                thread_name_prefix="pneumoscan-decode")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            return self._pool

    def _decode_many(self, items: Sequence[ImageInput], *, raise_errors: bool,
                     resize: bool = False) -> list[tuple[np.ndarray, ImageContext] | str]:
        """Decode items (paths/bytes/arrays) to ``((H, W) uint8, context)`` (with ``resize``: straight to the
        model's ``(S, S)``, in the worker, so that a batch never holds all its full-size films at once); with
        ``raise_errors=False`` a failure is its message string in place of the pair."""
        def one(item: ImageInput) -> tuple[np.ndarray, ImageContext] | str:
            return decode_item(item, self.preprocessing if resize else None, raise_errors=raise_errors)

        if min(self.options.decode_workers, len(items)) <= 1 or all(isinstance(i, np.ndarray) for i in items):
            return [one(i) for i in items]
        return list(self._decode_pool().map(one, items))

    def _input_batch(self, gray: Sequence[np.ndarray]) -> np.ndarray:
        """Resize each image to the model's square and normalise: float32 ``(N, 1, S, S)`` (a NumPy array)."""
        return to_model_array(gray, self.preprocessing)

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        return expit(self._runner(x) / self.temperature)

    def _forward(self, squares: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Probabilities and pooled features (None per image when the runner gives none) of model-size squares."""
        x = self._input_batch(squares)
        with_features = getattr(self._runner, "with_features", None)
        if with_features is None:
            return self._probabilities(x), [None] * len(squares)
        logits, feats = with_features(x)
        return expit(logits / self.temperature), ([None] * len(squares) if feats is None else list(feats))

    def _require_torch(self) -> nn.Module:
        """The torch model Grad-CAM needs: the one in use, else loaded from the checkpoint on first use (it must
        still be the file whose export runs: same SHA-256)."""
        if self._model is None and self._checkpoint is not None:
            with self._lock:
                if self._model is None:
                    self._model = load_torch_model(self._checkpoint, self.version, self.options.threads)
        if self._model is None:
            raise HeatmapUnavailableError(
                f"{self.path}: Grad-CAM heatmaps need the .safetensors checkpoint (the torch model); an ONNX "
                "export holds no gradients to explain with. Pass the checkpoint the ONNX file was exported from")
        return self._model

    def _explain_batch(self, squares: Sequence[np.ndarray], sizes: Sequence[tuple[int, ...]],
                       chunk: int = 8) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Probabilities, per-image heatmaps at each film's own size (``sizes``, ``(H, W)``) and pooled features
        of model-input ``squares`` (Grad-CAM runs ``chunk`` at a time: it keeps activations for the backward
        pass)."""
        import torch

        from pneumoscan.explain import GradCAM, upsample_cam

        cam = GradCAM(self._require_torch())
        probs, maps, feats = [], [], []
        for start in range(0, len(squares), chunk):
            part = squares[start:start + chunk]
            logits, low, pooled = cam.run(torch.from_numpy(self._input_batch(part)))
            probs.append(expit(logits.numpy().astype(np.float64) / self.temperature))
            maps += [upsample_cam(low[i], tuple(sizes[start + i])[:2]) for i in range(len(part))]
            feats += list(pooled.numpy())
        return np.concatenate(probs), maps, feats
