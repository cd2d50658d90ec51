"""The Structured Report of one image's result (highdicom Comprehensive 3D SR, TID 1500)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pneumoscan import __version__
from pneumoscan.constants import CAUSE_CAVEAT, DISCLAIMER
from pneumoscan.dicom_out.source import (
    CODING_SCHEME,
    CODING_SCHEME_NAME,
    CODING_SCHEME_ORGANIZATION,
    CODING_SCHEME_UID,
    CODING_SCHEME_VERSION,
    MANUFACTURER,
    SR_SERIES_NUMBER,
    DicomOutputError,
    checked_source,
    new_uid,
    put_back,
)

if TYPE_CHECKING:
    import pydicom

    from pneumoscan.result import Result

__all__ = ["make_sr"]


def _codes() -> dict[str, Any]:
    from highdicom.sr import CodedConcept

    local = {
        "probability": ("PNEUMONIA-P", "Pneumonia probability"),
        "threshold": ("OPERATING-THR", "Operating threshold"),
        "in_scope": ("IN-SCOPE", "Within intended use"),
        "scope_reason": ("SCOPE-REASON", "Reason not assessed"),
        "scope_caution": ("SCOPE-CAUTION", "Caution: unfamiliar film"),
        "decision_text": ("DECISION", "Triage decision"),
        "disclaimer": ("DISCLAIMER", "Decision support disclaimer"),
        "not_assessed": ("NOT-ASSESSED", "Not assessed: outside intended use"),
        "cause_probability": ("VIRAL-P", "Viral pattern probability"),
        "cause_threshold": ("CAUSE-THR", "Cause operating threshold"),
        "cause_text": ("CAUSE", "Pattern more like"),
        "cause_caveat": ("CAUSE-CAVEAT", "Cause caveat"),
        "score_calibration": ("SCORE-CALIBRATION", "Where the probability was calibrated"),
    }
    out = {k: CodedConcept(v, CODING_SCHEME, m) for k, (v, m) in local.items()}
    out.update(
        pneumonia=CodedConcept("233604007", "SCT", "Pneumonia"),
        bacterial=CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
        viral=CodedConcept("75570004", "SCT", "Viral pneumonia"),
        normal=CodedConcept("17621005", "SCT", "Normal"),
        yes=CodedConcept("373066001", "SCT", "Yes"),
        no=CodedConcept("373067005", "SCT", "No"),
        chest_xray=CodedConcept("399208008", "SCT", "Plain X-ray of chest"),
        unit=CodedConcept("{probability}", "UCUM", "probability"),
    )
    return out


def make_sr(source: pydicom.Dataset, result: Result, *, series_number: int = SR_SERIES_NUMBER) -> pydicom.Dataset:
    """A Comprehensive 3D SR of one image's :class:`~pneumoscan.result.Result`, in the source's study (new series,
    new instance).

    Args:
        source: the scored image's data set (its header is enough); needs its SOP Class/Instance, Study and Series
            Instance UIDs.
        result: the image's result, read as it is (the decision is the result's: nothing here decides). Its
            probability is left out when the image was not assessed (out of scope); the algorithm identification is
            its model's (``pneumoscan <name>``, the model's version).

    Returns:
        a :class:`highdicom.sr.Comprehensive3DSR` (a pydicom Dataset, ready to save).

    Raises:
        DicomOutputError: the source lacks a needed UID, highdicom refused the content, or the result is of a file
            that could not be read (it has no decision to report).
    """
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes as dcm_codes

    if not result.read:
        raise DicomOutputError(f"{result.source}: the file could not be read, so there is no result to report")
    probability, threshold, in_scope = result.probability, result.threshold, bool(result.in_scope)
    model_name, model_version, decision = result.model.name, result.model.version, result.decision
    ds, kept = checked_source(source)
    c = _codes()
    try:
        algorithm = hd.sr.AlgorithmIdentification(name=f"pneumoscan {model_name}"[:64], version=str(model_version)[:64])
        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=new_uid(["pneumoscan", str(model_name), str(model_version)]),
            name="pneumoscan", manufacturer_name=MANUFACTURER, model_name=str(model_name)[:64])
        context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.DCM.Device, observer_identifying_attributes=device))
        measurements = [hd.sr.Measurement(name=c["threshold"], value=float(threshold), unit=c["unit"])]
        if in_scope:  # out of scope the probability is for audit only: a viewer would show it as a risk
            measurements.insert(0, hd.sr.Measurement(name=c["probability"], value=float(probability), unit=c["unit"]))
        finding = {"PNEUMONIA": c["pneumonia"], "NORMAL": c["normal"], "OUT_OF_SCOPE": c["not_assessed"]}[decision]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier="pneumonia triage"),
            finding_type=finding,
            algorithm_id=algorithm,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)],
            measurements=measurements,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=c["in_scope"],
                                                                 value=c["yes"] if in_scope else c["no"])],
        )
        texts = [(c["decision_text"], decision), (c["disclaimer"], DISCLAIMER)]
        if not in_scope:
            texts.insert(1, (c["scope_reason"], result.scope_reason or "outside the intended use"))
        else:
            if result.model.calibration:  # beside the probability: what its scale rests on
                texts.insert(1, (c["score_calibration"], result.model.calibration))
            if result.scope_caution:  # a chest film unlike the training films: scored, read with caution
                texts.insert(1, (c["scope_caution"], result.scope_caution))
        for name, value in texts:  # TEXT items of the group (CONTAINS), after its measurements and evaluations
            group[0].ContentSequence.append(hd.sr.TextContentItem(name=name, value=value, relationship_type="CONTAINS"))
        groups = [group]
        if result.cause:  # the second question, only for a flagged film: a coded finding under the main one
            cause_group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier="pneumonia cause"),
                finding_type=c["viral"] if result.cause == "VIRAL" else c["bacterial"],
                algorithm_id=algorithm,
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)],
                measurements=[hd.sr.Measurement(name=c["cause_probability"], value=float(result.cause_probability),
                                                unit=c["unit"]),
                              hd.sr.Measurement(name=c["cause_threshold"], value=float(result.model.cause_threshold),
                                                unit=c["unit"])],
            )
            for name, value in ((c["cause_text"], result.cause_text), (c["cause_caveat"], CAUSE_CAVEAT)):
                cause_group[0].ContentSequence.append(hd.sr.TextContentItem(name=name, value=value,
                                                                            relationship_type="CONTAINS"))
            groups.append(cause_group)
        report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=c["chest_xray"],
                                         imaging_measurements=groups)
        sr = hd.sr.Comprehensive3DSR(
            evidence=[ds], content=report, series_instance_uid=new_uid(), series_number=int(series_number),
            sop_instance_uid=new_uid(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
            is_final=False, is_verified=False, series_description="pneumoscan pneumonia triage (decision support)",
            manufacturer_model_name=f"pneumoscan {model_name}"[:64],
            software_versions=f"pneumoscan {__version__}; model {model_version}"[:64],
            coding_schemes=[CodingSchemeIdentificationItem(
                designator=CODING_SCHEME, name=CODING_SCHEME_NAME, version=CODING_SCHEME_VERSION,
                uid=CODING_SCHEME_UID, responsible_organization=CODING_SCHEME_ORGANIZATION)],
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutputError(f"a structured report could not be made for this image: {exc}") from exc
    # Type 1C for a scheme identified by an OID (PS3.3 C.12.1); highdicom writes it only for a registered scheme
    sr.CodingSchemeIdentificationSequence[0].CodingSchemeUID = CODING_SCHEME_UID
    put_back(sr, kept)
    return sr


