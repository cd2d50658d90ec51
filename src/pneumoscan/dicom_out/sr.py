"""The Structured Report of one image's result (highdicom Comprehensive 3D SR, TID 1500)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pneumoscan import __version__
from pneumoscan.constants import DISCLAIMER
from pneumoscan.dicom_out.source import (
    CODING_SCHEME,
    DECISIONS,
    MANUFACTURER,
    SR_SERIES_NUMBER,
    DicomOutputError,
    checked_source,
    put_back,
)

if TYPE_CHECKING:
    import pydicom

__all__ = ["make_sr"]


def _codes() -> dict[str, Any]:
    from highdicom.sr import CodedConcept

    local = {
        "probability": ("PNEUMONIA-P", "Pneumonia probability"),
        "threshold": ("OPERATING-THR", "Operating threshold"),
        "in_scope": ("IN-SCOPE", "Within intended use"),
        "scope_reason": ("SCOPE-REASON", "Reason not assessed"),
        "decision_text": ("DECISION", "Triage decision"),
        "disclaimer": ("DISCLAIMER", "Decision support disclaimer"),
        "not_assessed": ("NOT-ASSESSED", "Not assessed: outside intended use"),
    }
    out = {k: CodedConcept(v, CODING_SCHEME, m) for k, (v, m) in local.items()}
    out.update(
        pneumonia=CodedConcept("233604007", "SCT", "Pneumonia"),
        normal=CodedConcept("17621005", "SCT", "Normal"),
        yes=CodedConcept("373066001", "SCT", "Yes"),
        no=CodedConcept("373067005", "SCT", "No"),
        chest_xray=CodedConcept("399208008", "SCT", "Plain X-ray of chest"),
        unit=CodedConcept("{probability}", "UCUM", "probability"),
    )
    return out




def _check_result(probability: float, decision: str, threshold: float, in_scope: bool) -> None:
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if (decision == "OUT_OF_SCOPE") == bool(in_scope):
        raise ValueError(f"decision {decision} contradicts in_scope={in_scope}: an image out of scope is decided "
                         "OUT_OF_SCOPE, and only such an image")
    for name, value in (("probability", probability), ("threshold", threshold)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def make_sr(source: pydicom.Dataset, *, probability: float, decision: str, threshold: float, in_scope: bool,
            scope_reason: str, model_name: str, model_version: str,
            series_number: int = SR_SERIES_NUMBER) -> pydicom.Dataset:
    """A Comprehensive 3D SR of one image's result, in the source's study (new series, new instance).

    Args:
        source: the scored image's data set (its header is enough); needs its SOP Class/Instance, Study and Series
            Instance UIDs.
        probability: of pneumonia in [0, 1] (left out of the SR when ``in_scope`` is False).
        decision: ``"PNEUMONIA"``, ``"NORMAL"`` or ``"OUT_OF_SCOPE"`` (the latter exactly when not ``in_scope``).
        threshold: the operating threshold the decision used, in [0, 1].
        scope_reason: why the image is out of scope (``""`` in scope).
        model_name, model_version: the algorithm identification (``pneumoscan <model_name>``, ``model_version``).

    Returns:
        a :class:`highdicom.sr.Comprehensive3DSR` (a pydicom Dataset, ready to save).

    Raises:
        DicomOutputError: the source lacks a needed UID, or highdicom refused the content.
        ValueError: an unknown decision, one that contradicts ``in_scope``, or a value outside [0, 1].
    """
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes as dcm_codes
    from pydicom.uid import generate_uid

    _check_result(probability, decision, threshold, in_scope)
    ds, kept = checked_source(source)
    c = _codes()
    try:
        algorithm = hd.sr.AlgorithmIdentification(name=f"pneumoscan {model_name}"[:64], version=str(model_version)[:64])
        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["pneumoscan", str(model_name), str(model_version)]),
            name="pneumoscan", manufacturer_name=MANUFACTURER, model_name=str(model_name)[:64])
        context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.DCM.Device, observer_identifying_attributes=device))
        measurements = [hd.sr.Measurement(name=c["threshold"], value=float(threshold), unit=c["unit"])]
        if in_scope:  # out of scope the probability is for audit only: a viewer would show it as a risk
            measurements.insert(0, hd.sr.Measurement(name=c["probability"], value=float(probability), unit=c["unit"]))
        finding = {"PNEUMONIA": c["pneumonia"], "NORMAL": c["normal"], "OUT_OF_SCOPE": c["not_assessed"]}[decision]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="pneumonia triage"),
            finding_type=finding,
            algorithm_id=algorithm,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)],
            measurements=measurements,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=c["in_scope"],
                                                                 value=c["yes"] if in_scope else c["no"])],
        )
        texts = [(c["decision_text"], decision), (c["disclaimer"], DISCLAIMER)]
        if not in_scope:
            texts.insert(1, (c["scope_reason"], scope_reason or "outside the intended use"))
        for name, value in texts:  # TEXT items of the group (CONTAINS), after its measurements and evaluations
            group[0].ContentSequence.append(hd.sr.TextContentItem(name=name, value=value, relationship_type="CONTAINS"))
        report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=c["chest_xray"],
                                         imaging_measurements=[group])
        sr = hd.sr.Comprehensive3DSR(
            evidence=[ds], content=report, series_instance_uid=generate_uid(), series_number=int(series_number),
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
            is_final=False, is_verified=False, series_description="pneumoscan pneumonia triage (decision support)",
            manufacturer_model_name=f"pneumoscan {model_name}"[:64],
            software_versions=f"pneumoscan {__version__}; model {model_version}"[:64],
            coding_schemes=[CodingSchemeIdentificationItem(designator=CODING_SCHEME,
                                                           name="pneumoscan local concepts")],
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutputError(f"a structured report could not be made for this image: {exc}") from exc
    put_back(sr, kept)
    return sr


