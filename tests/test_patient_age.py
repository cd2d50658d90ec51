"""The gate reads ages as real systems write them (#26): "081Y", "81Y", "81", "81 Y", "6m", "030D", "4W"; a bare
number is years; without PatientAge, the age at the study from PatientBirthDate and StudyDate."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagefactory import dicom_bytes
from pneumoscan.gate.scope import metadata_reason
from pneumoscan.io import ImageContext, read_image_context


def _ctx(**tags: str) -> ImageContext:
    return ImageContext(format="DICOM", **tags)


@pytest.mark.parametrize("ctx", [
    _ctx(age="81"), _ctx(age="81Y"), _ctx(age="081Y"), _ctx(age="81 Y"), _ctx(age=" 081y "),
    _ctx(birth_date="19400305", study_date="20200305"),  # 80 years before the study
    _ctx(age="216M"), _ctx(age="0018"),
])
def test_adults_are_out_of_scope_however_the_age_is_written(ctx):
    assert "adult patient" in metadata_reason(ctx), ctx.age_years()


@pytest.mark.parametrize("ctx", [
    _ctx(age="004Y"), _ctx(age="4"), _ctx(age="18M"), _ctx(age="030D"), _ctx(age="4W"), _ctx(age="6m"),
    _ctx(birth_date="20170305", study_date="20200305"),  # 3 years before the study
    _ctx(age="garbage"), _ctx(birth_date="20200305", study_date="20170305"),  # unreadable: no reason to refuse
    _ctx(birth_date="2017", study_date="20200305"), _ctx(age="", birth_date="", study_date=""),
])
def test_children_and_unreadable_ages_stay_in_scope(ctx):
    assert metadata_reason(ctx) == ""


def test_patient_age_wins_over_the_birth_date_and_messages_say_where_the_age_came_from():
    both = _ctx(age="004Y", birth_date="19400305", study_date="20200305")
    assert both.age_years() == 4.0 and metadata_reason(both) == ""
    assert metadata_reason(_ctx(age="81")) == "adult patient (DICOM PatientAge 81)"
    by_date = metadata_reason(_ctx(birth_date="19400305", study_date="20200305"))
    assert by_date == "adult patient (80 years from DICOM PatientBirthDate and StudyDate)"


_UNITS = {"": 1.0, "Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}


@given(n=st.integers(0, 999), unit=st.sampled_from(sorted(_UNITS)), lower=st.booleans(),
       zeros=st.integers(0, 2), left=st.sampled_from(["", " ", "  "]), mid=st.sampled_from(["", " "]),
       right=st.sampled_from(["", " "]))
def test_every_written_form_of_an_age_reads_as_its_years(n, unit, lower, zeros, left, mid, right):
    digits = str(n).zfill(min(3, len(str(n)) + zeros))
    u = unit.lower() if lower else unit
    text = f"{left}{digits}{mid if u else ''}{u}{right}"
    assert _ctx(age=text).age_years() == pytest.approx(n / _UNITS[unit])


@given(st.text(max_size=8))
def test_no_text_breaks_the_age_reader(text):
    years = _ctx(age=text).age_years()
    assert years is None or years >= 0


def _real_header_film(**tags: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.full((96, 96), 900, np.uint16))))
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.parametrize("tags, adult", [
    ({"PatientAge": "81"}, True),
    ({"PatientBirthDate": "19400305", "StudyDate": "20200305"}, True),
    ({"PatientAge": "4"}, False),
    ({"PatientBirthDate": "20170305", "StudyDate": "20200305"}, False),
])
def test_the_header_reader_gives_the_gate_what_it_needs(tags, adult):
    ctx = read_image_context(_real_header_film(**tags), name="film.dcm")
    assert ("adult patient" in metadata_reason(ctx)) is adult
    assert "birth_date" not in ctx.to_dict() and "19400305" not in repr(ctx)  # never in an output
