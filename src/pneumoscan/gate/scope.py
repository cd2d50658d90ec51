"""The out-of-scope gate: is this image a pediatric frontal chest radiograph the model may score at all?

Two verdicts besides "in scope" (``docs/scope_gate.md``, "Two verdicts"):

* **not a chest radiograph** (blank, noise, text, a photograph, CT/MR/ultrasound, another body part, a lateral
  view, an adult by its tags, or image content far beyond anything a chest film gives): refused, decision
  ``OUT_OF_SCOPE``, never PNEUMONIA or NORMAL;
* **a chest radiograph unlike the training films** (its feature distance above the reference's ``knn_cut`` but not
  above its ``refuse_limit``): in scope and **scored**, with the caution
  :data:`~pneumoscan.constants.UNFAMILIAR_CAUTION` (a later period or another site's acquisition chain lands
  here; refusing those children was a false refusal).

Three kinds of evidence, checked in this order, the first that refuses giving the reason a clinician reads:

1. **DICOM metadata**, when present (a missing tag is no reason to refuse): a modality that is not a radiograph,
   a body part that is not the chest, a lateral or oblique view, an adult patient.
2. **Pixel statistics** of the model's input square, before the network is trusted: blank or uniform images,
   noise, images too smooth (gradients, drawings) or with too much fine detail (text, patterns) to be a
   radiograph. Their cut-offs lie well outside the range of all 5,216 training films (measured with
   ``benchmarks/ood_methods.py``; see ``docs/scope_gate.md``).
3. **The model's own features**: the cosine distance from the image's pooled features to its k-th nearest
   training film (:class:`~pneumoscan.gate.reference.Reference`): above ``knn_cut`` (at most 1% of held-out
   training films lie there) the film is cautioned; above ``refuse_limit`` (the reference's ``refuse_cut``, chosen
   between the chest films and the non-chest images we have) it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumoscan.constants import OUT_OF_SCOPE, UNFAMILIAR_CAUTION  # the refused decision; the caution
from pneumoscan.io import ImageContext
from pneumoscan.gate.reference import Reference

__all__ = ["ADULT_AGE_YEARS", "FEATURE_REASON", "OUT_OF_SCOPE", "UNFAMILIAR_CAUTION", "PixelStats", "ScopeGate",
           "ScopeResult", "metadata_reason", "pixel_reason", "pixel_stats"]

#: Patients this old or older are adults (configurable per gate).
ADULT_AGE_YEARS = 18.0

#: Modalities that are not projection radiographs (CR, DX, RG and secondary captures of films pass).
_NOT_RADIOGRAPH = frozenset({"CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "OCT", "OP", "ES", "SM", "IVUS", "ECG",
                             "SR", "DOC", "PR", "SEG", "RTIMAGE", "RTDOSE", "RTSTRUCT", "RTPLAN", "XC", "GM", "BMD",
                             "IO", "PX", "DG", "EPS", "HD", "KO", "REG"})
_CHEST = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "PEDIATRIC_CHEST"})
_LATERAL = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
_OBLIQUE = frozenset({"LAO", "RAO", "LPO", "RPO", "OBL", "OBLIQUE"})

#: Pixel-statistic cut-offs. On the 5,216 training films (160 px squares) the standard deviation is at least 19.6,
#: the neighbour correlation at least 0.934 and the mean absolute Laplacian between 2.09 and 13.54.
MIN_STD = 8.0
MIN_NEIGHBOUR_CORRELATION = 0.80
MIN_LAPLACIAN = 1.2
MAX_LAPLACIAN = 25.0
#: Why the feature check refuses: the content is farther from every training film than any chest film measured.
FEATURE_REASON = "not recognised as a chest radiograph (image content far from every training film)"


@dataclass(frozen=True)
class ScopeResult:
    """``in_scope``; ``reason`` (empty when in scope) in words a clinician understands; ``ood_score`` (the feature
    distance, None when not computed); ``evidence`` names which check refused (metadata, pixels, features);
    ``caution`` (in scope only) is :data:`UNFAMILIAR_CAUTION` for a chest film unlike the training films."""

    in_scope: bool
    reason: str = ""
    ood_score: float | None = None
    evidence: str = ""
    caution: str = ""

    def __post_init__(self) -> None:
        if self.caution and not self.in_scope:
            raise ValueError("only a film in scope carries a caution; a refused one has a reason")


@dataclass(frozen=True)
class PixelStats:
    """Statistics of a model-input square (uint8)."""

    std: float
    neighbour_correlation: float
    laplacian: float


def pixel_stats(square: np.ndarray) -> PixelStats:
    """Standard deviation, horizontal neighbour correlation and mean absolute Laplacian of a ``(S, S) uint8``."""
    x = np.asarray(square, dtype=np.float64)
    std = float(x.std())
    a, b = x[:, :-1].ravel(), x[:, 1:].ravel()
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 1.0
    lap = float(np.abs(4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]).mean())
    return PixelStats(std, corr, lap)


def pixel_reason(square: np.ndarray) -> str:
    """Why the pixels cannot be a radiograph, or ``""``."""
    s = pixel_stats(square)
    if s.std < MIN_STD:
        return "blank or uniform image"
    if s.neighbour_correlation < MIN_NEIGHBOUR_CORRELATION:
        return "image looks like noise or text, not a radiograph"
    if s.laplacian < MIN_LAPLACIAN:
        return "image too smooth to be a radiograph (a gradient or a drawing)"
    if s.laplacian > MAX_LAPLACIAN:
        return "image has too much fine detail to be a radiograph (text, a pattern or noise)"
    return ""


def metadata_reason(ctx: ImageContext | None, adult_age_years: float = ADULT_AGE_YEARS) -> str:
    """Why the DICOM header says this is not a pediatric frontal chest radiograph, or ``""`` (also when absent)."""
    if ctx is None or ctx.format != "DICOM":
        return ""
    modality = ctx.modality.upper()
    if modality in _NOT_RADIOGRAPH:
        return f"not a chest radiograph (DICOM Modality {ctx.modality})"
    body = ctx.body_part.upper().replace(" ", "_")
    if body and body not in _CHEST:
        return f"not the chest (DICOM BodyPartExamined {ctx.body_part})"
    view = ctx.view.upper()
    if view in _LATERAL:
        return f"lateral view (DICOM ViewPosition {ctx.view})"
    if view in _OBLIQUE:
        return f"oblique view (DICOM ViewPosition {ctx.view})"
    age = ctx.age_years()
    if age is not None and age >= adult_age_years:
        if ctx.age_source().startswith("PatientAge"):
            return f"adult patient (DICOM PatientAge {ctx.age.strip()})"
        return f"adult patient ({age:.0f} years from DICOM PatientBirthDate and StudyDate)"
    return ""


class ScopeGate:
    """The gate for one model: metadata, pixels, then features against ``reference`` (None: no feature check):
    refused above ``reference.refuse_limit``, scored with :data:`UNFAMILIAR_CAUTION` above ``reference.knn_cut``."""

    def __init__(self, reference: Reference | None, *, adult_age_years: float = ADULT_AGE_YEARS) -> None:
        if not adult_age_years > 0:
            raise ValueError(f"adult_age_years must be positive, got {adult_age_years}")
        self.reference = reference
        self.adult_age_years = float(adult_age_years)

    def assess(self, ctx: ImageContext | None, square: np.ndarray, features: np.ndarray | None, *,
               ood_score: float | None = None) -> ScopeResult:
        """Judge one image: its context, its model-input square ``(S, S) uint8`` and its pooled features ``(C,)``
        (``ood_score``: their :meth:`~pneumoscan.gate.reference.Reference.ood_scores` when the caller computed it
        for a whole batch at once)."""
        reason = metadata_reason(ctx, self.adult_age_years)
        if reason:
            return ScopeResult(False, reason, evidence="metadata")
        reason = pixel_reason(square)
        if reason:
            return ScopeResult(False, reason, evidence="pixels")
        if self.reference is None or features is None:
            return ScopeResult(True)
        score = (float(self.reference.ood_scores(np.asarray(features)[None, :])[0]) if ood_score is None
                 else float(ood_score))
        if score > self.reference.refuse_limit:
            return ScopeResult(False, FEATURE_REASON, score, "features")
        if score > self.reference.knn_cut:
            return ScopeResult(True, "", score, caution=UNFAMILIAR_CAUTION)
        return ScopeResult(True, "", score)
