"""The drift check: do a site's images, as a batch, still look like the training data to the model?

The statistic combines two kernel two-sample tests (maximum mean discrepancy, MMD, with a Gaussian kernel whose
width is the median distance in the reference):

* on the model's pooled features (unit length), against the training bank: a site can shift the features the
  decision rests on without its flag rate moving (blur, noise, a different resizing chain...);
* on intensity descriptors of the input squares (percentiles, mean, standard deviation), standardised on the
  training bank: the model is trained to be robust to exposure and contrast, so a site that exposes or windows
  its films differently may not move the features much, yet its scores' calibration can.

Each MMD is divided by its own null 95th percentile, and the statistic is the larger of the two. Its threshold is
the ``1 - alpha`` quantile of the same statistic over bootstrap batches of the same size drawn, with replacement,
from the held-out validation films (in distribution by construction), so a batch like the training data is called
shifted at most ``alpha`` (5%) of the time.

The features also depend on the mix of cases: on the shipped model, 50 consecutive training films that all showed
pneumonia were called shifted. The result therefore reports the batch's flag rate beside the training mix and adds
a caution when their odds differ more than threefold; the check is meant for a site's consecutive, unselected films. (Drawing without replacement from a few hundred films makes the null
too narrow: on synthetic data it flagged 17% of in-distribution batches of 150 drawn against 400 validation
films; with replacement 2-7%, tested in ``tests/test_drift.py``.) Batches larger than ``max_batch`` (500) or the
number of validation films are subsampled (seeded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pneumoscan.gate.reference import Reference, l2_normalize

__all__ = ["MIN_IMAGES", "DriftCheck", "DriftResult", "NotEnoughImagesError"]

#: The fewest in-scope images a drift check accepts.
MIN_IMAGES = 50


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
    method: str = "max of feature and intensity MMD, each over its null 95th percentile; threshold by resampling"
    #: Share of the batch flagged PNEUMONIA, and the share of pneumonia among the reference's validation films
    #: (None when unknown): a very different mix of cases also moves the features (see :attr:`case_mix_note`).
    flag_rate: float | None = None
    reference_prevalence: float | None = None

    @property
    def case_mix_note(self) -> str:
        """A caution when the batch's flag rate is far from the training mix (odds more than 3 times higher or
        lower than those of pneumonia among the validation films); else ``""``."""
        if self.flag_rate is None or self.reference_prevalence is None:
            return ""
        odds = lambda p: min(max(p, 0.01), 0.99) / (1 - min(max(p, 0.01), 0.99))  # noqa: E731
        ratio = odds(self.flag_rate) / odds(self.reference_prevalence)
        if 1 / 3 <= ratio <= 3:
            return ""
        return (f"{self.flag_rate:.0%} of this batch was flagged, against {self.reference_prevalence:.0%} pneumonia "
                "among the validation films: a very different mix of cases also moves this statistic, so check it "
                "on a consecutive, unselected batch before concluding that the films differ")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "case_mix_note": self.case_mix_note}


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


class _MMD:
    """Unbiased MMD² of a sample against a fixed reference sample, Gaussian kernel with the median-heuristic width."""

    def __init__(self, ref: np.ndarray) -> None:
        self.ref = np.asarray(ref, dtype=np.float64)
        sub = self.ref[: min(500, len(self.ref))]
        d = np.sqrt(_sq_dists(sub, sub)[np.triu_indices(len(sub), 1)])
        median = float(np.median(d)) if d.size else 1.0
        self.gamma = 1.0 / (2.0 * max(median, 1e-12) ** 2)
        k = np.exp(-self.gamma * _sq_dists(self.ref, self.ref))
        n = len(self.ref)
        self.ref_term = (k.sum() - np.trace(k)) / (n * (n - 1))

    def __call__(self, x: np.ndarray) -> float:
        x = np.asarray(x, dtype=np.float64)
        n = len(x)
        kxx = np.exp(-self.gamma * _sq_dists(x, x))
        xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        return float(xx + self.ref_term - 2.0 * np.exp(-self.gamma * _sq_dists(x, self.ref)).mean())


class DriftCheck:
    """The drift test against one model's :class:`Reference`; thresholds are computed once per batch size."""

    def __init__(self, reference: Reference, *, alpha: float = 0.05, n_resamples: int = 200, seed: int = 0,
                 max_batch: int = 500, prevalence: float | None = None) -> None:
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
        self._mu = reference.bank_descriptors.mean(0)
        self._sd = reference.bank_descriptors.std(0) + 1e-6
        self._feat = _MMD(reference.bank)
        self._int = _MMD(self._z(reference.bank_descriptors))
        self._null: dict[int, tuple[float, float, float]] = {}

    def _z(self, descriptors: np.ndarray) -> np.ndarray:
        return (np.asarray(descriptors, dtype=np.float64) - self._mu) / self._sd

    def _calibrate(self, n: int) -> tuple[float, float, float]:
        """``(feature scale, intensity scale, threshold)`` for batches of ``n``, from validation resamples."""
        if n not in self._null:
            ref, rng = self.reference, np.random.default_rng(self.seed + n)
            pairs = []
            for _ in range(self.n_resamples):
                rows = rng.choice(len(ref.val_features), n, replace=True)
                pairs.append((self._feat(ref.val_features[rows]), self._int(self._z(ref.val_descriptors[rows]))))
            f, i = np.array(pairs).T
            scale_f, scale_i = max(float(np.quantile(f, 0.95)), 1e-12), max(float(np.quantile(i, 0.95)), 1e-12)
            stat = np.maximum(f / scale_f, i / scale_i)
            self._null[n] = (scale_f, scale_i, float(np.quantile(stat, 1.0 - self.alpha)))
        return self._null[n]

    def test(self, features: np.ndarray, descriptors: np.ndarray, *, flag_rate: float | None = None) -> DriftResult:
        """Test a batch: pooled features ``(N, C)`` and intensity descriptors ``(N, 7)`` of its in-scope images
        (``flag_rate``: the share of them flagged PNEUMONIA, reported beside the verdict).

        Raises:
            NotEnoughImagesError: fewer than :data:`MIN_IMAGES` images.
        """
        n = len(features)
        if n < MIN_IMAGES:
            raise NotEnoughImagesError(f"a drift check needs at least {MIN_IMAGES} in-scope images, got {n}")
        m = min(n, self.max_batch)
        rows = np.sort(np.random.default_rng(self.seed).choice(n, m, replace=False)) if m < n else np.arange(n)
        scale_f, scale_i, threshold = self._calibrate(m)
        comp_f = self._feat(l2_normalize(np.asarray(features)[rows])) / scale_f
        comp_i = self._int(self._z(np.asarray(descriptors)[rows])) / scale_i
        statistic = max(comp_f, comp_i)
        return DriftResult(bool(statistic > threshold), float(statistic), float(threshold), n, m, float(comp_f),
                           float(comp_i), self.alpha, flag_rate=flag_rate, reference_prevalence=self.prevalence)
