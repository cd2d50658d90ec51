"""The worklist: rows, the one ranking (in scope by risk, then out of scope, then unreadable), CSV/JSON columns,
batch counts and the drift verdict's helpers."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from pneumoscan.constants import UNFAMILIAR_CAUTION
from pneumoscan.gate.drift import MIN_IMAGES, DriftResult, NotEnoughImagesError
from pneumoscan.io import ImageContext
from resultfactory import scored, unread
from pneumoscan.pseudonym import pseudonymise, pseudonymise_uid
from pneumoscan.result import Result
from pneumoscan.gate.scope import OUT_OF_SCOPE
from pneumoscan.worklist.job import summary_line
from pneumoscan.worklist import (
    CONTEXT_COLUMNS,
    RESULT_COLUMNS,
    batch_drift,
    context_columns,
    count_results,
    drift_message,
    rank,
    worklist_row,
    worklist_rows,
    write_results,
)

BLANK = "blank or uniform image"
ADULT = "adult patient (DICOM PatientAge 045Y)"


def _results() -> list[Result]:
    """A batch in input order: in scope, out of scope (with the highest probability of all), unreadable, ..."""
    return [
        scored("low.png", 0.20, in_scope=True),
        scored("blank.png", 0.99, in_scope=False, scope_reason=BLANK),
        unread("broken.png", "not an image"),
        scored("high.png", 0.90, in_scope=True),
        scored("adult.dcm", 0.95, in_scope=False, scope_reason=ADULT),
        scored("mid.png", 0.50, in_scope=True),
    ]


def test_columns_in_order():
    assert RESULT_COLUMNS == ("rank", "path", "patient_id", "accession", "study_date", "age", "sex", "view",
                              "score", "score_threshold", "score_calibration", "decision_text", "probability",
                              "decision", "positive",
                              "in_scope", "scope_reason", "scope_caution", "threshold", "cause", "cause_text",
                              "cause_score",
                              "cause_probability", "cause_threshold", "error", "study_uid", "series_uid", "sop_uid",
                              "heatmap", "dicom_out", "model_name", "model_version", "created", "disclaimer")
    assert set(CONTEXT_COLUMNS) <= set(RESULT_COLUMNS)


def test_an_out_of_scope_row_is_not_assessed_but_keeps_its_probability_for_audit():
    row = worklist_row(scored("blank.png", 0.99, in_scope=False, scope_reason=BLANK))
    assert row["decision"] == OUT_OF_SCOPE and row["positive"] is False
    assert row["probability"] == 0.99 and row["rank"] is None
    assert row["in_scope"] is False and row["scope_reason"] == BLANK
    ok = worklist_row(scored("a.png", 0.7, in_scope=True))
    assert (ok["decision"], ok["positive"], ok["in_scope"], ok["scope_reason"]) == ("PNEUMONIA", True, True, "")
    assert worklist_row(scored("b.png", 0.3, in_scope=True))["decision"] == "NORMAL"
    bad = worklist_row(unread("c.png", "not an image"))
    assert (bad["decision"], bad["positive"], bad["in_scope"], bad["probability"]) == ("", None, None, None)


def test_rank_puts_out_of_scope_after_every_scored_image_and_never_ranks_it():
    rows = worklist_rows(_results())
    assert [r["path"] for r in rows] == ["high.png", "mid.png", "low.png", "blank.png", "adult.dcm", "broken.png"]
    assert [r["rank"] for r in rows] == [1, 2, 3, None, None, None]
    assert [r["decision"] for r in rows] == ["PNEUMONIA", "PNEUMONIA", "NORMAL", OUT_OF_SCOPE, OUT_OF_SCOPE, ""]
    assert not any(r["positive"] for r in rows[3:])


def test_rank_clears_a_stale_rank_of_an_out_of_scope_row_and_keeps_input_order_among_them():
    rows = [{"id": 0, "probability": 0.1, "in_scope": False, "rank": 1}, {"id": 1, "probability": 0.3},
            {"id": 2, "probability": 0.9, "in_scope": False}, {"id": 3, "probability": None},
            {"id": 4, "probability": 0.2, "in_scope": True}]
    ordered = rank(rows)
    assert [r["id"] for r in ordered] == [1, 4, 0, 2, 3]
    assert [r.get("rank") for r in rows] == [None, 1, None, None, 2]


def test_csv_and_json_carry_the_scope_columns(tmp_path):
    rows = worklist_rows(_results())
    out = write_results(rows, tmp_path / "w.csv")
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == [c for c in RESULT_COLUMNS if c not in ("heatmap", "dicom_out")]  # none made
    assert [t["rank"] for t in table] == ["1", "2", "3", "", "", ""]
    assert [t["in_scope"] for t in table] == ["true", "true", "true", "false", "false", ""]
    assert [t["scope_reason"] for t in table] == ["", "", "", BLANK, ADULT, ""]
    assert [t["decision"] for t in table][3:] == [OUT_OF_SCOPE, OUT_OF_SCOPE, ""]
    assert table[3]["probability"] == "0.990000" and table[3]["positive"] == "false"
    doc = json.loads(write_results(rows, tmp_path / "w.json", info={"drift": None, "drift_reason": "x"}).read_text())
    assert doc["drift"] is None and doc["drift_reason"] == "x"
    blank = doc["results"][3]
    assert blank == {"rank": None, "path": "blank.png", "score": None, "score_threshold": 50.0,
                     "decision_text": "Not assessed (out of scope)", "probability": 0.99, "decision": OUT_OF_SCOPE,
                     "positive": False, "in_scope": False, "scope_reason": BLANK, "scope_caution": "",
                     "threshold": 0.5, "error": "",
                     "cause": "", "cause_text": "", "cause_score": None, "cause_probability": None,
                     "cause_threshold": None, "score_calibration": "",
                     "model_name": "seed-cnn", "model_version": "0123456789ab", **{c: "" for c in CONTEXT_COLUMNS}}


def test_count_results():
    assert count_results(_results()) == {"n_files": 6, "n_in_scope": 3, "n_cautioned": 0, "n_out_of_scope": 2,
                                         "n_unreadable": 1}
    assert count_results([]) == {"n_files": 0, "n_in_scope": 0, "n_cautioned": 0, "n_out_of_scope": 0,
                                 "n_unreadable": 0}
    cautioned = scored("site.png", 0.8, scope_caution=UNFAMILIAR_CAUTION)
    assert count_results([*_results(), cautioned]) == {"n_files": 7, "n_in_scope": 4, "n_cautioned": 1,
                                                      "n_out_of_scope": 2, "n_unreadable": 1}


def test_a_cautioned_film_is_scored_ranked_and_carries_its_caution_in_every_column(tmp_path):
    """A chest film unlike the training films is in scope: ranked by its score like any other, flagged when above
    the threshold, with the caution in its row, its CSV column and its JSON."""
    rows = worklist_rows([*_results(), scored("site.png", 0.8, scope_caution=UNFAMILIAR_CAUTION)])
    site = next(r for r in rows if r["path"] == "site.png")
    assert (site["rank"], site["in_scope"], site["decision"], site["positive"]) == (2, True, "PNEUMONIA", True)
    assert site["scope_caution"] == UNFAMILIAR_CAUTION and site["scope_reason"] == "" and site["score"] == 80.0
    assert all(r["scope_caution"] == "" for r in rows if r["path"] != "site.png")
    with open(write_results(rows, tmp_path / "w.csv"), newline="") as fh:
        table = {t["path"]: t for t in csv.DictReader(fh)}
    assert table["site.png"]["scope_caution"] == UNFAMILIAR_CAUTION and table["site.png"]["rank"] == "2"
    assert table["blank.png"]["scope_caution"] == ""
    doc = json.loads(write_results(rows, tmp_path / "w.json").read_text())
    assert [r["scope_caution"] for r in doc["results"] if r["path"] == "site.png"] == [UNFAMILIAR_CAUTION]
    counts = count_results([*_results(), scored("site.png", 0.8, scope_caution=UNFAMILIAR_CAUTION)])
    line = summary_line(rows, counts, 0.5)
    assert "4 of 7 image(s) scored" in line and "scored with a caution (unfamiliar film" in line and "): 1;" in line
    assert "caution" not in summary_line(worklist_rows(_results()), count_results(_results()), 0.5)
    with pytest.raises(ValueError, match="only a film that is scored in scope carries a caution"):
        scored("x.png", 0.8, in_scope=False, scope_reason=BLANK, scope_caution=UNFAMILIAR_CAUTION)


def _drift(shifted: bool) -> DriftResult:
    return DriftResult(shifted, 3.1 if shifted else 0.8, 1.4, 312, 312, 3.1 if shifted else 0.8, 0.5, 0.05)


def test_drift_message_says_what_to_do_only_when_shifted():
    shifted = drift_message(_drift(True))
    assert shifted.startswith("Drift check on 312 in-scope image(s): SHIFTED (statistic 3.10 > threshold 1.40)")
    assert "differ from the training data" in shifted and "calibrate" in shifted
    calm = drift_message(_drift(False))
    assert calm == "Drift check on 312 in-scope image(s): not shifted (statistic 0.80 <= threshold 1.40)"


def _in_scope(n: int) -> list[Result]:
    return [scored(f"{i}.png", 0.5, in_scope=True, features=np.ones(4), descriptor=np.ones(7)) for i in range(n)]


def test_batch_drift_gives_the_result_or_why_not():
    calls = []

    def check(results):
        calls.append(len(results))
        return _drift(False)

    no_ref = SimpleNamespace(reference=None, check_drift=check)
    result, why = batch_drift(no_ref, _in_scope(60))
    assert result is None and "no reference" in why and "scripts/build_reference.py" in why
    with_ref = SimpleNamespace(reference=object(), check_drift=check)
    result, why = batch_drift(with_ref, _in_scope(MIN_IMAGES - 1) + [r for r in _results() if not r.in_scope])
    assert result is None and why == f"only {MIN_IMAGES - 1} in-scope image(s); a drift check needs at least 50"
    assert calls == []  # not even tried
    result, why = batch_drift(with_ref, _in_scope(MIN_IMAGES))
    assert result == _drift(False) and why == "" and calls == [MIN_IMAGES]

    def featureless(results):
        raise NotEnoughImagesError("a drift check needs at least 50 in-scope images, got 0")

    result, why = batch_drift(SimpleNamespace(reference=object(), check_drift=featureless), _in_scope(60))
    assert result is None and "got 0" in why


@pytest.mark.parametrize("n_out", [0, 3])
def test_out_of_scope_and_unreadable_files_do_not_count_towards_the_drift_minimum(n_out):
    batch = _in_scope(MIN_IMAGES - 1) + [scored("x.png", 0.9, in_scope=False, scope_reason=BLANK)] * n_out
    _, why = batch_drift(SimpleNamespace(reference=object(), check_drift=lambda r: _drift(True)), batch)
    assert why.startswith(f"only {MIN_IMAGES - 1} in-scope")


CONTEXT = ImageContext(format="DICOM", modality="DX", body_part="CHEST", view="PA", age="004Y",
                       sex="F", patient_id="MRN-12345", patient_name="Doe^Jane", accession="ACC-777",
                       study_date="20240301", study_uid="1.2.3.4", series_uid="1.2.3.4.5", sop_uid="1.2.3.4.5.6")


def test_rows_carry_the_dicom_context_and_never_the_patients_name(tmp_path):
    rows = worklist_rows([scored("film.dcm", 0.8, in_scope=True, context=CONTEXT),
                          scored("photo.png", 0.3, in_scope=True, context=ImageContext(format="PNG")),
                          unread("broken.dcm", "damaged")])
    film, photo, broken = rows
    assert {c: film[c] for c in CONTEXT_COLUMNS} == {
        "patient_id": "MRN-12345", "accession": "ACC-777", "study_date": "20240301", "age": "004Y", "sex": "F",
        "view": "PA", "study_uid": "1.2.3.4", "series_uid": "1.2.3.4.5", "sop_uid": "1.2.3.4.5.6"}
    assert all(photo[c] == "" and broken[c] == "" for c in CONTEXT_COLUMNS)
    for path in (write_results(rows, tmp_path / "w.csv"), write_results(rows, tmp_path / "w.json")):
        text = path.read_text()
        assert "Doe" not in text and "Jane" not in text and "MRN-12345" in text
    with open(tmp_path / "w.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert (table[0]["patient_id"], table[0]["age"], table[0]["view"], table[0]["sop_uid"]) == (
        "MRN-12345", "004Y", "PA", "1.2.3.4.5.6")
    assert json.loads((tmp_path / "w.json").read_text())["results"][0]["accession"] == "ACC-777"


def test_pseudonymised_rows_hide_the_identifiers_and_keep_the_rest(tmp_path):
    key = b"a test site secret, not for use"
    row = worklist_row(scored("film.dcm", 0.8, in_scope=True, context=CONTEXT), pseudonym_key=key)
    assert row["patient_id"] == pseudonymise("MRN-12345", key) and row["patient_id"].startswith("anon-")
    assert row["accession"] == pseudonymise("ACC-777", key)
    assert row["study_uid"] == pseudonymise_uid("1.2.3.4", key) and row["sop_uid"].startswith("2.25.")
    assert (row["study_date"], row["age"], row["sex"], row["view"]) == ("20240301", "004Y", "F", "PA")
    again = context_columns(CONTEXT, key)
    assert again == {c: row[c] for c in CONTEXT_COLUMNS}  # same input, same key: same pseudonyms
    assert context_columns(CONTEXT, b"another secret of some length") != again
    text = write_results([row], tmp_path / "w.csv").read_text()
    assert "MRN-12345" not in text and "ACC-777" not in text and "1.2.3.4.5.6" not in text
    assert context_columns(None, key) == {c: "" for c in CONTEXT_COLUMNS}


def test_dicom_out_column_lists_the_files_in_csv_and_json(tmp_path):
    rows = worklist_rows([scored("film.dcm", 0.8, in_scope=True, context=CONTEXT)])
    rows[0]["dicom_out"] = ["out/1.2.dcm", "out/1.3.dcm"]
    with open(write_results(rows, tmp_path / "w.csv"), newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0])[-5] == "dicom_out" and table[0]["dicom_out"] == "out/1.2.dcm;out/1.3.dcm"
    assert json.loads(write_results(rows, tmp_path / "w.json").read_text())["results"][0]["dicom_out"] == [
        "out/1.2.dcm", "out/1.3.dcm"]


def test_csv_speaks_the_pages_language_and_says_what_made_it(tmp_path):
    """The score and threshold on 0-100, the decision in the one wording (DECISION_WORDS) next to the machine
    label, and on every row the model, its version, when it was written and the disclaimer."""
    from datetime import UTC, datetime

    from pneumoscan.constants import DECISION_WORDS, DISCLAIMER, NOT_READ_WORDS

    rows = worklist_rows(_results())
    rows[0]["path"] = "=cmd|' /C calc'!A0.png"  # still neutralised
    info = {"model": "efficientnet-lite0", "model_version": "1.2.0+site"}
    with open(write_results(rows, tmp_path / "w.csv", info=info), newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [t["score"] for t in table] == ["90.0", "50.0", "20.0", "", "", ""]  # no risk when not assessed
    assert {t["score_threshold"] for t in table} == {"50.0"}
    assert [t["decision_text"] for t in table] == [DECISION_WORDS["PNEUMONIA"]] * 2 + [DECISION_WORDS["NORMAL"]] + [
        DECISION_WORDS["OUT_OF_SCOPE"]] * 2 + [NOT_READ_WORDS]
    assert [t["decision"] for t in table] == ["PNEUMONIA", "PNEUMONIA", "NORMAL", OUT_OF_SCOPE, OUT_OF_SCOPE, ""]
    assert table[0]["path"].startswith("'=")
    for t in table:  # each row names the model that made its result; info only fills rows that name none
        assert (t["model_name"], t["model_version"], t["disclaimer"]) == ("seed-cnn", "0123456789ab", DISCLAIMER)
        written = datetime.strptime(t["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - written).total_seconds()) < 120
