"""dicom3tools' ``dciodvfy`` on the SR and SC that pneumoscan writes: no error, for every kind of source and result.

Sources: synthetic DX films (every patient and study tag; none but the UIDs; UTF-8, Latin-1 and ISO 2022 Japanese
character sets; For Processing; a paired body part with and without its side; a data set as a C-STORE hands it
over, without file meta; sent as lossy JPEG; pseudonymised outputs), and the CR, SC and CT sample files that pydicom
and pydicom-data install. Results: flagged with a viral or a bacterial cause, normal, not assessed (out of scope),
scored with the unfamiliar-film caution, flagged by a model without a cause output. Each SR and SC is written as
``predict --dicom-out`` writes it (:func:`write_dicom_results`).

dciodvfy's lines that start with ``Error`` are errors: there must be none. Its warnings must each be one the
conformance statement explains (:data:`EXPLAINED_WARNINGS`) or one the source itself gets (its patient and study
modules are copied as they are). A source with malformed values of its own (a sex of "female", a date with dashes)
passes its errors on, and no others: an output's errors are a subset of its source's.

Skipped with a message when dciodvfy is absent (``scripts/test.sh`` installs Debian's ``dicom3tools``)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from imagefactory import dicom_bytes, synthetic_xray
from oodfactory import sample_dicom
from pydicom.uid import DigitalXRayImageStorageForProcessing, generate_uid

from pneumoscan.constants import UNFAMILIAR_CAUTION
from pneumoscan.dicom_out import CODING_SCHEME, CODING_SCHEME_UID, write_dicom_results
from pneumoscan.result import Explanation, ModelIdentity, Result

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dicom3tools' dciodvfy is not installed (Debian package "
                                                         "'dicom3tools'; scripts/test.sh installs it as root)")

KEY = b"a test site secret, not for use"
#: The warnings dciodvfy gives on pneumoscan's own choices, each explained in docs/dicom_conformance.md.
EXPLAINED_WARNINGS = (
    # the local coding scheme, declared in the Coding Scheme Identification Sequence: dciodvfy knows registered ones
    re.compile(rf"Unrecognized defined term <{CODING_SCHEME}> for value 1 of attribute <Coding Scheme Designator>"),
    re.compile(rf"Unrecognized defined term <{re.escape(CODING_SCHEME_UID)}> for value 1 of attribute "
               r"<Coding Scheme UID>"),
    # a source without Study ID, Date or Time (pseudonymised outputs empty the Study ID): copied as the source has it
    re.compile(r"Missing attribute or value that would be needed to build DICOMDIR"),
    # the SC of a source whose body part is unknown, or paired with no side given: Laterality empty (unknown)
    re.compile(r"is only permitted to be empty when actually unknown.*attribute <Laterality>"),
)
CHEST = {"PatientName": "Doe^Jane", "PatientID": "MRN-12345", "PatientBirthDate": "20200102", "PatientSex": "F",
         "PatientAge": "004Y", "AccessionNumber": "ACC-777", "StudyDate": "20240301", "StudyTime": "101500",
         "StudyID": "S1", "ReferringPhysicianName": "Who^Doctor", "BodyPartExamined": "CHEST", "ViewPosition": "PA",
         "PatientOrientation": ["L", "F"], "ImageLaterality": "U"}


@dataclass(frozen=True)
class Verdict:
    """What dciodvfy said of one file: the IOD it checked against, its error and warning lines."""

    iod: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    text: str


def dciodvfy(path: Path) -> Verdict:
    """Run dciodvfy on ``path`` (it writes to stderr; both streams are read). Fails when it names no IOD: then it did
    not check the file at all."""
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, errors="replace",
                          timeout=60, check=False)
    text = proc.stdout + proc.stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    iods = [line for line in lines if re.fullmatch(r"[A-Za-z0-9]+", line)]
    assert len(iods) == 1, f"dciodvfy named no single IOD for {path.name} (exit {proc.returncode}):\n{text}"
    return Verdict(iods[0], tuple(x for x in lines if re.match(r"Error\b", x)),
                   tuple(x for x in lines if re.match(r"Warning\b", x)), text)


def _synthetic(tags: dict[str, object] | None = None) -> pydicom.Dataset:
    """A synthetic DX film with new study and series UIDs and ``tags`` (None deletes one)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(128, 112, seed=3))))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for keyword, value in (tags or {}).items():
        if value is None:
            delattr(ds, keyword) if keyword in ds else None
        else:
            setattr(ds, keyword, value)
    return ds


def _sample(name: str) -> pydicom.Dataset:
    path = sample_dicom(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data; the test extra installs it)")
    return pydicom.dcmread(path)


def _for_processing() -> pydicom.Dataset:
    ds = _synthetic(CHEST)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForProcessing
    return ds


def _lossy_jpeg() -> pydicom.Dataset:
    """A DX film sent JPEG Baseline (lossy), saying so."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(128, 112, seed=3), bits=8,
                                                compression="jpeg-baseline")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for keyword, value in {**CHEST, "LossyImageCompression": "01", "LossyImageCompressionRatio": 8.5,
                           "LossyImageCompressionMethod": "ISO_10918_1"}.items():
        setattr(ds, keyword, value)
    return ds


def _as_received() -> pydicom.Dataset:
    ds = _synthetic(CHEST)
    del ds.file_meta  # a C-STORE's data set: the transfer syntax is the association's
    return ds


#: name -> (the source data set, pseudonymise its outputs)
SOURCES = {
    "dx-chest": lambda: _synthetic(CHEST),
    "dx-uids-only": lambda: _synthetic(),
    "dx-utf8": lambda: _synthetic({**CHEST, "SpecificCharacterSet": "ISO_IR 192",
                                   "PatientName": "Müller^Jürgen=山田^太郎"}),
    "dx-latin1": lambda: _synthetic({**CHEST, "SpecificCharacterSet": "ISO_IR 100", "PatientName": "Müller^Jürgen"}),
    "dx-iso2022-japanese": lambda: _synthetic({**CHEST, "SpecificCharacterSet": ["", "ISO 2022 IR 87"],
                                               "PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう"}),
    "dx-for-processing": _for_processing,
    "dx-knee-right": lambda: _synthetic({**CHEST, "BodyPartExamined": "KNEE", "ImageLaterality": "R"}),
    "dx-knee-no-side": lambda: _synthetic({**CHEST, "BodyPartExamined": "KNEE", "ImageLaterality": None}),
    "dx-as-received": _as_received,
    "dx-jpeg-lossy": _lossy_jpeg,
    "cr-pa-latin1": lambda: _sample("RG1_UNCR.dcm"),
    "cr-ap-laterality": lambda: _sample("RG3_UNCR.dcm"),
    "sc-rgb": lambda: _sample("SC_rgb.dcm"),
    "ct-slice": lambda: _sample("CT_small.dcm"),
}

FILM = synthetic_xray(128, 112, seed=3)
MAP = Explanation(np.random.default_rng(0).random((5, 5)).astype(np.float32))
WITH_CAUSE = ModelIdentity("efficientnet-lite0", "0123456789ab", 0.41, cause_threshold=0.54,
                           calibration="calibrated on the training hospital's validation films")
WITHOUT_CAUSE = ModelIdentity("seed-cnn", "0123456789ab", 0.41)
RESULTS = {
    "flagged-viral": lambda: Result.scored("f.dcm", 0.9, WITH_CAUSE, cause_probability=0.8, film=FILM,
                                           explanation=MAP),
    "flagged-bacterial": lambda: Result.scored("f.dcm", 0.9, WITH_CAUSE, cause_probability=0.2, film=FILM,
                                               explanation=MAP),
    "normal": lambda: Result.scored("f.dcm", 0.1, WITH_CAUSE, cause_probability=0.9, film=FILM, explanation=MAP),
    "not-assessed": lambda: Result.scored("f.dcm", 0.9, WITHOUT_CAUSE, in_scope=False, film=FILM,
                                          scope_reason="lateral view (DICOM ViewPosition LL)"),
    "caution": lambda: Result.scored("f.dcm", 0.7, WITHOUT_CAUSE, film=FILM, explanation=MAP).replace(
        scope_caution=UNFAMILIAR_CAUTION),
    "flagged-no-cause-output": lambda: Result.scored("f.dcm", 0.7, WITHOUT_CAUSE, film=FILM, explanation=MAP),
}
#: Every result on the chest film; two (the flagged film with its cause, and the film not assessed) on the others.
CASES = ([("dx-chest", r, False) for r in RESULTS] + [("dx-chest", "flagged-viral", True)]
         + [(s, r, False) for s in SOURCES if s != "dx-chest" for r in ("flagged-viral", "not-assessed")])


def _source_file(ds: pydicom.Dataset, folder: Path) -> Path:
    """The source as a file for dciodvfy (a data set without file meta gets one, as a PACS would store it)."""
    path = folder / "source.dcm"
    copy = pydicom.Dataset(ds)
    copy.file_meta = pydicom.dataset.FileMetaDataset(getattr(ds, "file_meta", pydicom.Dataset()))
    copy.file_meta.setdefault("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian)
    copy.save_as(path, enforce_file_format=True)
    return path


def _unexplained(verdict: Verdict, source: Verdict) -> list[str]:
    return [w for w in verdict.warnings
            if w not in source.warnings and not any(p.search(w) for p in EXPLAINED_WARNINGS)]


@pytest.mark.parametrize(("source_name", "result_name", "pseudonymised"), CASES,
                         ids=[f"{s}-{r}{'-pseudonymised' if p else ''}" for s, r, p in CASES])
def test_dciodvfy_finds_no_error_in_the_sr_and_sc(tmp_path, source_name, result_name, pseudonymised):
    source = SOURCES[source_name]()
    result = RESULTS[result_name]()
    written = write_dicom_results(source, result, out_dir=tmp_path / "out", pseudonym_key=KEY if pseudonymised
                                  else None)
    assert len(written) == 2  # the SR and the SC (the film alone, captioned, when not assessed)
    source_verdict = dciodvfy(_source_file(source, tmp_path))
    for path, iod in zip(written, ("Comprehensive3DSR", "SCImage")):
        verdict = dciodvfy(path)
        assert verdict.iod == iod, verdict.text
        assert verdict.errors == (), f"{iod} of {source_name}/{result_name}:\n{verdict.text}"
        assert _unexplained(verdict, source_verdict) == [], verdict.text


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the test's own sloppy header, as pydicom sees it
def test_a_sloppy_source_passes_on_its_own_errors_and_no_other(tmp_path):
    """Malformed patient and study values are copied as they are (the outputs must match the study the PACS holds):
    dciodvfy's errors on the SR and SC are ones it reports on the source too. A character set DICOM does not define
    becomes UTF-8 (ISO_IR 192), a lower-case body part is written in capitals, a side that is not R or L is dropped."""
    source = _synthetic({**CHEST, "PatientSex": "female", "StudyDate": "2024-03-01", "BodyPartExamined": "Chest",
                         "Laterality": "X", "SpecificCharacterSet": "ISO-8859-1"})
    source.PatientName = "Müller^Jürgen"
    source_verdict = dciodvfy(_source_file(source, tmp_path))
    assert source_verdict.errors  # the test's premise: the source itself is not valid
    written = write_dicom_results(source, RESULTS["flagged-viral"](), out_dir=tmp_path / "out")
    for path in written:
        verdict = dciodvfy(path)
        assert verdict.errors, "the source's own errors are expected to be copied"
        assert set(verdict.errors) <= set(source_verdict.errors), verdict.text
        back = pydicom.dcmread(path)
        assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "Müller^Jürgen"
        assert (back.PatientSex, back.StudyDate) == ("female", "2024-03-01")
    sc = pydicom.dcmread(written[1])
    assert sc.BodyPartExamined == "CHEST" and "Laterality" not in sc
