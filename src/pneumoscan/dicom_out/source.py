"""The source image's header for a DICOM result: read it, check it can place a result in its study, copy it for
highdicom without letting highdicom see (and perhaps log) a patient's name, pseudonymise it."""

from __future__ import annotations

import io
import os
from copy import deepcopy
from typing import TYPE_CHECKING, Any

from pneumoscan.errors import PneumoscanError
from pneumoscan.pseudonym import pseudonymise, pseudonymise_uid

if TYPE_CHECKING:
    import pydicom

__all__ = ["CODING_SCHEME", "MANUFACTURER", "OWN_SOP_CLASSES", "SC_SERIES_NUMBER", "SR_SERIES_NUMBER", "UID_ROOT",
           "DicomOutputError", "checked_source", "is_own_uid", "new_uid", "pseudonymise_dataset", "put_back",
           "read_source"]

#: The local coding scheme of the concepts no standard terminology has (PS3.3: local designators start with 99).
CODING_SCHEME = "99PNEUMOSCAN"
MANUFACTURER = "pneumoscan"
SR_SERIES_NUMBER = 990
SC_SERIES_NUMBER = 991
#: The root of every UID pneumoscan makes (series, SOP instances, tracking and device UIDs of its SR and SC): a
#: UUID-derived OID (``2.25.<UUID as an integer>``, PS3.5 B.2, ISO/IEC 9834-8) that belongs to pneumoscan, so that
#: the DICOM node knows its own output by its UID, never by free text. The one place it is written: a site with its
#: own registered root may put it here (at most 44 characters, leaving 19 random digits per UID).
UID_ROOT = "2.25.133413633575709181289311217886718839263"
#: The SOP classes pneumoscan writes (SR and Secondary Capture), and the other SR classes a PACS might convert to.
OWN_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR (what make_sr writes)
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.7",      # Secondary Capture Image Storage (what make_sc writes)
})
#: UIDs a pydicom Dataset needs before highdicom can place a result in its study.
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: Type 2 patient/study attributes highdicom reads from the source; empty when the source lacks them.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")
#: Attributes highdicom checks while it builds (and may quote in a warning or a log line: a patient's name must never
#: be logged) or parses strictly (a sloppy date or sex would cost the image its result): they are blank while
#: highdicom builds, and the source's own elements are put back, as they were, afterwards.
_KEPT_AS_IS = ("PatientName", "ReferringPhysicianName", "PatientSex", "PatientBirthDate", "StudyDate", "StudyTime")
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


def new_uid(entropy: list[str] | None = None) -> str:
    """A new UID under :data:`UID_ROOT` (64 characters); with ``entropy``, the same UID for the same strings."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_ROOT + ".", entropy_srcs=entropy))


def is_own_uid(sop_class_uid: str, sop_instance_uid: str) -> bool:
    """True when a data set of this SOP class and SOP Instance UID can only be one pneumoscan made: an SR or SC
    class (:data:`OWN_SOP_CLASSES`) AND a SOP Instance UID under :data:`UID_ROOT`. Exact: no free text is read."""
    uid = str(sop_instance_uid or "").strip()
    return str(sop_class_uid or "").strip() in OWN_SOP_CLASSES and uid.startswith(UID_ROOT + ".")




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
    except Exception as exc:  # pydicom raises InvalidDicomError, OSError, ValueError, struct.error...
        raise DicomOutputError(f"{name}: not a DICOM file that can be read ({' '.join(str(exc).split())[:200]})") from exc


def checked_source(source: pydicom.Dataset) -> tuple[pydicom.Dataset, list[Any]]:
    """A copy of the source for highdicom to build from: no pixel data, empty values for the Type 2 attributes
    highdicom reads, and the :data:`_KEPT_AS_IS` attributes blank; with the source's own elements of the latter,
    for :func:`put_back`.

    Raises:
        DicomOutputError: a UID needed to place the result in the source's study is missing.
    """
    missing = [k for k in _REQUIRED if not str(source.get(k, "") or "").strip()]
    if missing:
        raise DicomOutputError(f"the source image has no {', '.join(missing)}, so a result cannot be placed in its "
                               "study; re-export it from the PACS (a PACS always sets them)")
    ds = _header_copy(source)
    kept = [deepcopy(ds[k]) for k in _KEPT_AS_IS if k in ds]
    for keyword in _TYPE2 + _KEPT_AS_IS:
        if keyword in _KEPT_AS_IS or keyword not in ds or ds[keyword].value is None:
            setattr(ds, keyword, "")
    return ds, kept


def _header_copy(source: pydicom.Dataset) -> pydicom.Dataset:
    """A deep copy of ``source`` without its pixel data (a C-STORE'd image holds them; copying them costs time)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    for element in source:
        if element.keyword not in _PIXEL_DATA:
            ds.add(deepcopy(element))
    if hasattr(source, "file_meta"):
        ds.file_meta = deepcopy(source.file_meta)
    return ds


def put_back(made: pydicom.Dataset, kept: list[Any]) -> None:
    """The source's own patient and study elements into ``made`` (see :func:`checked_source`)."""
    for element in kept:
        made[element.tag] = deepcopy(element)


def pseudonymise_dataset(source: pydicom.Dataset, key: bytes | str) -> pydicom.Dataset:
    """A copy of ``source``'s header (no pixel data) whose identifiers are keyed pseudonyms
    (:mod:`pneumoscan.pseudonym`), for outputs that must not name the patient: PatientID (``anon-`` + 16 hex) and
    PatientName (the same pseudonym), the study, series and instance UIDs (``2.25.`` UIDs: results of one study
    still share one), AccessionNumber (the pseudonym's 16 hex digits: the attribute holds 16 characters); birth
    date, referring physician and study ID emptied; other identifying patient and study attributes removed;
    PatientIdentityRemoved YES. Age, sex, study date and view are kept (the worklists keep them too)."""
    ds = _header_copy(source)
    patient = pseudonymise(str(ds.get("PatientID", "") or ""), key)
    ds.PatientID = patient
    ds.PatientName = f"{patient}^" if patient else ""  # the caret: a family name alone, not a malformed name
    accession = pseudonymise(str(ds.get("AccessionNumber", "") or ""), key)
    ds.AccessionNumber = accession[-16:] if accession else ""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        if keyword in ds and ds[keyword].value:
            setattr(ds, keyword, pseudonymise_uid(str(ds[keyword].value), key))
    if hasattr(ds, "file_meta") and getattr(ds.file_meta, "MediaStorageSOPInstanceUID", None):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in ("PatientBirthDate", "ReferringPhysicianName", "StudyID"):
        setattr(ds, keyword, "")
    for keyword in _IDENTIFYING:
        if keyword in ds:
            del ds[keyword]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "pneumoscan keyed pseudonyms (HMAC-SHA256)"
    return ds


