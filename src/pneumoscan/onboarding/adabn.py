"""The two unlabelled-data methods of ``pneumoscan adapt``: BatchNorm re-estimation (AdaBN, plain or class-balanced)
and the site's case mix (EM, checked by black-box shift estimation and a bootstrap).

Why class-balanced: a BatchNorm layer's running mean and variance describe the mix of films it was estimated on.
The training statistics describe the training mix (77% pneumonia for the shipped model); plain AdaBN on a site
with 20% pneumonia re-centres every layer on mostly normal films, which moves the normal films towards the
pneumonia side (measured in issue #26: specificity 0.670 against 0.714 without adaptation). Test-time BatchNorm
adaptation is known to fail under label shift for this reason. :func:`class_balanced_adabn` weighs each film by
``w(x) = sum_y P_site(y | x) * pi_train(y) / pi_site(y)`` (the label-shift importance weight), so that the weighted
site films have the training mix and the re-estimated statistics change only with the acquisition, not with the
case mix. ``P_site(y | x)`` and ``pi_site`` come from EM (Saerens et al., 2002) on the model's own scores; the
estimate is refined once on the re-normalised model (whose scores are again calibrated to the training mix).

The estimate of the mix is checked three ways (:func:`mix_check`): EM against black-box shift estimation (BBSE,
Lipton et al., 2018: the flag rate at the validation's Youden threshold corrected by that threshold's validation
sensitivity and specificity), a patient-free bootstrap interval of the EM estimate, and the change of the estimate
between the unadapted and the re-normalised model. When they disagree the estimate is called unreliable, and
``adapt`` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumoscan.errors import PneumoscanError
from pneumoscan.preprocessing import Preprocessing, cached_rows_to_unit, check_model_input, normalize

__all__ = [
    "MIX_MAX_BOOTSTRAP_WIDTH",
    "MIX_MAX_DISAGREEMENT",
    "AdaptationError",
    "BalancedAdaBN",
    "EMPrevalence",
    "MixCheck",
    "adabn",
    "batchnorm_layers",
    "bbse_prevalence",
    "class_balanced_adabn",
    "em_prevalence",
    "label_shift_weights",
    "mix_check",
]

#: An estimate of the site's share of pneumonia is called unreliable when two of its estimates (EM, BBSE, EM
#: before and after re-normalisation) differ by more than this, or when its bootstrap 95% interval is wider than
#: :data:`MIX_MAX_BOOTSTRAP_WIDTH`.
MIX_MAX_DISAGREEMENT = 0.10
MIX_MAX_BOOTSTRAP_WIDTH = 0.20
#: Weights are clipped to this range (relative to 1): a site estimated at 1% pneumonia would otherwise give its
#: few pneumonia-like films a weight of 77 and the statistics would rest on them.
MAX_WEIGHT_RATIO = 10.0


class AdaptationError(PneumoscanError, ValueError):
    """The model or the site's films cannot be used for adaptation; the message says why and what to do."""


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics (what AdaBN re-estimates)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Equal-size batches of ``range(n)`` (never a batch of one)."""
    return np.array_split(np.arange(n), max(1, min(int(np.ceil(n / max(1, batch_size))), n // 2)))


@torch.no_grad()
def adabn(model: nn.Module, images: np.ndarray, spec: Preprocessing, *, weights: np.ndarray | None = None,
          batch_size: int = 32, device: torch.device | str = "cpu", seed: int | None = None) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``images`` (AdaBN), in place.

    ``images``: ``(N, S, S) uint8`` squares at the model's input size (intensity 0..255), normalised here as
    ``spec`` says. ``seed``: shuffle the films (seeded) before cutting batches, so that no batch holds one class
    only when the films arrive sorted by class folder; None keeps their order.

    ``weights`` None: the statistics are reset, then averaged over batches of (nearly) equal size (``momentum=None``,
    a cumulative average), with only the BatchNorm layers in training mode (dropout off), no gradients.

    ``weights`` given (``(N,)``, non-negative, not all 0): each film counts in proportion to its weight. Every
    BatchNorm normalises its batch with the batch's weighted mean and (biased) variance, as it would a batch in
    which each film appeared as often as its weight says, and the running statistics become the weighted mean and
    variance over all the films (the variance times ``m / (m - 1)``, ``m`` the values per channel, as torch
    stores it). With integer weights and one batch this is exactly plain AdaBN on the batch with each film
    repeated ``weight`` times (up to that factor).

    Nothing else in the model changes; it is left in eval mode. Returns the number of BatchNorm layers re-estimated.

    Raises:
        AdaptationError: no BatchNorm layer with running statistics, fewer than 2 images, or bad weights.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise AdaptationError("the model has no BatchNorm layer, so there are no normalisation statistics to "
                              "re-estimate")
    n = len(images)
    if n < 2:
        raise AdaptationError(f"AdaBN needs at least 2 images, got {n}")
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise AdaptationError(f"AdaBN weights must be {n} finite non-negative numbers, not all 0")
        _weighted_adabn(model, layers, images, spec, w, order, batch_size, device)
        return len(layers)
    momenta = [bn.momentum for bn in layers]
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        for rows in _batches(n, batch_size):  # equal-size batches: the cumulative average weighs batches
            x = normalize(cached_rows_to_unit(images, order[rows]), spec)
            check_model_input(x, spec)
            model(x.to(device))
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        model.eval()
    return len(layers)


def _weighted_adabn(model: nn.Module, layers: list[nn.modules.batchnorm._BatchNorm], images: np.ndarray,
                    spec: Preprocessing, w: np.ndarray, order: np.ndarray, batch_size: int,
                    device: torch.device | str) -> None:
    """:func:`adabn` with per-film weights: each BatchNorm's forward replaced, for the passes, by a weighted one."""
    sums: dict[int, list[Any]] = {id(bn): [0.0, 0.0, 0.0, 0] for bn in layers}  # sum w*mean, sum w*E[x^2], sum w, m
    current: dict[str, torch.Tensor] = {}

    def weighted_forward(bn: nn.modules.batchnorm._BatchNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            wb = current["w"]
            dims = [0] + list(range(2, x.ndim))
            shape = [1, -1] + [1] * (x.ndim - 2)
            per_film = x.mean(dim=dims[1:]) if x.ndim > 2 else x  # (B, C)
            total = wb.sum()
            mean = (wb[:, None] * per_film).sum(0) / total
            centred = x - mean.view(shape)
            sq = (centred * centred).mean(dim=dims[1:]) if x.ndim > 2 else centred * centred
            var = (wb[:, None] * sq).sum(0) / total
            acc = sums[id(bn)]
            acc[0] = acc[0] + total.double() * mean.double()
            acc[1] = acc[1] + total.double() * (var.double() + mean.double() ** 2)
            acc[2] = acc[2] + total.double()
            acc[3] += int(x.numel() // x.shape[1])
            out = centred / torch.sqrt(var.view(shape) + bn.eps)
            if bn.affine:
                out = out * bn.weight.view(shape) + bn.bias.view(shape)
            return out
        return forward

    model.eval()
    for bn in layers:
        bn.forward = weighted_forward(bn)  # type: ignore[method-assign]  # an instance attribute, removed below
    try:
        for rows in _batches(len(images), batch_size):
            idx = order[rows]
            current["w"] = torch.as_tensor(w[idx], dtype=torch.float32, device=device)
            if float(current["w"].sum()) <= 0:
                continue  # a batch of films weighted 0 tells nothing
            x = normalize(cached_rows_to_unit(images, idx), spec)
            check_model_input(x, spec)
            model(x.to(device))
    finally:
        for bn in layers:
            del bn.forward
        model.eval()
    for bn in layers:
        s1, s2, total, m = sums[id(bn)]
        mean = s1 / total
        var = torch.clamp(s2 / total - mean ** 2, min=0.0) * (m / max(1, m - 1))
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.fill_(len(_batches(len(images), batch_size)))


# ----------------------------------------------------------------------------- the mix


@dataclass(frozen=True)
class EMPrevalence:
    """The result of :func:`em_prevalence`: the estimated prevalence in [0, 1], the iterations run, and whether
    the change fell below the tolerance."""

    prevalence: float
    iterations: int
    converged: bool


def em_prevalence(probabilities: np.ndarray, training_prevalence: float, *, tol: float = 1e-6,
                  max_iter: int = 1000) -> EMPrevalence:
    """The prevalence of the positive class among unlabelled images, by EM (Saerens et al., 2002).

    ``probabilities``: calibrated posteriors P(pneumonia | image), in [0, 1], of a model whose training prior was
    ``training_prevalence`` (in (0, 1)). Each step re-weights the posteriors to the current prior estimate
    ``pi`` (``w1 = pi / pi_train``, ``w0 = (1 - pi) / (1 - pi_train)``, ``q = w1 p / (w1 p + w0 (1 - p))``) and
    sets ``pi = mean(q)``, from ``pi = training_prevalence`` until it moves less than ``tol``.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 1e-9, 1 - 1e-9)
    if p.size == 0:
        raise ValueError("no probabilities to estimate a prevalence from")
    if not 0.0 < training_prevalence < 1.0:
        raise ValueError(f"the training prevalence must be in (0, 1), got {training_prevalence}")
    pt = float(training_prevalence)
    pi = pt
    for it in range(1, max_iter + 1):
        new = float(np.mean(_reprior(p, pt, pi)))
        if abs(new - pi) < tol:
            return EMPrevalence(new, it, True)
        pi = new
    return EMPrevalence(pi, max_iter, False)


def _reprior(p: np.ndarray, old: float, new: float) -> np.ndarray:
    """Posteriors ``p`` computed under the prior ``old``, moved to the prior ``new`` (Bayes' rule)."""
    w1, w0 = new / old, (1.0 - new) / (1.0 - old)
    return w1 * p / (w1 * p + w0 * (1.0 - p))


def bbse_prevalence(flag_rate: float, sensitivity: float, specificity: float) -> float | None:
    """Black-box shift estimation with hard decisions (Lipton et al., 2018): the prevalence that explains the
    share ``flag_rate`` flagged, given the threshold's sensitivity and specificity (measured on the model's
    validation films): ``(flag_rate - FPR) / (TPR - FPR)``, clipped to [0, 1]. None when ``TPR <= FPR``."""
    fpr = 1.0 - float(specificity)
    gap = float(sensitivity) - fpr
    if not gap > 0:
        return None
    return float(min(1.0, max(0.0, (float(flag_rate) - fpr) / gap)))


def label_shift_weights(probabilities: np.ndarray, training_prevalence: float, site_prevalence: float, *,
                        target_prevalence: float | None = None, max_ratio: float = MAX_WEIGHT_RATIO) -> np.ndarray:
    """Per-film weights that give the site's films the ``target_prevalence`` (default: the training one).

    ``probabilities`` are calibrated to the training prior; they are first moved to the site's prior
    (``site_prevalence``), giving ``q = P_site(pneumonia | x)``; the weight is then
    ``q * target / site + (1 - q) * (1 - target) / (1 - site)`` (the label-shift importance weight
    ``p_target(x) / p_site(x)``), clipped to ``[1 / max_ratio, max_ratio]`` and scaled to mean 1.
    """
    target = float(training_prevalence if target_prevalence is None else target_prevalence)
    site = float(min(1 - 1e-3, max(1e-3, site_prevalence)))
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 1e-9, 1 - 1e-9)
    q = _reprior(p, float(training_prevalence), site)
    w = np.clip(q * target / site + (1.0 - q) * (1.0 - target) / (1.0 - site), 1.0 / max_ratio, max_ratio)
    return w / w.mean()


@dataclass
class MixCheck:
    """The estimate of the site's share of pneumonia and how far it can be trusted (see :func:`mix_check`)."""

    prevalence: float
    bootstrap_ci: list[float]
    bbse: float | None
    em_adapted: float | None
    reliable: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"prevalence": self.prevalence, "method": "EM on the unadapted model's calibrated probabilities "
                "(Saerens et al., 2002)", "bootstrap_ci": self.bootstrap_ci, "bbse": self.bbse,
                "em_adapted": self.em_adapted, "reliable": self.reliable, "reasons": list(self.reasons),
                "max_disagreement": MIX_MAX_DISAGREEMENT, "max_bootstrap_width": MIX_MAX_BOOTSTRAP_WIDTH}


def mix_check(probs_parent: np.ndarray, training_prevalence: float, *, probs_adapted: np.ndarray | None = None,
              bbse_threshold: float | None = None, bbse_sensitivity: float | None = None,
              bbse_specificity: float | None = None, n_boot: int = 500, seed: int = 0) -> MixCheck:
    """The site's share of pneumonia and whether it is reliable.

    The estimate is EM on the unadapted model's probabilities ``probs_parent`` (calibrated to the training mix on
    training-like films; re-estimated statistics lower the scores, so EM on the adapted model's probabilities is
    biased low: it is reported as ``em_adapted``, not used). Two checks: BBSE (:func:`bbse_prevalence`) on the
    adapted model's probabilities at ``bbse_threshold`` with that threshold's validation sensitivity and
    specificity (its normalisation, and so its error rates, are the training films' again) must agree within
    :data:`MIX_MAX_DISAGREEMENT`; and the bootstrap 95% interval of the EM estimate (``n_boot`` resamples of the
    films, seeded) must be at most :data:`MIX_MAX_BOOTSTRAP_WIDTH` wide. The reasons say which check failed.
    """
    pp = np.asarray(probs_parent, dtype=np.float64)
    em = em_prevalence(pp, training_prevalence).prevalence
    em_adapted = bbse = None
    if probs_adapted is not None:
        pa = np.asarray(probs_adapted, dtype=np.float64)
        em_adapted = em_prevalence(pa, training_prevalence).prevalence
        if None not in (bbse_threshold, bbse_sensitivity, bbse_specificity):
            bbse = bbse_prevalence(float(np.mean(pa >= float(bbse_threshold))),  # type: ignore[arg-type]
                                   float(bbse_sensitivity), float(bbse_specificity))  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    boot = [em_prevalence(pp[rng.integers(0, pp.size, pp.size)], training_prevalence, tol=1e-5).prevalence
            for _ in range(n_boot)]
    ci = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    reasons = []
    if bbse is not None and abs(em - bbse) > MIX_MAX_DISAGREEMENT:
        reasons.append(f"EM gives {em:.0%} but the adapted model's flag rate at the validation's Youden threshold "
                       f"gives {bbse:.0%} (BBSE)")
    if ci[1] - ci[0] > MIX_MAX_BOOTSTRAP_WIDTH:
        reasons.append(f"its bootstrap 95% interval is wide ({ci[0]:.0%} to {ci[1]:.0%})")
    return MixCheck(prevalence=em, bootstrap_ci=ci, bbse=bbse, em_adapted=em_adapted, reliable=not reasons,
                    reasons=reasons)


# ----------------------------------------------------------------------------- class-balanced AdaBN


@dataclass
class BalancedAdaBN:
    """What :func:`class_balanced_adabn` did: the site prevalence the weights assume, the weights (mean 1) and
    their effective sample size ``(sum w)^2 / sum w^2``."""

    prevalence: float
    weights: np.ndarray
    effective_n: float


def class_balanced_adabn(model: nn.Module, images: np.ndarray, spec: Preprocessing, *, parent_probs: np.ndarray,
                         training_prevalence: float, site_prevalence: float | None = None, batch_size: int = 32,
                         device: torch.device | str = "cpu", seed: int | None = 0) -> BalancedAdaBN:
    """AdaBN with each film weighted so that the site's films have the training mix (see the module docstring).

    ``parent_probs``: the unadapted model's calibrated probabilities of ``images``. The site's prevalence is
    ``site_prevalence``, or EM on them; the films are weighted with :func:`label_shift_weights` and the statistics
    re-estimated (:func:`adabn` with weights, films shuffled with ``seed``).
    """
    probs = np.asarray(parent_probs, dtype=np.float64)
    pi = em_prevalence(probs, training_prevalence).prevalence if site_prevalence is None else float(site_prevalence)
    w = label_shift_weights(probs, training_prevalence, pi)
    adabn(model, images, spec, weights=w, batch_size=batch_size, device=device, seed=seed)
    return BalancedAdaBN(prevalence=pi, weights=w, effective_n=float(w.sum() ** 2 / np.sum(w ** 2)))
