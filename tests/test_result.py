"""THE result (``pneumoscan.result``): the decision is made once, by the result, from its probability, its model's
threshold and the gate's verdict; its caption is the one wording; its keys are every output's vocabulary."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from resultfactory import MODEL, scored, unread

from pneumoscan.constants import DECISION_WORDS, DISCLAIMER_SHORT, NOT_READ_WORDS
from pneumoscan.io import ImageContext
from pneumoscan.result import CONTEXT_KEYS, RESULT_KEYS, Explanation, ModelIdentity, Result, upsample_map


def test_the_decision_is_computed_from_probability_threshold_and_scope():
    assert scored("a", 0.5).decision == "PNEUMONIA" and scored("a", 0.5).positive  # at the threshold: flagged
    assert scored("a", 0.4999).decision == "NORMAL" and not scored("a", 0.4999).positive
    out = scored("a", 0.99, in_scope=False, scope_reason="blank or uniform image")
    assert (out.decision, out.positive, out.assessed, out.score) == ("OUT_OF_SCOPE", False, False, None)
    assert out.probability == 0.99  # kept for audit
    bad = unread("a", "not an image")
    assert (bad.decision, bad.positive, bad.read, bad.in_scope, bad.score) == ("", False, False, None, None)
    with pytest.raises(TypeError):
        Result("a", MODEL, probability=0.9, decision="NORMAL")  # never given: there is nothing to contradict
    # a new threshold or scope verdict gives a new decision, never a stale one
    assert scored("a", 0.6).replace(model=ModelIdentity("m", "v", 0.7)).decision == "NORMAL"
    assert scored("a", 0.6).replace(in_scope=False, scope_reason="lateral").decision == "OUT_OF_SCOPE"


@pytest.mark.parametrize("kwargs, match", [
    ({"probability": float("nan")}, "probability"), ({"probability": 1.5}, "probability"),
    ({"probability": None}, "needs the error"), ({"probability": 0.5, "error": "x"}, "no error"),
    ({"probability": None, "error": "x", "in_scope": True}, "no scope verdict"),
])
def test_an_inconsistent_result_cannot_be_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Result("a", MODEL, **kwargs)
    with pytest.raises(ValueError, match="threshold"):
        ModelIdentity("m", "v", 1.2)


def test_the_caption_is_the_one_wording():
    assert scored("a", 0.734, threshold=0.41).caption() == (
        f"{DECISION_WORDS['PNEUMONIA']}. Score 73.4 / 100 (threshold 41.0). {DISCLAIMER_SHORT}")
    assert scored("a", 0.2).caption() == f"{DECISION_WORDS['NORMAL']}. Score 20.0 / 100 (threshold 50.0). " \
                                         f"{DISCLAIMER_SHORT}"
    out = scored("a", 0.97, in_scope=False, scope_reason="lateral view (DICOM ViewPosition LL)")
    assert out.caption() == f"{DECISION_WORDS['OUT_OF_SCOPE']}: lateral view (DICOM ViewPosition LL). " \
                            f"{DISCLAIMER_SHORT}"
    assert "97" not in out.caption()  # no score for a film that was not assessed
    assert unread("a", "file not found").caption() == f"{NOT_READ_WORDS}: file not found"


def test_to_dict_has_the_one_vocabulary_and_never_the_patients_name():
    ctx = ImageContext(format="DICOM", patient_id="P1", patient_name="DOE^JANE", age="004Y", view="PA", sex="F")
    for r in (scored("a", 0.7, context=ctx), scored("b", 0.7, in_scope=False, scope_reason="x"), unread("c")):
        d = r.to_dict()
        assert tuple(d) == RESULT_KEYS and tuple(d["context"]) == CONTEXT_KEYS
        assert "DOE" not in repr(d) and "DOE" not in repr(r)
    d = scored("a", 0.7, context=ctx).to_dict()
    assert (d["decision"], d["decision_text"], d["score"], d["score_threshold"]) == (
        "PNEUMONIA", DECISION_WORDS["PNEUMONIA"], 70.0, 50.0)
    assert d["context"] == {**dict.fromkeys(CONTEXT_KEYS, ""), "patient_id": "P1", "age": "004Y", "view": "PA",
                            "sex": "F"}
    assert ImageContext.from_dict(d["context"]) == dataclasses.replace(ctx, format="", patient_name="")


def test_an_explanation_is_shown_only_for_an_assessed_film():
    cam = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    flagged = scored("a", 0.9, explanation=Explanation(cam), film=np.zeros((40, 30), np.uint8))
    heat = flagged.heatmap()
    assert heat.shape == (40, 30) and heat.max() == pytest.approx(1.0) and heat.min() >= 0
    assert flagged.heatmap((8, 8)).shape == (8, 8)
    refused = flagged.replace(in_scope=False, scope_reason="blank")
    assert refused.heatmap() is None  # a map of "evidence" on a film the model does not assess reads as a finding
    assert flagged.without_film().film is None and flagged.without_film().explanation is not None
    assert scored("b", 0.9).heatmap((4, 4)) is None


def test_upsample_map_is_torch_bilinear_with_pixel_centres():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    for low, size in (((5, 5), (160, 130)), ((10, 7), (33, 91)), ((1, 1), (4, 4)), ((20, 20), (20, 20))):
        cam = rng.normal(size=low).astype(np.float32)
        ref = F.interpolate(torch.from_numpy(cam)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        ref = ref.clamp(min=0)
        ref = (ref / ref.max()).numpy() if float(ref.max()) > 1e-12 else np.zeros(size, np.float32)
        np.testing.assert_allclose(upsample_map(cam, size), ref, atol=1e-5)
    assert not upsample_map(-np.ones((3, 3)), (9, 9)).any()  # no positive evidence: all zeros


def test_only_a_flagged_film_gets_a_cause():
    model = ModelIdentity("m", "v", 0.5, cause_threshold=0.4)
    viral = Result.scored("a", 0.9, model, cause_probability=0.4)  # at the cause threshold: viral
    assert (viral.cause, viral.cause_text, viral.cause_score, viral.cause_score_threshold) == (
        "VIRAL", "pattern more like viral", 40.0, 40.0)
    assert Result.scored("a", 0.9, model, cause_probability=0.39).cause == "BACTERIAL"
    for r in (Result.scored("a", 0.49, model, cause_probability=0.9),  # not flagged
              Result.scored("a", 0.9, model, in_scope=False, scope_reason="lateral", cause_probability=0.9),
              Result.scored("a", 0.9, ModelIdentity("m", "v", 0.5), cause_probability=0.9),  # no cause threshold
              Result.scored("a", 0.9, model)):  # no cause output
        assert (r.cause, r.cause_text, r.cause_score) == ("", "", None)
        assert r.to_dict()["cause_probability"] is None  # never shown without a cause
    assert "Pattern more like viral (viral score 40.0 / 100, threshold 40.0)." in viral.caption()
    assert "pattern" not in Result.scored("a", 0.2, model, cause_probability=0.9).caption()
    with pytest.raises(ValueError, match="cause_probability"):
        Result.scored("a", 0.9, model, cause_probability=1.5)
    with pytest.raises(ValueError, match="cause_threshold"):
        ModelIdentity("m", "v", 0.5, cause_threshold=-0.1)
