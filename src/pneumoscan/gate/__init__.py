"""Is this film ours? The checks every image passes before, and beside, its score (no torch).

* :mod:`.scope`: the out-of-scope gate (DICOM header, pixel statistics, the model's own features against the
  reference): an image that is not a pediatric frontal chest radiograph is not assessed.
* :mod:`.drift`: the drift check, a batch (or rolling window) of in-scope films against the reference; its null
  distribution is computed once with the reference and looked up at run time (:mod:`.drift_null`).
* :mod:`.reference`: the reference of training films as it is used at run time (reading it from a checkpoint,
  descriptors, distances); building one is :mod:`pneumoscan.onboarding.reference_builder`'s business.
"""

from __future__ import annotations

from pneumoscan.gate.drift import MIN_IMAGES, DriftCheck, DriftResult, NotEnoughImagesError
from pneumoscan.gate.reference import Reference, intensity_descriptors, reference_of
from pneumoscan.gate.scope import ADULT_AGE_YEARS, OUT_OF_SCOPE, ScopeGate, ScopeResult

__all__ = ["ADULT_AGE_YEARS", "MIN_IMAGES", "OUT_OF_SCOPE", "DriftCheck", "DriftResult", "NotEnoughImagesError",
           "Reference", "ScopeGate", "ScopeResult", "intensity_descriptors", "reference_of"]
