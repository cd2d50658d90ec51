"""The reading room in real headless Chromium (issue 26, items 7 and 11): a reader reviews from the viewer with the
keys a and d and a note, the review is recorded under the name of the reader's token, and the viewer moves on to
the next case not yet reviewed; the worklist shows who reviewed, lists a study's films together under one header,
and names an upload from another tab (or after a reload) by its hashed name and time, not "Result 13"; the same
file sent twice is one row. Screenshots at 1280 x 800 and 390 x 844 in ``test-artifacts/readers_*.png`` (and in
``$PNEUMOSCAN_SHOTS`` when set)."""

# ruff: noqa: F811  (pytest fixtures imported from test_serve_e2e are parameters by name)
from __future__ import annotations

import base64
import hashlib
import io
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from imagefactory import png_bytes, synthetic_xray
from PIL import Image
from resultfactory import scored
from test_serve_e2e import ARTIFACTS, CHROMIUM, _browser, _no_horizontal_overflow, _serve, predictor  # noqa: F401
from test_serve_e2e_page import _axe

from pneumoscan.io import ImageContext
from pneumoscan.serve import ServeSettings, create_app
from pneumoscan.serve.security import parse_readers
from pneumoscan.store import WorklistStore

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not found at {CHROMIUM}")

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ALICE, BOB = "alice-e2e-token-0123456789abcdef", "bob-e2e-token-0123456789abcdefgh"
READERS = f"Dr Alice Lee {ALICE}\nbob {BOB}\n"
SHOTS = [ARTIFACTS] + ([Path(os.environ["PNEUMOSCAN_SHOTS"])] if os.environ.get("PNEUMOSCAN_SHOTS") else [])

#: The stored worklist: two studies of several films, a study of one film and two lone uploads; in the risk
#: order grouped by study: ACC-77 (95, 10), the lone upload (90), study 1.2.3 (60, 30, and its lateral not assessed),
#: the other lone upload (20).
ROWS = (
    ("s1-low", 0.30, {"study_uid": "1.2.840.99.1.2.3", "accession": "A1", "patient_id": "MRN-1", "view": "PA"}),
    ("lone-high", 0.90, {}),
    ("s1-mid", 0.60, {"study_uid": "1.2.840.99.1.2.3", "accession": "A1", "patient_id": "MRN-1", "view": "AP"}),
    ("acc-top", 0.95, {"accession": "ACC-77", "patient_id": "MRN-2", "view": "AP"}),
    ("acc-low", 0.10, {"accession": "ACC-77", "patient_id": "MRN-2", "view": "PA"}),
    ("lone-low", 0.20, {"view": "PA"}),
    ("s1-oos", 0.99, {"study_uid": "1.2.840.99.1.2.3", "accession": "A1", "patient_id": "MRN-1", "view": "LL"}),
)
ORDER = ["acc-top", "acc-low", "lone-high", "s1-mid", "s1-low", "s1-oos", "lone-low"]


def _thumb(seed: int) -> str:
    img = Image.fromarray(synthetic_xray(128, 104, seed=seed))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _shot(page, name: str, **kwargs) -> None:
    for folder in SHOTS:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"readers_{name}.png"), **kwargs)


@pytest.fixture
def reading_room(predictor, tmp_path):
    """A server with two readers and the stored worklist of :data:`ROWS` (ids by name)."""
    db = tmp_path / "w.db"
    ids = {}
    now = datetime.now(UTC)
    with WorklistStore(db) as store:
        for i, (name, p, ctx) in enumerate(ROWS):
            oos = name == "s1-oos"
            result = scored(name, p, context=ImageContext(**ctx), in_scope=not oos,
                            scope_reason="lateral view" if oos else "")
            ids[name] = store.add(result, input_sha256=hashlib.sha256(name.encode()).hexdigest(), source="upload",
                                  filename_hash="upload-" + hashlib.sha256(name.encode()).hexdigest()[:10],
                                  client="bob", created=now - timedelta(minutes=30 - i), thumbnail=_thumb(i))
    settings = ServeSettings(db=str(db), readers=parse_readers(READERS, "test readers"))
    serving = _serve(create_app(predictor, settings), settings)
    url = next(serving)
    yield url, ids
    next(serving, None)


def _page(browser, url: str, token: str, viewport=DESKTOP):
    context = browser.new_context(viewport=viewport)
    context.add_init_script(f"sessionStorage.setItem('pneumoscan-api-token', {token!r});")
    page = context.new_page()
    page.js_errors = []
    page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))
    page.goto(url)
    from playwright.sync_api import expect

    expect(page.locator("#model-line")).to_contain_text("seed-cnn")
    return page


def _api(page, path: str, token: str, **kwargs):
    return page.request.get(page.url.split("#")[0] + path, headers={"Authorization": f"Bearer {token}"}, **kwargs)


def test_a_review_in_the_viewer_is_the_readers_and_moves_to_the_next_unreviewed_case(reading_room):
    from playwright.sync_api import expect

    url, ids = reading_room
    with _browser() as browser:
        page = _page(browser, url, ALICE)
        # bob already reviewed the second case of the risk order
        r = page.request.post(url + f"api/v1/worklist/{ids['acc-low']}/review", data={"verdict": "agree"},
                              headers={"Authorization": f"Bearer {BOB}"})
        assert r.ok, r.text()
        cards = page.locator("#cards article.card")
        expect(cards).to_have_count(len(ROWS))
        cards.first.locator("button.film-open").click()
        dialog = page.locator(".pv-dialog")
        expect(dialog).to_have_attribute("data-case-index", "0")
        panel = dialog.locator(".pv-review")
        expect(panel.locator(".pv-review-as")).to_have_text("as Dr Alice Lee")
        expect(panel.locator(".pv-review-state")).to_have_text("Not reviewed yet.")
        _shot(page, "viewer_desktop")
        problems = _axe(page, "viewer with the review line")
        page.keyboard.press("a")
        # recorded under the token's reader, and on to the next case not yet reviewed (bob's is skipped)
        expect(dialog).to_have_attribute("data-case-index", "2", timeout=10_000)
        expect(panel.locator(".pv-review-said")).to_have_text("Agreed: saved. Next unreviewed case.")
        top = _api(page, f"api/v1/worklist/{ids['acc-top']}", ALICE).json()
        assert top["review"]["verdict"] == "agree" and top["review"]["reviewer"] == "Dr Alice Lee"
        # typing a note: its letters (h, k, j, a, d, i...) are the note's, not the viewer's or the review's keys
        note = panel.locator(".pv-review-note")
        note.click()
        page.keyboard.type("check the lateral; kid had a fever")
        expect(note).to_have_value("check the lateral; kid had a fever")
        expect(dialog).to_have_attribute("data-case-index", "2")
        expect(dialog).to_have_attribute("data-heatmap", "off")
        assert _api(page, f"api/v1/worklist/{ids['lone-high']}", ALICE).json()["review"] is None
        panel.locator("button[data-verdict='disagree']").click()
        expect(dialog).to_have_attribute("data-case-index", "3", timeout=10_000)
        high = _api(page, f"api/v1/worklist/{ids['lone-high']}", ALICE).json()["review"]
        assert high == {**high, "verdict": "disagree", "reviewer": "Dr Alice Lee",
                        "note": "check the lateral; kid had a fever"}
        # back on a reviewed case, the panel says who reviewed it and how
        page.keyboard.press("k")
        expect(dialog).to_have_attribute("data-case-index", "2")
        expect(panel.locator(".pv-review-state")).to_contain_text("Disagreed by Dr Alice Lee")
        page.keyboard.press("Escape")
        # the worklist names each review's reader
        rows = page.locator("#worklist tbody tr:not(.study-head)")
        expect(rows.nth(0).locator(".verdict")).to_have_text("Agreed by Dr Alice Lee")
        expect(rows.nth(1).locator(".verdict")).to_have_text("Agreed by bob")
        expect(rows.nth(2).locator(".verdict")).to_have_text("Disagreed by Dr Alice Lee: check the lateral; kid had a fever")
        events = _api(page, "api/v1/audit?event=review", ALICE).json()["events"]
        assert [e["client"] for e in events] == ["Dr Alice Lee", "Dr Alice Lee", "bob"]
        assert not page.js_errors, page.js_errors
        # the viewer's review line on a phone
        phone = _page(browser, url, BOB, PHONE)
        phone.locator("#cards article.card").first.locator("button.film-open").click()
        expect(phone.locator(".pv-review-state")).to_contain_text("Agreed by Dr Alice Lee")
        expect(phone.locator(".pv-review-as")).to_have_text("as bob")
        _shot(phone, "viewer_phone")
        box = phone.locator(".pv-review").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 1
        assert not phone.js_errors, phone.js_errors
    assert not problems, "\n".join(problems)


def test_the_worklist_groups_studies_and_names_uploads_apart_after_a_reload(reading_room, tmp_path):
    from playwright.sync_api import expect

    url, ids = reading_room
    films = []
    for seed in (11, 12):
        path = tmp_path / f"Doe_Jane_{seed}.png"  # a file name a patient's name could be in
        path.write_bytes(png_bytes(np.clip(synthetic_xray(400, 320, seed=seed), 0, 255).astype(np.uint8)))
        films.append(path)
    with _browser() as browser:
        page = _page(browser, url, ALICE)
        heads = page.locator("#worklist tbody tr.study-head")
        expect(heads).to_have_count(2)
        expect(heads.nth(0)).to_have_text("Study Patient MRN-2 · Acc. ACC-77: 2 films, riskiest first")
        expect(heads.nth(1)).to_have_text("Study Patient MRN-1 · Acc. A1: 3 films, riskiest first")
        order = [r["id"] for r in _api(page, "api/v1/worklist", ALICE).json()["results"]]
        assert order == [ids[n] for n in ORDER]
        assert page.locator("#worklist tbody tr.in-study").count() == 5
        # two uploads, the second file twice: one row for it, counted
        page.set_input_files("#file-input", [str(films[0]), str(films[1])])
        expect(page.locator("#worklist tbody tr:not(.study-head)")).to_have_count(len(ROWS) + 2, timeout=30_000)
        page.set_input_files("#file-input", [str(films[1])])
        expect(page.locator("#status")).to_contain_text("Done", timeout=30_000)
        expect(page.locator("#worklist tbody tr:not(.study-head)")).to_have_count(len(ROWS) + 2)
        expect(page.locator("#worklist .tag.repeat")).to_have_text(["Sent 2 times"])
        expect(page.locator("#cards article.card")).to_have_count(len(ROWS) + 2)  # no second card either
        expect(page.locator("#cards p.sent-before")).to_have_count(1)
        _shot(page, "worklist_desktop", full_page=True)
        problems = _axe(page, "worklist with studies and a repeat")
        # another tab (its own session: no file names): the uploads are told apart by hashed name and time
        for viewport, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
            other = _page(browser, url, BOB, viewport)
            expect(other.locator("#worklist tbody tr:not(.study-head)")).to_have_count(len(ROWS) + 2)
            labels = other.locator("#worklist tbody tr:not(.study-head) td.file > :first-child").all_text_contents()
            assert not [x for x in labels if re.fullmatch(r"Result \d+", x)], labels
            uploads = [x for x in labels if x.startswith("Upload ")]
            assert len(uploads) == 4 and len(set(uploads)) == 4, uploads
            assert all(re.fullmatch(r"Upload [0-9a-f]{8} · (PA · )?\d\d:\d\d:\d\d( [AP]M)?", x) for x in uploads), uploads
            assert not any("Doe" in x or "Jane" in x for x in labels)
            expect(other.locator("#worklist tbody tr.study-head")).to_have_count(2)
            _no_horizontal_overflow(other)
            _shot(other, f"worklist_other_tab_{name}", full_page=True)
            assert not other.js_errors, other.js_errors
        assert not page.js_errors, page.js_errors
    assert not problems, "\n".join(problems)
