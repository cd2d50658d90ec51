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

__all__ = ["CODING_SCHEME", "CODING_SCHEME_NAME", "CODING_SCHEME_ORGANIZATION", "CODING_SCHEME_UID",
           "CODING_SCHEME_VERSION", "FALLBACK_CHARACTER_SET", "MANUFACTURER", "OWN_SOP_CLASSES", "SC_SERIES_NUMBER",
           "SR_SERIES_NUMBER", "UID_ROOT", "DicomOutputError", "checked_source", "is_own_uid", "new_uid",
           "output_character_set", "pseudonymise_dataset", "put_back", "read_source"]

#: The local coding scheme of the concepts no standard terminology has (PS3.3 8.2: local designators start with 99),
#: declared in every SR's Coding Scheme Identification Sequence (0008,0110) with :data:`CODING_SCHEME_UID`,
#: :data:`CODING_SCHEME_NAME`, :data:`CODING_SCHEME_VERSION` and :data:`CODING_SCHEME_ORGANIZATION`.
CODING_SCHEME = "99PNEUMOSCAN"
CODING_SCHEME_NAME = "pneumoscan local concepts"
#: Raised when a code's meaning changes (a new code is added instead whenever that is possible).
CODING_SCHEME_VERSION = "1"
CODING_SCHEME_ORGANIZATION = "pneumoscan project"
MANUFACTURER = "pneumoscan"
SR_SERIES_NUMBER = 990
SC_SERIES_NUMBER = 991
#: The root of every UID pneumoscan makes (series, SOP instances, tracking and device UIDs of its SR and SC): a
#: UUID-derived OID (``2.25.<UUID as an integer>``, PS3.5 B.2, ISO/IEC 9834-8) that belongs to pneumoscan, so that
#: the DICOM node knows its own output by its UID, never by free text. The one place it is written: a site with its
#: own registered root may put it here (at most 44 characters, leaving 19 random digits per UID).
UID_ROOT = "2.25.133413633575709181289311217886718839263"
#: The coding scheme's UID: two arcs under :data:`UID_ROOT` (every UID :func:`new_uid` makes has exactly one, its
#: random digits, so the two can never meet).
CODING_SCHEME_UID = f"{UID_ROOT}.1.1"
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


#: Specific Character Set defined terms (PS3.3 C.12.1.1.2) an output keeps as the source has them; with any other
#: value the outputs are written in UTF-8 (ISO_IR 192), which holds every text pydicom decoded from the source.
_CHARACTER_SETS = frozenset(
    [f"ISO_IR {n}" for n in (100, 101, 109, 110, 126, 127, 138, 144, 148, 13, 166, 192)]
    + [f"ISO 2022 IR {n}" for n in (6, 100, 101, 109, 110, 126, 127, 138, 144, 148, 13, 166, 87, 159, 149, 58)]
    + ["GB18030", "GBK"])
#: The character set of outputs whose source declares one pneumoscan cannot keep (UTF-8).
FALLBACK_CHARACTER_SET = "ISO_IR 192"


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
    charset = output_character_set(source)
    if charset == FALLBACK_CHARACTER_SET and source.get("SpecificCharacterSet") != charset:
        _names_from_text(ds)  # written in UTF-8 from their decoded text, not as the bytes the source had
    kept = [deepcopy(ds[k]) for k in _KEPT_AS_IS if k in ds]
    if "SpecificCharacterSet" in ds:  # highdicom refuses an empty first value (ISO 2022 Japanese): set afterwards
        del ds.SpecificCharacterSet
    if charset is not None:
        from pydicom.dataelem import DataElement

        kept.append(DataElement(0x00080005, "CS", charset))
    for keyword in _TYPE2 + _KEPT_AS_IS:
        if keyword in _KEPT_AS_IS or keyword not in ds or ds[keyword].value is None:
            setattr(ds, keyword, "")
    return ds, kept


def output_character_set(source: pydicom.Dataset) -> str | list[str] | None:
    """The Specific Character Set (0008,0005) of the SR and SC of ``source``: the source's own when it is a valid
    DICOM value (one defined term, or ISO 2022 terms whose first may be empty for the default repertoire), None when
    the source has none (the default repertoire, as the source), else :data:`FALLBACK_CHARACTER_SET`: pydicom decoded
    the source's text as best it could, and UTF-8 encodes whatever that gave."""
    raw = source.get("SpecificCharacterSet", None)
    if raw is None or raw == "" or raw == []:
        return None
    terms = [str(t).strip() for t in ([raw] if isinstance(raw, (str, bytes)) else raw)]
    if len(terms) == 1 and terms[0] in _CHARACTER_SETS:
        return terms[0]
    if len(terms) > 1 and all((t.startswith("ISO 2022") and t in _CHARACTER_SETS) or (i == 0 and t == "")
                              for i, t in enumerate(terms)):
        return terms
    return FALLBACK_CHARACTER_SET


def _names_from_text(ds: pydicom.Dataset) -> None:
    """Every person name in ``ds`` (nested ones included) made anew from its text: pydicom writes a name it decoded
    as its original bytes, which would contradict a character set changed to UTF-8."""
    from pydicom.valuerep import PersonName

    def renew(dataset: Any, element: Any) -> None:
        if element.VR == "PN" and element.value not in (None, ""):
            values = element.value if element.VM > 1 else [element.value]
            fresh = [PersonName(str(v)) for v in values]
            element.value = fresh if element.VM > 1 else fresh[0]

    ds.walk(renew)


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


