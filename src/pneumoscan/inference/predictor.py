"""Predictor: a checkpoint (``.safetensors``) or an ONNX export in, one :class:`~pneumoscan.result.Result` per image
out.

Decision support, not a diagnosis: every result is a second reading for a clinician.

The model file carries everything needed to reproduce a decision (model name, preprocessing, operating threshold,
calibration temperature), so nothing here asks for an image size or a threshold. Every input reaches the model
through :func:`pneumoscan.preprocessing.read_film`, the one path from a file to the model's square that the
training cache, site adaptation, the server and the DICOM node use too (a large JPEG decoded at reduced scale), so
one film has one score on every path. The probability is ``sigmoid(logit / temperature)``; the decision is made
once, where the :class:`~pneumoscan.result.Result` is made.

Two backends run the model (:data:`pneumoscan.inference.scoring.BACKENDS`): ONNX Runtime, the default, which never
imports torch (a ``.safetensors`` checkpoint runs through its export: the packaged ``model.onnx``, or one built once
and cached, see :mod:`pneumoscan.inference.onnx_cache`), and eager torch (``backend="torch"``). The explanation is
occlusion sensitivity (:mod:`pneumoscan.inference.occlusion`): it needs only scores, so every backend gives it.

Every image also passes the out-of-scope gate (:mod:`pneumoscan.gate.scope`: DICOM metadata, pixel statistics and
the distance of the model's own features to the training films, from the reference the checkpoint carries); an image
out of scope gets the decision ``OUT_OF_SCOPE``, never PNEUMONIA or NORMAL. :meth:`Predictor.predict_proba` alone
returns bare probabilities, ungated.

One :class:`Predictor` may serve many threads at once (a web server): the torch model runs in eval mode under
``inference_mode`` (forward passes share no mutable state), onnxruntime's ``InferenceSession.run`` is thread-safe,
and an explanation only scores occluded copies of a film. Decoding runs
on one thread pool per predictor, started on first use and kept until :meth:`Predictor.close`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pneumoscan.checkpoint import ModelMeta
from pneumoscan.constants import DISCLAIMER
from pneumoscan.errors import ModelNotFoundError  # noqa: F401 - re-exported
from pneumoscan.gate.drift import DriftCheck, DriftResult
from pneumoscan.gate.reference import Reference, intensity_descriptors
from pneumoscan.gate.scope import ADULT_AGE_YEARS, ScopeGate
from pneumoscan.inference.backends import MODEL_ENV_VAR, PACKAGED_MODEL, default_model_path, open_model_file
from pneumoscan.inference.files import (
    HEATMAP_BATCH,
    Decoded,
    ImageInput,
    as_list,
    decode_item,
    decoded_batches,
    describe,
    display_copy,
    prepare_heatmaps,
    write_heatmap_for,
)
from pneumoscan.inference.network import Network
from pneumoscan.inference.occlusion import METHOD
from pneumoscan.inference.provenance import calibration_words
from pneumoscan.inference.protocols import Runner
from pneumoscan.inference.scoring import RuntimeOptions, expit
from pneumoscan.preprocessing import Film, read_film
from pneumoscan.result import Explanation, ModelIdentity, Result

if TYPE_CHECKING:  # torch is loaded only for --backend torch and in-memory models
    from torch import nn

    from pneumoscan.preprocessing import FilmSource

#: (``load_model`` and ``model_from_checkpoint`` are importable from here too, loading torch on first use.)
__all__ = [
    "DISCLAIMER", "MODEL_ENV_VAR", "PACKAGED_MODEL", "ModelNotFoundError", "Predictor",
    "Result", "RuntimeOptions", "default_model_path",
]


def __getattr__(name: str) -> Any:
    if name in ("load_model", "model_from_checkpoint"):  # the torch side, re-exported; loaded on first use
        from pneumoscan.inference import torch_scoring

        return getattr(torch_scoring, name)
    raise AttributeError(f"module 'pneumoscan.inference.predictor' has no attribute {name!r}")


log = logging.getLogger(__name__)

class _Run(NamedTuple):
    """One batch through the network: probabilities, P(viral) (None without a cause output), pooled features and,
    when explained, occlusion maps."""

    probs: np.ndarray
    causes: np.ndarray | None
    feats: list[np.ndarray | None]
    cams: list[np.ndarray] | None = None
    #: The scope gate's out-of-distribution score of each film, computed for the whole batch at once (one matrix
    #: product: per film, a tiny product's BLAS threads cost more than the product); None without a reference.
    ood: np.ndarray | None = None


class Predictor:
    """One :class:`~pneumoscan.result.Result` per chest X-ray (probability, scope verdict, decision), from one model
    file.

    Build it with :meth:`from_checkpoint` (a ``.safetensors`` checkpoint or an ``.onnx`` export made by
    :func:`pneumoscan.inference.export.export_onnx`) or :meth:`from_model`. Attributes: ``model_name``, ``threshold``,
    ``temperature``, ``preprocessing``, ``info`` (the checkpoint's metadata, typed:
    :class:`~pneumoscan.checkpoint.ModelMeta`), ``meta`` (the same, as a plain dict), ``version`` (first 12 hex
    digits of the model file's SHA-256, identifying the exact weights, whichever backend runs them; ``"in-memory"``
    for :meth:`from_model`), ``backend`` (``"onnxruntime"`` or ``"torch"``), ``path`` (the model file given),
    ``onnx_path`` (the export ONNX Runtime runs; None with torch), ``checkpoint`` (the ``.safetensors`` file; None
    for an ONNX export or an in-memory model), ``identity`` (the :class:`~pneumoscan.result.ModelIdentity` every result names), and the
    site provenance ``adaptation`` and ``site_calibration`` (the metadata records of ``pneumoscan adapt`` and
    ``pneumoscan calibrate``; None when absent; :func:`pneumoscan.inference.provenance.provenance_line` puts them in words).
    """

    def __init__(self, runner: Runner, meta: Mapping[str, Any], *,
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
        #: The network on its backend.
        self.checkpoint = checkpoint
        self.network = Network(runner, self.preprocessing, model=model, version=version, path=path)
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
        export itself or, for a checkpoint, on its export (:func:`pneumoscan.inference.onnx_cache.open_for_checkpoint`: the
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
        from pneumoscan.inference.torch_scoring import TorchRunner

        options = dataclasses.replace(options or RuntimeOptions(), backend="torch")
        return cls(TorchRunner(model, options), meta, model=model, options=options, reference=reference,
                   adult_age_years=adult_age_years)

    @property
    def identity(self) -> ModelIdentity:
        """Which model answers, at which operating points: every :class:`~pneumoscan.result.Result` names it."""
        return ModelIdentity(self.model_name, self.version, self.threshold, self.info.cause_threshold,
                             calibration_words(self.meta))

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

    def read(self, source: FilmSource | os.PathLike[str], *, full: bool = False, name: str | None = None,
             max_pixels: int | None = None, log_name: str | None = None) -> Film:
        """One input through :func:`pneumoscan.preprocessing.read_film` with this model's preprocessing (the one path
        from a file to the model's square; ``full`` keeps the film at its own size too).

        Raises:
            ImageError: the file cannot be used (the message names it).
        """
        return read_film(source, self.preprocessing, full=full, name=name, max_pixels=max_pixels, log_name=log_name)

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
            films = self._decode_many(items[start:start + step])
            out[start:start + len(films)] = self._forward([f.square for f in films]).probs
        return out

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[Result]:
        """One gated :class:`~pneumoscan.result.Result` per image (probability, scope verdict, the decision at the
        stored operating threshold), in input order.

        Raises:
            ImageError: an image cannot be decoded (use :meth:`score_files` to keep going past bad files).
        """
        items = as_list(images)
        out: list[Result] = []
        step = max(1, self.options.batch_size)
        for start in range(0, len(items), step):
            part = items[start:start + step]
            films = self._decode_many(part)
            run = self._forward([f.square for f in films])
            descriptors = intensity_descriptors(np.stack([f.square for f in films]))
            out += [self._result(describe(item), run, k, film, d)
                    for k, (item, film, d) in enumerate(zip(part, films, descriptors))]
        return out

    def explain(self, image: ImageInput) -> tuple[float, np.ndarray]:
        """Probability and explanation heatmap for one image, WITHOUT the scope gate (as :meth:`predict_proba`; the
        gated path, which keeps no map for a film out of scope, is :meth:`assess` with ``explain``).

        Returns:
            ``(probability, heatmap)``; ``heatmap`` is float32 ``(H, W)`` in [0, 1] at the decoded image's own
            size (all zeros where the model found no evidence for pneumonia).

        """
        film = read_film(image, self.preprocessing, full=True)
        assert film.gray is not None
        run = self._explain_batch([film.square])
        return float(run.probs[0]), Explanation(run.cams[0], METHOD).heatmap(film.gray.shape)

    def assess(self, film: Film, *, source: str = "", explain: bool = False, keep_film: bool = False) -> Result:
        """One decoded film (:meth:`read`) through the gated path: one forward pass (with ``explain``, one forward
        pass and 100 occluded copies) gives its :class:`~pneumoscan.result.Result`, with the pooled features and intensity descriptors a
        drift window needs. With ``explain`` an in-scope film's result carries its
        :class:`~pneumoscan.result.Explanation`; with ``keep_film`` (``film.gray`` needed) a display copy of the film
        (at most :data:`~pneumoscan.inference.files.KEPT_FILM_SIDE` px), so that its outputs (a Secondary Capture,
        a preview) never decode the file again.

        Raises:
            ValueError: ``keep_film`` without ``film.gray``.
        """
        if keep_film and film.gray is None:
            raise ValueError("keep_film needs the film at its own size: read it with full=True")
        run = self._explain_batch([film.square]) if explain else self._forward([film.square])
        descriptor = intensity_descriptors(film.square[None])[0]
        return self._result(source, run, 0, film, descriptor, keep=film.gray if keep_film else None)

    @property
    def drift(self) -> DriftCheck | None:
        """The drift check against this model's reference (None without one); built on first use. Its null comes
        from the table the reference carries; a model without one computes each null once and caches it beside the
        ONNX exports (:func:`pneumoscan.inference.onnx_cache.cache_dir`)."""
        if self._drift is None and self.reference is not None and not self._drift_unavailable:
            from pneumoscan.inference.onnx_cache import cache_dir

            try:
                # A site reference (pneumoscan.onboarding.site.adapt) carries its films' estimated prevalence: the
                # case-mix caution then compares with this site's films, not the training split's.
                prevalence = self.reference.info.get("prevalence", (self.info.val_summary or {}).get("prevalence"))
                self._drift = DriftCheck(self.reference, prevalence=None if prevalence is None else float(prevalence),
                                         cache_dir=cache_dir())
            except ValueError as exc:  # a reference from a tiny validation split
                log.warning("%s: no drift check: %s", self.path or "model", exc)
                self._drift_unavailable = True
        return self._drift

    def check_drift(self, results: Sequence[Result]) -> DriftResult | None:
        """The drift verdict on the in-scope images among ``results`` (None without a reference).

        Raises:
            NotEnoughImagesError: fewer than :data:`pneumoscan.gate.drift.MIN_IMAGES` in-scope images with features.
        """
        if self.drift is None:
            return None
        used = [r for r in results if r.assessed and r.features is not None and r.descriptor is not None]
        flag_rate = float(np.mean([r.positive for r in used])) if used else None
        return self.drift.test(np.stack([r.features for r in used]) if used else np.empty((0, 1)),
                               np.stack([r.descriptor for r in used]) if used else np.empty((0, 7)),
                               flag_rate=flag_rate)

    def score_files(self, paths: Sequence[ImageInput], *, batch_size: int = 64, progress: bool = False,
                    heatmaps: str | os.PathLike[str] | None = None, save_raw: bool = False,
                    explain: bool | Callable[[str], bool] = False, outline: bool = False) -> list[Result]:
        """:meth:`iter_results` as a list (films kept by ``explain`` are dropped: the results keep their scores,
        explanations and features)."""
        return [r.without_film() for r in self.iter_results(paths, batch_size=batch_size, progress=progress,
                                                               heatmaps=heatmaps, save_raw=save_raw,
                                                               explain=explain, outline=outline)]

    def iter_results(self, paths: Sequence[ImageInput], *, batch_size: int = 64, progress: bool = False,
                     heatmaps: str | os.PathLike[str] | None = None, save_raw: bool = False,
                     explain: bool | Callable[[str], bool] = False, outline: bool = False) -> Iterator[Result]:
        """Score inputs ``batch_size`` at a time (64: ONNX Runtime is faster per image in large batches), yielding
        one :class:`~pneumoscan.result.Result` per input, in input order, as each batch is done.

        Decoding overlaps with the model (``options.overlap``): the decoding pool works on the next images while a
        batch is scored, never more than two batches ahead, so memory stays bounded however many files come.
        Unreadable files do not stop the run: their result carries the error. ``explain`` (True, or a test of the
        input's name, e.g. "is it DICOM?") picks the inputs decoded at their own size too and explained with
        occlusion sensitivity: their results carry the :class:`~pneumoscan.result.Explanation` (in scope) and a display copy of
        the film (``film``), which is all a Secondary Capture needs; at most
        :data:`~pneumoscan.inference.files.HEATMAP_BATCH` such films are held at once. With ``heatmaps`` (a
        folder) every input is explained and its overlay written there as ``<stem>_heatmap.png`` (``outline``: with
        the strongest region outlined; with ``save_raw`` also the raw map as ``<stem>_heatmap.npy``; stems from
        :func:`pneumoscan.inference.render.unique_stems`); an overlay that cannot be written costs that film its
        heatmap (its ``note`` says why), never its score.
        """
        from tqdm import tqdm

        items = list(paths)
        names = [describe(i) for i in items]
        wanted: Callable[[str], bool] = (lambda _: True) if heatmaps is not None or explain is True else (
            explain if callable(explain) else (lambda _: False))
        full = [bool(wanted(n)) for n in names]
        stems = prepare_heatmaps(names, heatmaps)
        step = max(1, batch_size if not any(full) else min(batch_size, HEATMAP_BATCH))
        pool = self._decode_pool if self.options.overlap and self.options.decode_workers >= 1 else None
        with tqdm(total=len(items), unit="img", desc="predict", disable=None if progress else True) as bar:
            for start, decoded in decoded_batches(items, self.preprocessing, step, full=full.__getitem__, pool=pool,
                                                  workers=self.options.decode_workers):
                chunk = range(start, start + len(decoded))
                for i, result in zip(chunk, self.assess_batch([names[i] for i in chunk], decoded)):
                    film = decoded[i - start]
                    if heatmaps is not None and result.read and isinstance(film, Film) and film.gray is not None:
                        result = write_heatmap_for(heatmaps, stems[i], result, film.gray, save_raw=save_raw,
                                                   outline=outline)
                    yield result
                if start + len(decoded) < len(items):
                    bar.update(len(decoded))
                else:  # the last batch: closing the bar draws its final line; an update would draw it once more
                    bar.n = len(items)

    def assess_batch(self, names: Sequence[str], decoded: Sequence[Decoded]) -> list[Result]:
        """The results of a decoded batch (each a :class:`~pneumoscan.preprocessing.Film`, or the message saying why
        it could not be read), in order: films kept at their own size (``gray``) are explained (occlusion) and
        keep a display copy, the others go through the runner; each is gated. ``names``: each result's source."""
        out: list[Result | None] = [None] * len(decoded)
        films = {i: d for i, d in enumerate(decoded) if isinstance(d, Film)}
        for i, d in enumerate(decoded):
            if not isinstance(d, Film):
                out[i] = Result.unread(names[i], str(d), self.identity)
        explained = [i for i, f in films.items() if f.gray is not None]
        plain = [i for i, f in films.items() if f.gray is None]
        descriptors = dict(zip(films, intensity_descriptors(np.stack([f.square for f in films.values()])))) \
            if films else {}
        if plain:
            run = self._forward([films[i].square for i in plain])
            for k, i in enumerate(plain):
                out[i] = self._result(names[i], run, k, films[i], descriptors[i])
        if explained:
            run = self._explain_batch([films[i].square for i in explained])
            for k, i in enumerate(explained):
                out[i] = self._result(names[i], run, k, films[i], descriptors[i], keep=films[i].gray)
        return [r for r in out if r is not None]

    # ------------------------------------------------------------------ internals

    def _result(self, source: str, run: _Run, k: int, film: Film, descriptor: np.ndarray | None, *,
                keep: np.ndarray | None = None) -> Result:
        """THE place a read film becomes its :class:`~pneumoscan.result.Result` (item ``k`` of a batch ``run``): the
        scope gate's verdict, then the result (which makes the decision, and the cause of a flagged film). An
        explanation is kept only in scope: on a film the model does not assess, a map of "evidence" would read as a
        finding."""
        features = run.feats[k]
        cam = None if run.cams is None else run.cams[k]
        verdict = self.gate.assess(film.context, film.square, features,
                                   ood_score=None if run.ood is None else float(run.ood[k]))
        return Result.scored(source, float(run.probs[k]), self.identity, in_scope=verdict.in_scope,
                             scope_reason=verdict.reason, scope_evidence=verdict.evidence,
                             scope_caution=verdict.caution, ood_score=verdict.ood_score, context=film.context,
                             cause_probability=None if run.causes is None else float(run.causes[k]),
                             explanation=Explanation(cam, METHOD) if cam is not None and verdict.in_scope else None,
                             film=None if keep is None else display_copy(keep), features=features,
                             descriptor=descriptor)

    def _decode_pool(self) -> ThreadPoolExecutor:
        """The decoding threads, started on first use and kept for the predictor's life (or until :meth:`close`)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.options.decode_workers),
                                                thread_name_prefix="pneumoscan-decode")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            return self._pool

    def _decode_many(self, items: Sequence[ImageInput]) -> list[Film]:
        """Decode items (paths, bytes, arrays) to model squares, on the decoding pool; the first failure raises."""
        def one(item: ImageInput) -> Film:
            film = decode_item(item, self.preprocessing, raise_errors=True)
            assert isinstance(film, Film)
            return film

        if min(self.options.decode_workers, len(items)) <= 1 or all(isinstance(i, np.ndarray) for i in items):
            return [one(i) for i in items]
        return list(self._decode_pool().map(one, items))

    def _forward(self, squares: Sequence[np.ndarray]) -> _Run:
        """Probabilities (``sigmoid(logit / temperature)``), the cause output's P(viral) (its own temperature) and
        pooled features of model-size squares."""
        logits, cause, feats = self.network.logits(squares)
        return _Run(expit(logits / self.temperature), self._cause_probs(cause), feats, ood=self._ood(feats))

    def _explain_batch(self, squares: Sequence[np.ndarray]) -> _Run:
        """:meth:`_forward` with each square's explanation: its occlusion map
        (:mod:`pneumoscan.inference.occlusion`, on this predictor's own backend)."""
        logits, cause, maps, feats = self.network.occlusion(squares)
        return _Run(expit(logits / self.temperature), self._cause_probs(cause), feats, maps, self._ood(feats))

    def _ood(self, feats: Sequence[np.ndarray | None]) -> np.ndarray | None:
        """The gate's out-of-distribution scores of a batch's pooled features (None without a reference)."""
        reference = self.gate.reference
        if reference is None or not feats or any(f is None for f in feats):
            return None
        return reference.ood_scores(np.stack([np.asarray(f) for f in feats]))

    def _cause_probs(self, cause_logits: np.ndarray | None) -> np.ndarray | None:
        """P(viral), calibrated: only for a model whose cause output has an operating point."""
        if cause_logits is None or self.info.cause is None:
            return None
        return expit(cause_logits / self.info.cause_temperature)

    @property
    def _model(self) -> nn.Module | None:
        """The torch model, once there is one (the torch backend, or an in-memory model)."""
        return self.network.model
