"""DICOM results out: a Structured Report and a Secondary Capture per DICOM input, in the input's own study.

Both are made with highdicom (so its checks run while they are built), placed in the source's study (same
StudyInstanceUID) in a new series each, with the source's patient and study modules copied:

* :func:`make_sr`: a Comprehensive 3D SR, TID 1500 Measurement Report with one measurement group (TID 1501) that
  holds the pneumonia probability (NUM, unit ``{probability}``), the operating threshold (NUM), the decision as a
  coded finding (SCT 233604007 Pneumonia, SCT 17621005 Normal, or a local code for "not assessed"), whether the
  image was in scope (CODE yes/no) and why not (TEXT), the algorithm's identification (TID 4019: name
  ``pneumoscan <model>`` and the model's version) and the decision-support disclaimer (TEXT). An image out of
  scope gets no probability in the SR: a PACS viewer would show it as a risk (the worklists keep it, for audit).
  The report is COMPLETE, UNVERIFIED and PRELIMINARY: a clinician's reading is the final one.
* :func:`make_sc`: a Secondary Capture (RGB) of the Grad-CAM overlay with a burned-in caption (score, decision,
  "decision support only"; ``NOT ASSESSED: <reason>`` out of scope) on a band above the film, so the caption hides
  no anatomy; BurnedInAnnotation YES.
* :func:`write_dicom_results`: both, from a source file or its bytes, written as ``<SOPInstanceUID>.dcm``
  atomically, owner-only, never replacing a file; with ``pseudonym_key`` the outputs carry keyed pseudonyms
  (:func:`pseudonymise_dataset`).
* :func:`write_dicom_batch`: what ``predict --dicom-out`` does for a batch of scored files (one file's failure is
  that file's note).

Decision support, not a diagnosis.
"""

from __future__ import annotations

import io
import logging
import math
import os
import secrets
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan import __version__
from pneumoscan.constants import DISCLAIMER
from pneumoscan.errors import PneumoscanError
from pneumoscan.pseudonym import pseudonymise, pseudonymise_uid
from pneumoscan.utils import remove_stale_temps

if TYPE_CHECKING:
    import pydicom

    from pneumoscan.predict import FileResult, Predictor

__all__ = ["CODING_SCHEME", "DECISIONS", "MANUFACTURER", "SC_SERIES_NUMBER", "SR_SERIES_NUMBER", "DicomBatch",
           "DicomOutputError", "caption_for", "make_sc", "make_sr", "pseudonymise_dataset", "read_source",
           "sc_pixels", "write_dataset", "write_dicom_batch", "write_dicom_results"]

log = logging.getLogger(__name__)

#: The local coding scheme of the concepts no standard terminology has (PS3.3: local designators start with 99).
CODING_SCHEME = "99PNEUMOSCAN"
MANUFACTURER = "pneumoscan"
SR_SERIES_NUMBER = 990
SC_SERIES_NUMBER = 991
#: The decisions an SR can carry (:func:`pneumoscan.scoring.decision_label` and the scope gate's).
DECISIONS = ("PNEUMONIA", "NORMAL", "OUT_OF_SCOPE")
#: UIDs a pydicom Dataset needs before highdicom can place a result in its study.
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: Type 2 patient/study attributes highdicom reads from the source; empty when the source lacks them.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")
#: Patient and study attributes that identify someone and have no pseudonym: removed by pseudonymise_dataset.
_IDENTIFYING = ("PatientBirthTime", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
                "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
                "PatientTelecomInformation", "MedicalRecordLocator", "PatientComments", "IssuerOfPatientID",
                "IssuerOfPatientIDQualifiersSequence", "ReferencedPatientSequence", "ReferencedStudySequence",
                "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
                "RequestingPhysician", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
                "AdmittingDiagnosesDescription", "InstitutionName", "InstitutionAddress", "StationName",
                "OperatorsName", "PerformingPhysicianName", "MilitaryRank", "BranchOfService", "Occupation",
                "AdditionalPatientHistory", "PatientInsurancePlanCodeSequence", "IssuerOfAccessionNumberSequence")


class DicomOutputError(PneumoscanError, ValueError):
    """A DICOM result cannot be made or written for this source; the message says which and why."""


# ---------------------------------------------------------------------------------------------- codes


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


# ---------------------------------------------------------------------------------------------- sources


def read_source(source: str | os.PathLike[str] | bytes | pydicom.Dataset, *,
                label: str | None = None) -> pydicom.Dataset:
    """The source image's header (pixel data are not needed and not read) as a pydicom Dataset.

    Raises:
        DicomOutputError: not a DICOM file pydicom can read.
    """
    import pydicom

    if isinstance(source, pydicom.Dataset):
        return source
    name = label or ("<DICOM bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    try:
        fp: Any = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
        return pydicom.dcmread(fp, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises InvalidDicomError, OSError, ValueError, struct.error...
        raise DicomOutputError(f"{name}: not a DICOM file that can be read ({' '.join(str(exc).split())[:200]})") from exc


def _checked_source(source: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of the source without pixel data, with empty values for the Type 2 attributes highdicom reads.

    Raises:
        DicomOutputError: a UID needed to place the result in the source's study is missing.
    """
    missing = [k for k in _REQUIRED if not str(source.get(k, "") or "").strip()]
    if missing:
        raise DicomOutputError(f"the source image has no {', '.join(missing)}, so a result cannot be placed in its "
                               "study; re-export it from the PACS (a PACS always sets them)")
    ds = deepcopy(source)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            del ds[keyword]
    for keyword in _TYPE2:
        if keyword not in ds or ds[keyword].value is None:
            setattr(ds, keyword, "")
    return ds


def pseudonymise_dataset(source: pydicom.Dataset, key: bytes | str) -> pydicom.Dataset:
    """A copy of ``source`` whose identifiers are keyed pseudonyms (:mod:`pneumoscan.pseudonym`), for outputs that
    must not name the patient: PatientID (``anon-`` + 16 hex) and PatientName (the same pseudonym), the study,
    series and instance UIDs (``2.25.`` UIDs: results of one study still share one), AccessionNumber (the
    pseudonym's 16 hex digits: the attribute holds 16 characters); birth date, referring physician and study ID
    emptied; other identifying patient and study attributes removed; PatientIdentityRemoved YES. Age, sex, study
    date and view are kept (the worklists keep them too)."""
    ds = deepcopy(source)
    patient = pseudonymise(str(ds.get("PatientID", "") or ""), key)
    ds.PatientID = patient
    ds.PatientName = f"{patient}^" if patient else ""  # the caret: a family name alone, not a malformed name
    accession = pseudonymise(str(ds.get("AccessionNumber", "") or ""), key)
    ds.AccessionNumber = accession[-16:] if accession else ""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        if keyword in ds and ds[keyword].value:
            setattr(ds, keyword, pseudonymise_uid(str(ds[keyword].value), key))
    if "file_meta" in ds.__dict__ and getattr(ds.file_meta, "MediaStorageSOPInstanceUID", None):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in ("PatientBirthDate", "ReferringPhysicianName", "StudyID"):
        setattr(ds, keyword, "")
    for keyword in _IDENTIFYING:
        if keyword in ds:
            del ds[keyword]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "pneumoscan keyed pseudonyms (HMAC-SHA256)"
    return ds


# ---------------------------------------------------------------------------------------------- SR


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
    ds = _checked_source(source)
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
        return hd.sr.Comprehensive3DSR(
            evidence=[ds], content=report, series_instance_uid=generate_uid(), series_number=int(series_number),
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
            is_final=False, is_verified=False, series_description="pneumoscan pneumonia triage (decision support)",
            manufacturer_model_name=f"pneumoscan {model_name}"[:64],
            software_versions=f"pneumoscan {__version__}; model {model_version}"[:64],
            coding_schemes=[CodingSchemeIdentificationItem(designator=CODING_SCHEME,
                                                           name="pneumoscan local concepts")],
        )
    except DicomOutputError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutputError(f"a structured report could not be made for this image: {exc}") from exc


# ---------------------------------------------------------------------------------------------- SC


def caption_for(*, probability: float, decision: str, threshold: float, in_scope: bool, scope_reason: str) -> str:
    """The caption burned into a Secondary Capture: ``"Pneumonia score 0.734: PNEUMONIA (threshold 0.410).
    Decision support only, not a diagnosis."``; out of scope ``"NOT ASSESSED: <reason>. Decision support only,
    not a diagnosis."`` (no score: it is not a risk)."""
    tail = "Decision support only, not a diagnosis."
    if not in_scope:
        return f"NOT ASSESSED: {scope_reason or 'outside the intended use'}. {tail}"
    return f"Pneumonia score {probability:.3f}: {decision} (threshold {threshold:.3f}). {tail}"


def _burn_caption(rgb: np.ndarray, caption: str) -> np.ndarray:
    """``rgb`` under a black band holding ``caption`` in white, wrapped to the image's width."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rgb.shape[:2]
    px = max(10, round(w / 45))
    try:
        font: Any = ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    pad = max(3, px // 3)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in caption.split():  # greedy wrap by measured width; a word wider than the film is cut by the edge
        if lines and probe.textlength(f"{lines[-1]} {word}", font=font) <= w - 2 * pad:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    lines = lines or [""]
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + pad // 2
    band = len(lines) * line_h + 2 * pad
    canvas = Image.new("RGB", (w, h + band), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def make_sc(source: pydicom.Dataset, overlay_rgb: np.ndarray, *, caption: str,
            series_number: int = SC_SERIES_NUMBER) -> pydicom.Dataset:
    """A Secondary Capture of ``overlay_rgb`` (``(H, W, 3) uint8``, e.g. :func:`pneumoscan.explain.render_overlay`)
    with ``caption`` burned in on a band above it, in the source's study (new series, new instance), patient and
    study modules copied; BurnedInAnnotation YES; the source referenced in SourceImageSequence.

    Raises:
        DicomOutputError: the source lacks a needed UID, or highdicom refused the image.
        ValueError: ``overlay_rgb`` is not ``(H, W, 3) uint8``.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(overlay_rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or min(arr.shape[:2]) < 1:
        raise ValueError(f"overlay_rgb must be an (H, W, 3) uint8 array, got {arr.dtype} {arr.shape}")
    ds = _checked_source(source)
    pixels = np.ascontiguousarray(_burn_caption(arr, caption))
    try:
        # highdicom wants a patient orientation for an image in patient coordinates; the overlay keeps the source's
        # pixel grid, so its orientation is the source's, written below (empty when unknown: it is Type 2C).
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ds, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=generate_uid(), series_number=int(series_number),
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
            patient_orientation=("L", "F"), transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description="pneumoscan Grad-CAM (decision support only)",
            software_versions=f"pneumoscan {__version__}")
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutputError(f"a secondary capture could not be made for this image: {exc}") from exc
    sc.copy_patient_and_study_information(ds)  # the whole modules (PatientAge...), as the SR has them
    sc.PatientOrientation = ds.get("PatientOrientation", "") or ""
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = ("Grad-CAM overlay and result caption by pneumoscan; decision support only, "
                                "not a diagnosis")
    sc.ImageComments = caption[:10240]
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def sc_pixels(gray: np.ndarray, heatmap: np.ndarray | None, *, max_side: int = 1024) -> np.ndarray:
    """What a Secondary Capture shows (before its caption): the Grad-CAM overlay of ``heatmap`` on the film, or,
    with ``heatmap`` None (an image out of scope: a map of "evidence" on it would read as a finding), the film
    alone. ``gray`` is the decoded ``(H, W) uint8`` film; returns ``(h, w, 3) uint8`` at most ``max_side`` long."""
    from pneumoscan.explain import render_overlay

    if heatmap is not None:
        return render_overlay(gray, heatmap, max_side=max_side)
    return render_overlay(gray, np.zeros((1, 1), np.float32), alpha=0.0, max_side=max_side, legend=False)


# ---------------------------------------------------------------------------------------------- writing


def write_dataset(ds: pydicom.Dataset, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``ds`` as ``out_dir/<SOPInstanceUID>.dcm`` (DICOM Part 10): atomically (a temporary file, linked into
    place), readable by the owner only, never replacing a file. Returns the path.

    Raises:
        FileExistsError: a file of that name exists (it is left as it was).
        OSError: the folder cannot be written.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / f"{ds.SOPInstanceUID}.dcm"
    if target.exists():
        raise FileExistsError(f"{target} exists; DICOM results never replace a file")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    tmp = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"  # utils.remove_stale_temps' pattern
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target)  # fails if the target exists: no file is ever replaced
        except FileExistsError:
            raise FileExistsError(f"{target} exists; DICOM results never replace a file") from None
        except OSError:  # a file system without hard links: check, then rename (a tiny race, not a lost file)
            if target.exists():
                raise FileExistsError(f"{target} exists; DICOM results never replace a file") from None
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_dicom_results(source_path_or_bytes: str | os.PathLike[str] | bytes | pydicom.Dataset, *,
                        probability: float, decision: str, threshold: float, in_scope: bool, scope_reason: str,
                        model_name: str, model_version: str, out_dir: str | os.PathLike[str],
                        overlay_rgb: np.ndarray | None = None,
                        pseudonym_key: bytes | str | None = None) -> list[Path]:
    """Make the SR (:func:`make_sr`) and, with ``overlay_rgb``, the SC (:func:`make_sc`, captioned by
    :func:`caption_for`) of one source image and write them with :func:`write_dataset`.

    ``source_path_or_bytes``: the scored DICOM file, its bytes, or its Dataset. With ``pseudonym_key`` both carry
    keyed pseudonyms instead of the source's identifiers (:func:`pseudonymise_dataset`).

    Returns:
        the written paths: ``[sr]`` or ``[sr, sc]``. Both are made before either is written.

    Raises:
        DicomOutputError: the source is not readable DICOM, lacks a needed UID, or highdicom refused the content.
        ValueError: an invalid result (see :func:`make_sr`) or overlay.
        OSError: the folder cannot be written.
    """
    source = read_source(source_path_or_bytes)
    if pseudonym_key is not None:
        source = pseudonymise_dataset(source, pseudonym_key)
    result = dict(probability=probability, decision=decision, threshold=threshold, in_scope=in_scope,
                  scope_reason=scope_reason)
    made = [make_sr(source, **result, model_name=model_name, model_version=model_version)]
    if overlay_rgb is not None:
        made.append(make_sc(source, overlay_rgb, caption=caption_for(**result)))
    return [write_dataset(ds, out_dir) for ds in made]


# ---------------------------------------------------------------------------------------------- a batch


@dataclass
class DicomBatch:
    """What :func:`write_dicom_batch` did: ``written`` (input path -> its DICOM files), ``not_dicom`` (inputs
    skipped: not DICOM), ``unread`` (DICOM inputs not scored: no result to write), ``failed`` (input path -> why)
    and ``no_sc`` (why no Secondary Captures were made, e.g. an ONNX model; ``""`` when they were)."""

    written: dict[str, list[Path]] = field(default_factory=dict)
    not_dicom: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    no_sc: str = ""

    def summary(self, out_dir: str | os.PathLike[str]) -> str:
        """One line for people: counts of SR and SC files written, inputs skipped and failed (with the first
        failure's reason)."""
        files = [p for paths in self.written.values() for p in paths]
        n_sc = sum(len(paths) - 1 for paths in self.written.values())
        parts = [f"DICOM results: {len(files) - n_sc} SR and {n_sc} SC file(s) written to {out_dir}"]
        if self.no_sc:
            parts.append(f"no SC: {self.no_sc}")
        if self.not_dicom:
            parts.append(f"{len(self.not_dicom)} non-DICOM input(s) skipped")
        if self.unread:
            parts.append(f"{len(self.unread)} unreadable DICOM input(s) skipped")
        if self.failed:
            path, why = next(iter(self.failed.items()))
            parts.append(f"{len(self.failed)} failed (e.g. {Path(path).name}: {why})")
        return "; ".join(parts)


def _looks_dicom(path: str) -> bool:
    from pneumoscan.io import sniff_format

    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(132)) == "DICOM"
    except OSError:
        return path.lower().endswith((".dcm", ".dicom"))


def write_dicom_batch(predictor: Predictor, results: Sequence[FileResult], out_dir: str | os.PathLike[str], *,
                      pseudonym_key: bytes | str | None = None) -> DicomBatch:
    """``predict --dicom-out``: for every scored DICOM input among ``results``, its SR and, when the predictor can
    make a heatmap (the torch backend), its SC (the Grad-CAM overlay in scope; the film alone, captioned NOT
    ASSESSED, out of scope). Inputs that are not DICOM are listed as skipped; a file whose output fails is listed
    with why (and logged), and the others go on."""
    from pneumoscan.errors import ImageError
    from pneumoscan.io import read_image_with_context
    from pneumoscan.scoring import decide, decision_label

    batch = DicomBatch()
    can_sc = predictor.backend == "torch"
    if not can_sc:
        batch.no_sc = "Grad-CAM needs the .safetensors checkpoint; this is an ONNX export"
    remove_stale_temps(out_dir)
    for r in results:
        if r.probability is None:
            (batch.unread if _looks_dicom(r.path) else batch.not_dicom).append(r.path)
            continue
        if r.context is None or r.context.format != "DICOM":
            batch.not_dicom.append(r.path)
            continue
        in_scope = r.in_scope is not False
        decision = decision_label(decide(r.probability, predictor.threshold)) if in_scope else "OUT_OF_SCOPE"
        try:
            overlay = None
            if can_sc:
                gray, context = read_image_with_context(r.path)
                heat = predictor.assess(gray, context, heatmap=True)[1] if in_scope else None
                overlay = sc_pixels(gray, heat)
            batch.written[r.path] = write_dicom_results(
                r.path, probability=r.probability, decision=decision, threshold=predictor.threshold,
                in_scope=in_scope, scope_reason=r.scope_reason, model_name=predictor.model_name,
                model_version=predictor.version, out_dir=out_dir, overlay_rgb=overlay, pseudonym_key=pseudonym_key)
        except Exception as exc:  # noqa: BLE001 - one file's failure is that file's note, never the batch's
            why = str(exc) if isinstance(exc, (PneumoscanError, ImageError)) else f"{type(exc).__name__}: {exc}"
            batch.failed[r.path] = why
            log.warning("no DICOM result for %s: %s", r.path, why)
            log.debug("the failure in full", exc_info=True)
    return batch
