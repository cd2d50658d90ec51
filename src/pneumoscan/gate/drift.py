"""The drift check: do a site's images, as a batch, still look like the training data to the model?

The statistic combines two kernel two-sample tests (maximum mean discrepancy, MMD, with a Gaussian kernel whose
width is the median distance in the reference):

* on the model's pooled features (unit length), against the training bank: a site can shift the features the
  decision rests on without its flag rate moving (blur, noise, a different resizing chain...);
* on intensity descriptors of the input squares (percentiles, mean, standard deviation), standardised on the
  training bank: the model is trained to be robust to exposure and contrast, so a site that exposes or windows
  its films differently may not move the features much, yet its scores' calibration can.

**The mix of cases.** Both the features and the intensities follow the disease as well as the acquisition: sick
children's films look different. A site whose consecutive films are 20% pneumonia is not "shifted" because the
validation films were 77%. So the test asks whether the batch looks like the training films *at some mix of
cases* (a composite null: label shift allowed, nothing else). The reference's films carry their labels; the
reference is the mixture ``(1 - pi) P(normal) + pi P(pneumonia)`` (class-weighted MMD), and ``pi`` is the mix that
fits the batch best in the feature MMD (closed form: the MMD is quadratic in ``pi``), used for both components and
reported as :attr:`DriftResult.estimated_mix`. A caller may pass its own estimate instead (``mix=``, e.g. EM on the
batch's calibrated probabilities); ``benchmarks/drift_power.py`` measured both and the fitted mix is the default
(docs/scope_gate.md). A change of acquisition is still caught because no mixture of the training films' two
classes looks like blurred, noisier or differently exposed films.

Each MMD is divided by its own null 95th percentile, and the statistic is the larger of the two. Its threshold is
the ``1 - alpha`` quantile of the same statistic (mix refitted on each) over bootstrap batches of the same size
drawn, with replacement and stratified at the grid mix nearest the batch's (steps of :data:`MIX_STEP`), from the
held-out validation films (in distribution by construction), so a batch like the training data is called shifted
at most about ``alpha`` (5%) of the time whatever its mix. The kernel sums between the validation films, and
between them and the bank's classes, are computed once, so a null batch costs the product of its film counts with
them: the null is a table by (batch size, grid mix), computed when the reference is built and stored with it
(:mod:`pneumoscan.gate.drift_null`: looked up, interpolated between stored batch sizes, at run time; a model
without it computes each null once and caches it on disk).

A reference without labels (models built before them, a site's unlabelled films) falls back to the test at the
reference's own mix, which rings for a change of case mix: the result says so in ``method`` and, when the batch's
flag rate is far from the training mix, in :attr:`DriftResult.case_mix_note`. (Drawing null batches without
replacement from a few hundred films makes the null too narrow: on synthetic data it flagged 17% of
in-distribution batches of 150 drawn against 400 validation films; with replacement 2-7%, tested in
``tests/test_drift.py``.) Batches larger than ``max_batch`` (500) or the number of validation films are subsampled
(seeded).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from pneumoscan.gate.drift_null import MIX_STEP, NullCache, NullTable, null_identity, table_doc, table_sizes
from pneumoscan.gate.reference import Reference, l2_normalize

__all__ = ["MIN_IMAGES", "MIX_STEP", "DriftCheck", "DriftResult", "NotEnoughImagesError"]

log = logging.getLogger(__name__)

#: The fewest in-scope images a drift check accepts.
MIN_IMAGES = 50

_METHOD_MIX = ("max of feature and intensity MMD against the training films reweighted to the batch's mix of cases "
               "({how}), each over its null 95th percentile; threshold by resampling validation films stratified "
               "at that mix")
_METHOD_FALLBACK = ("max of feature and intensity MMD, each over its null 95th percentile; threshold by resampling; "
                    "NOT adjusted for the mix of cases (this model's reference carries no labels: rebuild it with "
                    "scripts/build_reference.py --labels-only)")


class NotEnoughImagesError(ValueError):
    """Fewer than :data:`MIN_IMAGES` in-scope images."""


@dataclass(frozen=True)
class DriftResult:
    """The verdict on one batch. ``statistic > threshold`` means ``shifted``."""

    shifted: bool
    statistic: float
    threshold: float
    n_images: int
    n_used: int
    features_component: float
    intensity_component: float
    alpha: float
    method: str = _METHOD_FALLBACK
    #: Share of the batch flagged PNEUMONIA, and the share of pneumonia among the reference's validation films
    #: (None when unknown), reported beside the verdict.
    flag_rate: float | None = None
    reference_prevalence: float | None = None
    #: The mix of cases (share of pneumonia) the reference was reweighted to, in [0, 1]; None when the test could
    #: not adjust for the mix (a reference without labels).
    estimated_mix: float | None = None

    @property
    def case_mix_note(self) -> str:
        """A caution, only for a test not adjusted for the mix of cases, when the batch's flag rate is far from the
        training mix (odds more than 3 times higher or lower than those of pneumonia among the validation films);
        else ``""``."""
        if self.estimated_mix is not None or self.flag_rate is None or self.reference_prevalence is None:
            return ""
        odds = lambda p: min(max(p, 0.01), 0.99) / (1 - min(max(p, 0.01), 0.99))  # noqa: E731
        ratio = odds(self.flag_rate) / odds(self.reference_prevalence)
        if 1 / 3 <= ratio <= 3:
            return ""
        return (f"{self.flag_rate:.0%} of this batch was flagged, against {self.reference_prevalence:.0%} pneumonia "
                "among the validation films: this model's reference carries no labels, so the check cannot allow "
                "for a different mix of cases, which also moves this statistic")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "case_mix_note": self.case_mix_note}


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def _kernel(gamma: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.exp(-gamma * _sq_dists(a, b))


def _within(k: np.ndarray) -> float:
    """Mean of a square kernel matrix off its diagonal (the unbiased within-sample term)."""
    n = len(k)
    return float((k.sum() - np.trace(k)) / (n * (n - 1)))


class _ClassMMD:
    """Unbiased MMD² of a sample against a reference sample whose classes are reweighted to a given mix; Gaussian
    kernel, median-heuristic width.

    ``groups``: a list of index arrays into ``ref`` (one per class; one group without labels). The MMD against
    the mixture ``sum_c w_c P_c`` is ``kxx - 2 w . m + w' G w`` (``m_c`` the mean kernel between the sample and
    class ``c``, ``G`` the class-by-class kernel means, within-class ones unbiased). ``val``: the validation
    films, whose kernel sums (``val_kernel``, ``val_to_class``, computed when first needed) make an MMD of a
    resampled batch a product of counts. ``constants``: ``(gamma, G)`` as a stored null table carries them (the
    same numbers this class computes from ``ref``), which spares the reference's kernel matrix.
    """

    def __init__(self, ref: np.ndarray, groups: list[np.ndarray], val: np.ndarray,
                 constants: tuple[float, np.ndarray] | None = None) -> None:
        self.ref = np.asarray(ref, dtype=np.float64)
        self.groups = groups
        self._val = val
        if constants is not None:
            self.gamma, self.G = float(constants[0]), np.asarray(constants[1], dtype=np.float64)
            return
        sub = self.ref[: min(500, len(self.ref))]
        d = np.sqrt(_sq_dists(sub, sub)[np.triu_indices(len(sub), 1)])
        median = float(np.median(d)) if d.size else 1.0
        self.gamma = 1.0 / (2.0 * max(median, 1e-12) ** 2)
        k = _kernel(self.gamma, self.ref, self.ref)
        g = len(groups)
        self.G = np.empty((g, g))
        for i, a in enumerate(groups):
            for j, b in enumerate(groups):
                self.G[i, j] = _within(k[np.ix_(a, a)]) if i == j else float(k[np.ix_(a, b)].mean())

    @cached_property
    def _val_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """``(val_kernel (V, V), val_to_class (V, g))``: the kernel between the validation films, and each one's
        mean kernel with each class of the reference."""
        val = np.asarray(self._val, dtype=np.float64)
        kv = _kernel(self.gamma, val, self.ref)
        return _kernel(self.gamma, val, val), np.stack([kv[:, a].mean(1) for a in self.groups], axis=1)

    def terms(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """``(kxx, m)`` of a sample ``x``."""
        x = np.asarray(x, dtype=np.float64)
        kx = _kernel(self.gamma, x, self.ref)
        return _within(_kernel(self.gamma, x, x)), np.array([kx[:, a].mean() for a in self.groups])

    def val_terms(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(kxx (R,), m (R, g))`` of ``R`` resampled batches of validation films, each given by how many times
        it holds each film (``counts``, ``(R, V)``): the unbiased within-batch term counts every pair of draws,
        repeats of one film included, as :func:`_within` of the batch's kernel matrix does."""
        k, to_class = self._val_sums
        n = counts.sum(1)
        kxx = (np.einsum("rv,rv->r", counts @ k, counts) - counts @ np.diag(k)) / (n * (n - 1))
        return kxx, (counts @ to_class) / n[:, None]

    def mmd(self, kxx: float, m: np.ndarray, w: np.ndarray) -> float:
        return float(kxx - 2.0 * w @ m + w @ self.G @ w)

    def mmds(self, kxx: np.ndarray, m: np.ndarray, w: np.ndarray) -> np.ndarray:
        """:meth:`mmd` of ``R`` samples at once (``w``: ``(R, g)``)."""
        return kxx - 2.0 * (w * m).sum(1) + ((w @ self.G) * w).sum(1)

    def best_mix(self, m: np.ndarray) -> float | np.ndarray:
        """The share of class 1 that minimises the MMD (two classes; the MMD is quadratic in it), in [0, 1]; of
        each row when ``m`` is ``(R, 2)``."""
        curvature = self.G[0, 0] - 2.0 * self.G[0, 1] + self.G[1, 1]  # the MMD² between the two classes
        m = np.asarray(m)
        if curvature <= 1e-15:
            return 0.5 if m.ndim == 1 else np.full(len(m), 0.5)
        pi = np.clip((m[..., 1] - m[..., 0] + self.G[0, 0] - self.G[0, 1]) / curvature, 0.0, 1.0)
        return float(pi) if m.ndim == 1 else pi


class DriftCheck:
    """The drift test against one model's :class:`Reference`; null distributions by batch size and grid mix
    (:meth:`null`): from the table the reference carries (:mod:`pneumoscan.gate.drift_null`), else computed once
    and, with ``cache_dir``, kept on disk for the next run."""

    def __init__(self, reference: Reference, *, alpha: float = 0.05, n_resamples: int = 200, seed: int = 0,
                 max_batch: int = 500, prevalence: float | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if len(reference.val_features) < 2 * MIN_IMAGES:
            raise ValueError(f"the model's reference holds {len(reference.val_features)} validation films; the drift "
                             f"check needs at least {2 * MIN_IMAGES} to resample batches of {MIN_IMAGES} from them")
        self.reference = reference
        self.prevalence = prevalence
        self.alpha = alpha
        self.n_resamples = n_resamples
        self.seed = seed
        self.max_batch = min(max_batch, len(reference.val_features))
        bank_y, val_y = reference.bank_labels, reference.val_labels
        #: True when the reference's labels let the test allow for the mix of cases (both classes in the bank and
        #: in the validation films).
        self.mix_adjusted = (bank_y is not None and val_y is not None and len(set(np.asarray(bank_y).tolist())) == 2
                             and len(set(np.asarray(val_y).tolist())) == 2)
        if self.mix_adjusted:
            groups = [np.flatnonzero(np.asarray(bank_y) == c) for c in (0, 1)]
            self._val_pools = [np.flatnonzero(np.asarray(val_y) == c) for c in (0, 1)]
        else:
            groups = [np.arange(len(reference.bank))]
            self._val_pools = [np.arange(len(reference.val_features))]
        #: Names this reference and these parameters (:func:`pneumoscan.gate.drift_null.null_identity`).
        self.identity = null_identity(reference, alpha=alpha, n_resamples=n_resamples, seed=seed,
                                      max_batch=self.max_batch)
        #: The reference's stored null table when it was computed for this reference and these parameters.
        self.table = self._stored_table(reference.drift_null)
        self._cache = None if cache_dir is None else NullCache(cache_dir, self.identity)
        constants = self.table.constants if self.table is not None else (
            self._cache.constants if self._cache is not None else None)
        if constants is not None and any(c[1].shape != (len(groups),) * 2 for c in constants.values()):
            constants = None
        self._mu = reference.bank_descriptors.mean(0)
        self._sd = reference.bank_descriptors.std(0) + 1e-6
        self._feat = _ClassMMD(reference.bank, groups, reference.val_features,
                               None if constants is None else constants["features"])
        self._int = _ClassMMD(self._z(reference.bank_descriptors), groups, self._z(reference.val_descriptors),
                              None if constants is None else constants["intensity"])
        self._null: dict[tuple[int, int, bool], tuple[float, float, float]] = {}

    def _stored_table(self, doc: dict[str, Any] | None) -> NullTable | None:
        if doc is None:
            return None
        try:
            table = NullTable.from_doc(doc)
        except ValueError as exc:
            log.warning("the model's drift null table is unreadable (%s); the null is computed at run time", exc)
            return None
        if table.identity != self.identity:
            log.info("the model's drift null table was computed for another reference or other parameters "
                     "(alpha, resamples, seed, batch limit); the null is computed at run time")
            return None
        return table

    def _z(self, descriptors: np.ndarray) -> np.ndarray:
        return (np.asarray(descriptors, dtype=np.float64) - self._mu) / self._sd

    def _components(self, feat: tuple[float, np.ndarray], inten: tuple[float, np.ndarray],
                    mix: float | None) -> tuple[float, float, float | None]:
        """``(feature MMD, intensity MMD, mix used)``; ``mix`` None: the best-fitting mix (or none, unlabelled)."""
        if not self.mix_adjusted:
            w = np.ones(1)
            return self._feat.mmd(*feat, w), self._int.mmd(*inten, w), None
        pi = self._feat.best_mix(feat[1]) if mix is None else float(mix)
        w = np.array([1.0 - pi, pi])
        return self._feat.mmd(*feat, w), self._int.mmd(*inten, w), pi

    def grid_mix(self, mix: float) -> int:
        """Index of the grid mix (steps of :data:`MIX_STEP`) nearest ``mix``."""
        return int(round(min(max(mix, 0.0), 1.0) / MIX_STEP))

    def _key(self, n: int, grid: int, refit: bool) -> tuple[int, int, bool]:
        return int(n), int(grid) if self.mix_adjusted else 0, bool(refit and self.mix_adjusted)

    def null(self, n: int, grid: int = 0, *, refit: bool = True) -> tuple[float, float, float]:
        """``(feature scale, intensity scale, threshold)`` for batches of ``n`` at grid mix ``grid * MIX_STEP``:
        the null 95th percentiles of the two MMDs and the ``1 - alpha`` quantile of the statistic over bootstrap
        batches of the validation films, stratified at that mix (uniform without labels), each tested at its own
        best-fitting mix (``refit``) or at the grid mix (for a mix given by the caller). From the stored table
        (interpolated in ``1/n`` between its batch sizes) when it holds it, else from the disk cache, else
        computed (:meth:`compute_null`) and cached."""
        key = self._key(n, grid, refit)
        if key not in self._null:
            if self.table is not None and self.table.covers(*key):
                self._null[key] = self.table.lookup(key[0], key[1])
            elif self._cache is not None and key in self._cache.entries:
                self._null[key] = self._cache.entries[key]
            else:
                self._null[key] = self.compute_null(*key)
                if self._cache is not None:
                    self._cache.entries[key] = self._null[key]
                    self._cache.save(self.constants)
        return self._null[key]

    @property
    def constants(self) -> dict[str, tuple[float, np.ndarray]]:
        """Each MMD's kernel width ``gamma`` and class-by-class kernel means ``G`` (what a table stores)."""
        return {"features": (self._feat.gamma, self._feat.G), "intensity": (self._int.gamma, self._int.G)}

    def compute_null(self, n: int, grid: int = 0, refit: bool = True) -> tuple[float, float, float]:
        """:meth:`null`, computed from the validation films (never from a table or cache): ``n_resamples``
        bootstrap batches drawn with a generator seeded by ``(seed, n, grid)``."""
        n, grid, refit = self._key(n, grid, refit)
        rng = np.random.default_rng(self.seed + n + 1000 * grid)
        if self.mix_adjusted:
            k1 = int(round(n * grid * MIX_STEP))
            draws = ((0, n - k1), (1, k1))
        else:
            draws = ((0, n),)
        counts = np.zeros((self.n_resamples, len(self.reference.val_features)))
        pools = [(self._val_pools[c], len(self._val_pools[c]), k) for c, k in draws if k]
        for r in range(self.n_resamples):  # pool[integers(0, len(pool), k)]: rng.choice(pool, k, replace=True)
            rows = np.concatenate([pool[rng.integers(0, size, k)] for pool, size, k in pools])
            counts[r] = np.bincount(rows, minlength=counts.shape[1])
        (kf, mf), (ki, mi) = self._feat.val_terms(counts), self._int.val_terms(counts)
        if self.mix_adjusted:
            pi = self._feat.best_mix(mf) if refit else np.full(len(counts), grid * MIX_STEP)
            w = np.stack([1.0 - pi, pi], axis=1)
        else:
            w = np.ones((len(counts), 1))
        f, i = self._feat.mmds(kf, mf, w), self._int.mmds(ki, mi, w)
        scale_f, scale_i = max(float(np.quantile(f, 0.95)), 1e-12), max(float(np.quantile(i, 0.95)), 1e-12)
        stat = np.maximum(f / scale_f, i / scale_i)
        return scale_f, scale_i, float(np.quantile(stat, 1.0 - self.alpha))

    def null_table(self) -> dict[str, Any]:
        """The null at every batch size of :func:`pneumoscan.gate.drift_null.table_sizes` and every grid mix (the
        mix refitted on each null batch; one column without labels), as the JSON a reference stores under
        ``drift_null``; computed afresh."""
        t0 = time.perf_counter()
        sizes = table_sizes(self.max_batch, MIN_IMAGES)
        grids = range(int(round(1 / MIX_STEP)) + 1) if self.mix_adjusted else range(1)
        nulls = [[self.compute_null(n, g, True) for g in grids] for n in sizes]
        params = {"alpha": self.alpha, "n_resamples": self.n_resamples, "seed": self.seed, "max_batch": self.max_batch}
        return table_doc(self.identity, params, sizes, nulls, self.mix_adjusted, self.constants,
                         time.perf_counter() - t0)

    def test(self, features: np.ndarray, descriptors: np.ndarray, *, flag_rate: float | None = None,
             mix: float | None = None) -> DriftResult:
        """Test a batch: pooled features ``(N, C)`` and intensity descriptors ``(N, 7)`` of its in-scope images
        (``flag_rate``: the share of them flagged PNEUMONIA, reported beside the verdict; ``mix``: the caller's
        estimate of the batch's share of pneumonia, in [0, 1], instead of the best-fitting one).

        Raises:
            NotEnoughImagesError: fewer than :data:`MIN_IMAGES` images.
            ValueError: ``mix`` outside [0, 1].
        """
        n = len(features)
        if n < MIN_IMAGES:
            raise NotEnoughImagesError(f"a drift check needs at least {MIN_IMAGES} in-scope images, got {n}")
        m = min(n, self.max_batch)
        rows = np.sort(np.random.default_rng(self.seed).choice(n, m, replace=False)) if m < n else np.arange(n)
        feat = self._feat.terms(l2_normalize(np.asarray(features)[rows]))
        inten = self._int.terms(self._z(np.asarray(descriptors)[rows]))
        return self._verdict(n, m, feat, inten, mix, flag_rate)

    def _verdict(self, n: int, m: int, feat: tuple[float, np.ndarray], inten: tuple[float, np.ndarray],
                 mix: float | None, flag_rate: float | None) -> DriftResult:
        if mix is not None and not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be a share of pneumonia in [0, 1], got {mix}")
        f, i, pi = self._components(feat, inten, mix)
        scale_f, scale_i, threshold = self.null(m, self.grid_mix(pi if pi is not None else 0.0), refit=mix is None)
        comp_f, comp_i = f / scale_f, i / scale_i
        statistic = max(comp_f, comp_i)
        method = (_METHOD_FALLBACK if pi is None else
                  _METHOD_MIX.format(how="the mix that fits the batch's features best" if mix is None
                                     else "the mix given by the caller"))
        return DriftResult(bool(statistic > threshold), float(statistic), float(threshold), n, m, float(comp_f),
                           float(comp_i), self.alpha, method=method, flag_rate=flag_rate,
                           reference_prevalence=self.prevalence, estimated_mix=pi)

    def pool(self, features: np.ndarray, descriptors: np.ndarray) -> Callable[..., DriftResult]:
        """For testing many batches drawn from one set of films (benchmarks): the kernel sums of the ``(N, C)``
        features and ``(N, 7)`` descriptors are computed once, and the returned ``test(rows, *, mix=None,
        flag_rate=None)`` gives :meth:`test`'s verdict on the films ``rows`` (repeats allowed, at most
        ``max_batch`` of them) by index lookups."""
        parts = []
        for mmd, x in ((self._feat, l2_normalize(np.asarray(features))), (self._int, self._z(descriptors))):
            x = np.asarray(x, dtype=np.float64)
            kx = _kernel(mmd.gamma, x, mmd.ref)
            parts.append((_kernel(mmd.gamma, x, x), np.stack([kx[:, a].mean(1) for a in mmd.groups], axis=1)))

        def test(rows: np.ndarray, *, mix: float | None = None, flag_rate: float | None = None) -> DriftResult:
            rows = np.asarray(rows)
            if not MIN_IMAGES <= len(rows) <= self.max_batch:
                raise ValueError(f"a pooled batch holds {MIN_IMAGES} to {self.max_batch} films, got {len(rows)}")
            (kf, cf), (ki, ci) = parts
            feat = (_within(kf[np.ix_(rows, rows)]), cf[rows].mean(0))
            inten = (_within(ki[np.ix_(rows, rows)]), ci[rows].mean(0))
            return self._verdict(len(rows), len(rows), feat, inten, mix, flag_rate)

        return test
