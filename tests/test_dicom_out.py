"""DICOM results out: the SR and SC read back with pydicom and highdicom, sit in the source's study in new series
with its patient and study modules, carry the result; files are written atomically, owner-only, never replaced;
pseudonymised outputs name nobody."""

from __future__ import annotations

import io
import os
import stat

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from imagefactory import dicom_bytes, synthetic_xray
from pydicom.uid import UID, generate_uid

from pneumoscan.constants import DISCLAIMER
from pneumoscan.dicom_out import (
    CODING_SCHEME,
    DicomOutputError,
    make_sc,
    make_sr,
    pseudonymise_dataset,
    sc_pixels,
    write_dataset,
    write_dicom_results,
)
from pneumoscan.pseudonym import pseudonymise, pseudonymise_uid
from pneumoscan.result import Explanation, ModelIdentity, Result

KEY = b"a test site secret, not for use"
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-12345", "PatientBirthDate": "20200102", "PatientSex": "F",
           "PatientAge": "004Y", "AccessionNumber": "ACC-777", "StudyDate": "20240301", "StudyTime": "101500",
           "StudyID": "S1", "ReferringPhysicianName": "Who^Doctor", "BodyPartExamined": "CHEST",
           "ViewPosition": "PA", "PatientOrientation": ["L", "F"], "OtherPatientIDs": "OLD-999"}


def source_dataset(**tags: object) -> pydicom.Dataset:
    """A synthetic DX film with the study, series and patient tags a PACS sets (``tags`` override them)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(128, 112, seed=3))))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for keyword, value in {**PATIENT, **tags}.items():
        if value is None:
            delattr(ds, keyword) if keyword in ds else None
        else:
            setattr(ds, keyword, value)
    return ds


def source_bytes(**tags: object) -> bytes:
    buf = io.BytesIO()
    source_dataset(**tags).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _result(probability: float = 0.734, *, threshold: float = 0.41, in_scope: bool = True, scope_reason: str = "",
            film: np.ndarray | None = None, cam: np.ndarray | None = None, version: str = "0123456789ab") -> Result:
    """A result as the predictor makes it (the decision is the result's own)."""
    return Result.scored("film.dcm", probability, ModelIdentity("seed-cnn", version, threshold), in_scope=in_scope,
                         scope_reason=scope_reason, film=film,
                         explanation=None if cam is None else Explanation(cam))


def _with_film(**kw: object) -> Result:
    return _result(film=synthetic_xray(128, 112, seed=3), **kw)  # type: ignore[arg-type]


def _sr(source: pydicom.Dataset, **kw: object) -> pydicom.Dataset:
    return make_sr(source, _result(**kw))  # type: ignore[arg-type]


def _texts(ds: pydicom.Dataset) -> dict[str, str]:
    items = find_content_items(ds, value_type=hd.sr.ValueTypeValues.TEXT, recursive=True)
    return {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in items}


def _same_patient_and_study(out: pydicom.Dataset, src: pydicom.Dataset) -> None:
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "AccessionNumber",
                    "StudyDate", "StudyTime", "StudyID", "StudyInstanceUID"):
        assert str(out[keyword].value) == str(src[keyword].value), keyword
    assert out.SeriesInstanceUID != src.SeriesInstanceUID and out.SOPInstanceUID != src.SOPInstanceUID
    assert UID(out.SeriesInstanceUID).is_valid and UID(out.SOPInstanceUID).is_valid


def test_sr_reads_back_in_the_source_study_with_the_result():
    src = source_dataset()
    back = _roundtrip(_sr(src))
    assert back.Modality == "SR" and back.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    _same_patient_and_study(back, src)
    assert back.SeriesNumber == 990
    assert (back.CompletionFlag, back.VerificationFlag, back.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED",
                                                                                  "PRELIMINARY")
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == src.SOPInstanceUID

    # highdicom's own reading of it: the TID 1500 report, its measurement group and the algorithm
    report = hd.sr.srread(io.BytesIO(_bytes(back)))
    assert isinstance(report, hd.sr.Comprehensive3DSR)
    hd.sr.Comprehensive3DSR.from_dataset(back)
    group, = report.content.get_image_measurement_groups()
    values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
    assert values == {"Pneumonia probability": (pytest.approx(0.734), "{probability}"),
                      "Operating threshold": (pytest.approx(0.41), "{probability}")}
    assert (group.finding_type.value, group.finding_type.scheme_designator) == ("233604007", "SCT")
    scope, = group.get_qualitative_evaluations()
    assert scope.name.scheme_designator == CODING_SCHEME and scope.value.meaning == "Yes"
    texts = _texts(back)
    assert texts["Decision support disclaimer"] == DISCLAIMER
    assert texts["Triage decision"] == "PNEUMONIA"
    assert texts["Algorithm Name"] == "pneumoscan seed-cnn" and texts["Algorithm Version"] == "0123456789ab"
    assert "Reason not assessed" not in texts


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_sr_normal_and_out_of_scope():
    src = source_dataset()
    normal = hd.sr.srread(io.BytesIO(_bytes(_sr(src, probability=0.1))))
    group, = normal.content.get_image_measurement_groups()
    assert group.finding_type.value == "17621005"  # SCT Normal
    out = _roundtrip(_sr(src, probability=0.97, in_scope=False, scope_reason="adult patient (DICOM PatientAge 045Y)"))
    group, = hd.sr.srread(io.BytesIO(_bytes(out))).content.get_image_measurement_groups()
    # no probability out of scope: a viewer would show it as a risk
    assert [m.name.meaning for m in group.get_measurements()] == ["Operating threshold"]
    assert group.finding_type.scheme_designator == CODING_SCHEME
    assert group.get_qualitative_evaluations()[0].value.meaning == "No"
    texts = _texts(out)
    assert texts["Reason not assessed"] == "adult patient (DICOM PatientAge 045Y)"
    assert texts["Triage decision"] == "OUT_OF_SCOPE" and texts["Decision support disclaimer"] == DISCLAIMER


def test_a_cautioned_films_sr_and_sc_carry_the_caution_beside_its_score():
    """A chest film unlike the training films is scored: its SR keeps the probability, says in scope, and holds the
    caution as a text item; its SC caption carries the caution after the score."""
    from pneumoscan.constants import UNFAMILIAR_CAUTION

    src = source_dataset()
    result = _with_film(cam=np.ones((5, 5), np.float32)).replace(scope_caution=UNFAMILIAR_CAUTION)
    sr = _roundtrip(make_sr(src, result))
    group, = hd.sr.srread(io.BytesIO(_bytes(sr))).content.get_image_measurement_groups()
    assert [m.name.meaning for m in group.get_measurements()] == ["Pneumonia probability", "Operating threshold"]
    assert group.get_qualitative_evaluations()[0].value.meaning == "Yes"
    texts = _texts(sr)
    assert texts["Caution: unfamiliar film"] == UNFAMILIAR_CAUTION and "Reason not assessed" not in texts
    assert "Caution: unfamiliar film" not in _texts(_sr(src))  # a familiar film has none
    caption = result.caption()
    assert caption == (f"Flagged: possible pneumonia. Score 73.4 / 100 (threshold 41.0). {UNFAMILIAR_CAUTION}. "
                       "Decision support, not a diagnosis.")
    assert _roundtrip(make_sc(src, result)).ImageComments == caption


def test_make_sr_reports_the_results_decision_and_refuses_what_has_none():
    src = source_dataset()
    # nothing to contradict: the decision is the result's, made from its probability, threshold and scope verdict
    for probability, in_scope, decision in ((0.5, True, "PNEUMONIA"), (0.3, True, "NORMAL"), (0.9, False, "OUT_OF_SCOPE")):
        texts = _texts(_roundtrip(_sr(src, probability=probability, in_scope=in_scope, scope_reason="blank")))
        assert texts["Triage decision"] == decision
    with pytest.raises(ValueError, match="probability"):
        _result(float("nan"))
    with pytest.raises(DicomOutputError, match="could not be read"):
        make_sr(src, Result.unread("film.dcm", "damaged", ModelIdentity("seed-cnn", "v", 0.41)))
    with pytest.raises(DicomOutputError, match="StudyInstanceUID"):
        _sr(source_dataset(StudyInstanceUID=None))
    # a source without the optional patient tags still gets a report (empty Type 2 values)
    bare = _roundtrip(_sr(source_dataset(PatientName=None, PatientBirthDate=None, AccessionNumber=None,
                                         StudyID=None, StudyTime=None, ReferringPhysicianName=None)))
    assert bare.PatientName == "" and bare.AccessionNumber == ""


def test_sc_holds_the_overlay_and_a_burned_in_caption():
    src = source_dataset()
    result = _with_film(cam=np.random.default_rng(0).random((5, 5)).astype(np.float32))
    overlay = sc_pixels(result)
    caption = result.caption()
    assert caption == ("Flagged: possible pneumonia. Score 73.4 / 100 (threshold 41.0). Decision support, not a "
                       "diagnosis.")
    back = _roundtrip(make_sc(src, result))
    _same_patient_and_study(back, src)
    assert back.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and back.SeriesNumber == 991
    assert back.BurnedInAnnotation == "YES" and back.ImageComments == caption
    assert back.ConversionType == "WSD" and "LossyImageCompression" not in back  # the source was not lossy
    lossy = _roundtrip(make_sc(source_dataset(LossyImageCompression="01", LossyImageCompressionRatio=9.0), result))
    assert (lossy.LossyImageCompression, float(lossy.LossyImageCompressionRatio)) == ("01", 9.0)  # stays lossy
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert list(back.PatientOrientation) == ["L", "F"]
    pixels = back.pixel_array
    band = pixels.shape[0] - overlay.shape[0]
    assert pixels.shape[1:] == (112, 3) and band > 0
    assert np.array_equal(pixels[band:], overlay)  # the film is untouched: the caption sits on a band above it
    assert pixels[:band].max() > 200  # white text on the black band
    assert hd.Image.from_dataset(back).get_frame(1).shape == pixels.shape  # highdicom reads it back too

    out_of_scope = _with_film(probability=0.9, in_scope=False, scope_reason="lateral view (DICOM ViewPosition LL)",
                              cam=np.ones((5, 5), np.float32))
    assert out_of_scope.caption() == ("Not assessed (out of scope): lateral view (DICOM ViewPosition LL). Decision "
                                      "support, not a diagnosis.")  # no score: it is not a risk
    assert out_of_scope.explanation is not None and np.array_equal(  # an SC never shows a map out of scope...
        sc_pixels(out_of_scope), sc_pixels(out_of_scope.replace(explanation=None)))  # ...when a caller gives one
    with pytest.raises(ValueError, match="overlay_rgb"):
        make_sc(src, result, np.zeros((10, 10), np.uint8))
    with pytest.raises(DicomOutputError, match="keeps no film"):
        make_sc(src, _result())


def test_write_dicom_results_from_path_or_bytes_atomically_never_overwriting(tmp_path):
    path = tmp_path / "film.dcm"
    path.write_bytes(source_bytes())
    src = pydicom.dcmread(path)
    out = tmp_path / "out"
    written = write_dicom_results(path, _with_film(probability=0.2, version="v1"), out_dir=out)
    assert len(written) == 2 and sorted(os.listdir(out)) == sorted(p.name for p in written)  # no temporary left
    sr, sc = (pydicom.dcmread(p) for p in written)
    assert (sr.Modality, sc.Modality) == ("SR", "OT")
    for p, ds in zip(written, (sr, sc)):
        assert p.name == f"{ds.SOPInstanceUID}.dcm" and stat.S_IMODE(p.stat().st_mode) == 0o600
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    only_sr = write_dicom_results(source_bytes(), _result(0.2, version="v1"), out_dir=out)  # no film kept: no SC
    assert len(only_sr) == 1
    before = written[0].read_bytes()
    with pytest.raises(FileExistsError):
        write_dataset(sr, out)
    assert written[0].read_bytes() == before and len(os.listdir(out)) == 3
    with pytest.raises(DicomOutputError, match="not a DICOM file"):
        write_dicom_results(b"not dicom at all" * 20, _result(0.2), out_dir=out)


def test_pseudonymised_outputs_name_nobody_and_stay_valid_dicom(tmp_path):
    data = source_bytes()
    src = pydicom.dcmread(io.BytesIO(data))
    result = _with_film(probability=0.9, version="v1")
    first = write_dicom_results(data, result, out_dir=tmp_path / "a", pseudonym_key=KEY)
    again = write_dicom_results(data, result, out_dir=tmp_path / "b", pseudonym_key=KEY)
    for path in first + again:
        raw = path.read_bytes()
        for secret in (b"Doe", b"MRN-12345", b"ACC-777", b"20200102", b"OLD-999", b"Who", src.StudyInstanceUID.encode(),
                       src.SOPInstanceUID.encode()):
            assert secret not in raw, (path.name, secret)
        ds = pydicom.dcmread(path)
        assert ds.PatientID == pseudonymise("MRN-12345", KEY) and str(ds.PatientName) == f"{ds.PatientID}^"
        assert ds.StudyInstanceUID == pseudonymise_uid(src.StudyInstanceUID, KEY)
        assert UID(ds.StudyInstanceUID).is_valid and len(ds.AccessionNumber) == 16
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientAge == "004Y" and ds.PatientSex == "F"
    sr = pydicom.dcmread(first[0])
    assert hd.sr.srread(first[0]).content.get_image_measurement_groups()
    ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == pseudonymise_uid(src.SOPInstanceUID, KEY)
    # the same input and key give the same study (and patient); the source itself is untouched
    assert pydicom.dcmread(again[0]).StudyInstanceUID == sr.StudyInstanceUID
    copy = pseudonymise_dataset(src, KEY)
    assert src.PatientID == "MRN-12345" and copy.PatientID != src.PatientID and "OtherPatientIDs" not in copy


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the test's own sloppy header, as pydicom sees it
def test_sloppy_headers_are_copied_as_they_are_and_no_name_reaches_a_warning_or_log(caplog):
    import logging
    import warnings

    src = source_dataset(PatientName="DOE JANE", ReferringPhysicianName="WHO DOCTOR", PatientSex="female",
                         StudyDate="2024-03-01")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        made = [_roundtrip(_sr(src)), _roundtrip(make_sc(src, _with_film()))]
    said = caplog.text + " ".join(str(w.message) for w in caught)
    assert "DOE" not in said and "WHO" not in said
    for ds in made:
        assert (str(ds.PatientName), str(ds.ReferringPhysicianName), ds.PatientSex, ds.StudyDate) == (
            "DOE JANE", "WHO DOCTOR", "female", "2024-03-01")


def test_a_batch_without_heatmaps_writes_srs_only_and_one_files_failure_is_its_note(tmp_path, monkeypatch):
    from pneumoscan.dicom_out import write, write_dicom_batch
    from pneumoscan.io import ImageContext
    from resultfactory import scored, unread

    for name, tags in (("a.dcm", {}), ("b.dcm", {"PatientID": "BOOM"}), ("nostudy.dcm", {"StudyInstanceUID": None})):
        (tmp_path / name).write_bytes(source_bytes(**tags))
    dicom = ImageContext(format="DICOM")
    results = [scored(str(tmp_path / n), 0.7, in_scope=True, context=dicom) for n in ("a.dcm", "b.dcm",
                                                                                         "nostudy.dcm")]
    results += [scored("photo.png", 0.2, in_scope=True, context=ImageContext(format="PNG")),
                unread(str(tmp_path / "missing.dcm"), "not found")]
    real = write.make_sr

    def make_sr(source, result):  # an unexpected failure for one image only
        if source.PatientID == "BOOM":
            raise RuntimeError("boom")
        return real(source, result)

    monkeypatch.setattr(write, "make_sr", make_sr)
    batch = write_dicom_batch(results, tmp_path / "out")
    assert list(batch.written) == [str(tmp_path / "a.dcm")] and len(batch.written[str(tmp_path / "a.dcm")]) == 1
    assert set(batch.failed) == {str(tmp_path / "b.dcm"), str(tmp_path / "nostudy.dcm")}
    assert batch.failed[str(tmp_path / "b.dcm")] == "RuntimeError: boom"
    assert batch.not_dicom == ["photo.png"] and batch.unread == [str(tmp_path / "missing.dcm")]
    summary = batch.summary(tmp_path / "out")
    assert summary.startswith("DICOM results: 1 SR and 0 SC file(s) written") and "2 failed" in summary


def test_the_dicom_writer_reads_results_and_runs_nothing():
    """dicom_out takes Results: it imports no predictor, no decoder and no model (only the overlay drawing)."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "check_imports.py"
    spec = importlib.util.spec_from_file_location("check_imports_for_dicom_out", script)
    checker = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = checker
    spec.loader.exec_module(checker)
    graph = checker.imports(checker.modules())
    used = set().union(*(deps for mod, deps in graph.items() if mod.startswith("pneumoscan.dicom_out")))
    assert not {d for d in used if d.startswith(("pneumoscan.inference.predictor", "pneumoscan.inference.network",
                                                  "pneumoscan.inference.explain", "pneumoscan.io.images",
                                                  "pneumoscan.preprocessing", "pneumoscan.models"))}
    assert "pneumoscan.inference.render" in used and "pneumoscan.result" in used


def test_a_flagged_films_sr_holds_its_cause_as_a_second_coded_finding():
    src = source_dataset()
    model = ModelIdentity("efficientnet-lite0", "0123456789ab", 0.41, cause_threshold=0.54)
    for p_viral, code, meaning in ((0.8, "75570004", "Viral pneumonia"), (0.2, "53084003", "Bacterial pneumonia")):
        result = Result.scored("film.dcm", 0.9, model, cause_probability=p_viral)
        back = _roundtrip(make_sr(src, result))
        report = hd.sr.srread(io.BytesIO(_bytes(back)))
        main, cause = report.content.get_image_measurement_groups()  # the cause under the main finding
        assert (main.finding_type.value, main.finding_type.scheme_designator) == ("233604007", "SCT")
        assert (cause.finding_type.value, cause.finding_type.meaning) == (code, meaning)
        values = {m.name.meaning: m.value for m in cause.get_measurements()}
        assert values == {"Viral pattern probability": pytest.approx(p_viral),
                          "Cause operating threshold": pytest.approx(0.54)}
        texts = _texts(back)
        assert texts["Pattern more like"] == result.cause_text and "not a treatment" in texts["Cause caveat"]
    normal = _roundtrip(make_sr(src, Result.scored("film.dcm", 0.1, model, cause_probability=0.9)))
    assert len(hd.sr.srread(io.BytesIO(_bytes(normal))).content.get_image_measurement_groups()) == 1


def test_the_sr_declares_its_local_coding_scheme_and_every_local_code_uses_it():
    from pneumoscan.dicom_out import CODING_SCHEME_UID, UID_ROOT, is_own_uid, new_uid

    model = ModelIdentity("efficientnet-lite0", "0123456789ab", 0.41, cause_threshold=0.54)
    back = _roundtrip(make_sr(source_dataset(), Result.scored("film.dcm", 0.9, model, cause_probability=0.8)))
    scheme, = back.CodingSchemeIdentificationSequence
    assert (scheme.CodingSchemeDesignator, scheme.CodingSchemeUID) == (CODING_SCHEME, CODING_SCHEME_UID)
    assert scheme.CodingSchemeName and scheme.CodingSchemeResponsibleOrganization and scheme.CodingSchemeVersion
    assert UID(CODING_SCHEME_UID).is_valid and CODING_SCHEME_UID.startswith(UID_ROOT + ".")
    # two arcs under the root, where every UID pneumoscan makes has one: the scheme's UID is never an instance's
    assert CODING_SCHEME_UID[len(UID_ROOT) + 1:].count(".") == 1 and new_uid()[len(UID_ROOT) + 1:].count(".") == 0
    assert is_own_uid(back.SOPClassUID, back.SOPInstanceUID)

    def designators(items):  # every coded concept anywhere in the content tree
        for item in items:
            for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence", "MeasurementUnitsCodeSequence"):
                for code in item.get(keyword, []):
                    yield code.CodingSchemeDesignator
            yield from designators(item.get("MeasuredValueSequence", []))
            yield from designators(item.get("ContentSequence", []))

    used = set(designators(back.ContentSequence))
    assert CODING_SCHEME in used and used <= {CODING_SCHEME, "SCT", "DCM", "UCUM", "RFC5646"}, used


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the test's own lower-case and malformed body parts
@pytest.mark.parametrize(("tags", "expected"), [
    ({}, {"BodyPartExamined": "CHEST"}),  # a chest is unpaired: no Laterality at all (Type 2C)
    ({"BodyPartExamined": "chest ", "Laterality": "R"}, {"BodyPartExamined": "CHEST"}),
    ({"BodyPartExamined": "KNEE", "ImageLaterality": "R"}, {"BodyPartExamined": "KNEE", "Laterality": "R"}),
    ({"BodyPartExamined": "KNEE", "Laterality": "L", "ImageLaterality": "R"},
     {"BodyPartExamined": "KNEE", "Laterality": "L"}),
    ({"BodyPartExamined": "KNEE"}, {"BodyPartExamined": "KNEE", "Laterality": ""}),  # paired, side unknown
    ({"BodyPartExamined": None, "ImageLaterality": "U"}, {"Laterality": ""}),  # body part unknown
    ({"BodyPartExamined": "not a code!"}, {"Laterality": ""}),
])
def test_the_sc_gets_the_sources_body_part_and_laterality_as_the_general_series_wants(tags, expected):
    back = _roundtrip(make_sc(source_dataset(**tags), _with_film()))
    assert {k: back[k].value for k in ("BodyPartExamined", "Laterality") if k in back} == expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_outputs_keep_the_sources_character_set_or_fall_back_to_utf8():
    from pneumoscan.dicom_out.source import FALLBACK_CHARACTER_SET

    japanese = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    for charset, name, written in ((["", "ISO 2022 IR 87"], japanese, ["", "ISO 2022 IR 87"]),
                                   ("ISO_IR 100", "Müller^Jürgen", "ISO_IR 100"),
                                   ("ISO_IR 192", "Müller^Jürgen=山田^太郎", "ISO_IR 192"),
                                   ("ISO-8859-1", "Müller^Jürgen", FALLBACK_CHARACTER_SET),  # not a DICOM term
                                   (None, "Doe^Jane", None)):
        src = _roundtrip(source_dataset(SpecificCharacterSet=charset, PatientName=name))  # as read from a file
        for made in (make_sr(src, _result()), make_sc(src, _with_film())):
            back = _roundtrip(made)
            assert back.get("SpecificCharacterSet") == written and str(back.PatientName) == name, charset
