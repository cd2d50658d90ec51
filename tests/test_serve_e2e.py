"""End to end in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Nothing is downloaded at test time: Playwright drives the system browser. Screenshots are saved as test
artifacts in ``test-artifacts/`` (``serve_e2e*.png``; the scope gate and the drift banner at 1440 x 900 and
390 x 844 in ``serve_scope_*.png``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from conftest import fullres_samples_path
from imagefactory import dicom_bytes, jpeg_bytes, png_bytes, synthetic_xray

from pneumoscan.checkpoint import save_checkpoint
from pneumoscan.config import Config
from pneumoscan.gate.drift import MIN_IMAGES, DriftResult
from pneumoscan.inference.predictor import Predictor
from pneumoscan.models import create_model, default_preprocessing
from pneumoscan.serve import ServeSettings, create_app, uvicorn_config
from pneumoscan.serve.routes.worklist import STORED_COLUMNS

CHROMIUM = os.environ.get("PNEUMOSCAN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"Chromium not found at {CHROMIUM}; scripts/test.sh installs Debian's chromium"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKEN = "e2e-token-0123456789abcdef"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    meta = {"model": "seed-cnn", "config": Config().to_dict(), "classes": ["NORMAL", "PNEUMONIA"], "epoch": 1,
            "preprocessing": default_preprocessing("seed-cnn", 96).to_dict(),
            "operating_point": {"threshold": 0.5, "method": "target_sensitivity", "target_sensitivity": 0.95}}
    save_checkpoint(path, create_model("seed-cnn").state_dict(), meta)
    return Predictor.from_checkpoint(path)


@pytest.fixture
def server(predictor):
    """A fresh server (and worklist database) per test: the page shows the stored recent results as cards on
    load, so one test's uploads would otherwise appear in the next one's."""
    yield from _serve(create_app(predictor), ServeSettings())


@pytest.fixture(scope="module")
def token_server(predictor):
    settings = ServeSettings(token=TOKEN)
    yield from _serve(create_app(predictor, settings), settings)


def _serve(app, settings):
    port = _free_port()
    srv = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, settings, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


def _sample_image(tmp_path: Path) -> Path:
    samples = sorted((fullres_samples_path() / "PNEUMONIA").glob("*.jpeg")) if fullres_samples_path().is_dir() else []
    if samples:
        return samples[0]
    path = tmp_path / "sample.jpeg"
    path.write_bytes(jpeg_bytes(synthetic_xray(900, 760)))
    return path


def _another_file(path: Path, n: int, folder: Path) -> Path:
    """The same picture as another file (``n`` bytes after the image's end): the server counts the very same file
    sent again as one result (issue 26, item 11), so a test that wants a new row sends another file (written in
    ``folder``, under the same name)."""
    if not n:
        return path
    copy = folder / f"copy-{n}" / path.name  # the same name, for the tests that look for it
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(path.read_bytes() + b"\0" * n)
    return copy


def _launch(pw):
    return pw.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", "--disable-quic"],
    )


@contextlib.contextmanager
def _browser():
    """Debian's Chromium under Playwright, closed however the test ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            yield browser
        finally:
            browser.close()


def _csv(text: str) -> list[dict[str, str]]:
    """A downloaded worklist CSV: its header must be the server's columns (the page builds no CSV of its own)."""
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == STORED_COLUMNS, reader.fieldnames
    return list(reader)


def _api_rows(page, query: str = "", token: str | None = None) -> list[dict]:
    """The stored worklist as the server lists it (the page's own origin)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return page.request.get(page.url.split("#")[0] + "api/v1/worklist?" + query, headers=headers).json()["results"]


def _films(tmp_path: Path, n: int = 4) -> list[Path]:
    """Films that the tiny model scores apart, a blank page (not assessed), an unreadable file and a DICOM film
    with its patient's context."""
    import pydicom

    files = []
    for i, (h, w) in enumerate(((900, 760), (700, 640), (820, 600), (640, 560))[:n]):
        img = synthetic_xray(h, w, seed=i).astype(np.int16)
        img[: h // (i + 2)] += 25 * i
        path = tmp_path / f"film-{i}.png"
        path.write_bytes(png_bytes(np.clip(img, 0, 255).astype(np.uint8)))
        files.append(path)
    blank = tmp_path / "blank-page.png"
    blank.write_bytes(png_bytes(np.full((300, 240), 235, np.uint8)))
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    dcm = tmp_path / "chest.dcm"
    dcm.write_bytes(dicom_bytes(synthetic_xray(512, 448, seed=7)))
    ds = pydicom.dcmread(dcm)
    ds.PatientID, ds.AccessionNumber, ds.PatientAge, ds.ViewPosition = "MRN-4711", "ACC-0815", "004Y", "PA"
    ds.PatientSex, ds.StudyDate = "F", "20261126"
    ds.save_as(dcm)
    return [*files, blank, bad, dcm]


def test_upload_shows_card_heatmap_and_worklist(server, tmp_path):
    from playwright.sync_api import expect

    good = _sample_image(tmp_path)
    bad = tmp_path / "not-an-xray.png"
    bad.write_text("this is not an image")
    ARTIFACTS.mkdir(exist_ok=True)
    with _browser() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(server)
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        expect(page.locator(".disclaimer")).to_contain_text("not a diagnosis")
        # Keyboard: the drop zone is focusable and opens the file chooser with Enter.
        page.focus("#dropzone")
        assert page.evaluate("document.activeElement.id") == "dropzone"
        # The file chooser opened by Enter did not always fire in a fresh CI run; set the files on the
        # input the drop zone drives (its change handler is what uploads).
        heatmap_box = page.get_by_label(re.compile("Compute heatmaps"))
        expect(heatmap_box).not_to_be_checked()  # unticked by default (#18): the viewer computes them on demand
        heatmap_box.check()
        page.set_input_files("#file-input", [str(good), str(bad)])
        cards = page.locator("article.card")
        expect(cards).to_have_count(2, timeout=30_000)
        ok_card = page.locator("article.card:not(.error)")
        expect(ok_card.locator(".prob")).to_contain_text(re.compile(r"^\d{1,3}\.\d / 100$"))
        expect(ok_card.locator(".decision")).to_have_count(1)
        # One line on what the result does not say and where the model is weakest (MODEL_CARD.md).
        limits = ok_card.locator("p.limits")
        expect(limits).to_have_count(1)
        expect(limits).to_contain_text("says nothing about other findings (effusion, masses, tuberculosis)")
        expect(limits).to_contain_text("subtle viral pneumonia")
        expect(page.locator("article.card.error p.limits")).to_have_count(0)
        expect(page.locator("article.card.error")).to_contain_text("not-an-xray.png")
        img = ok_card.locator("img")
        before = img.get_attribute("src")
        toggle = ok_card.locator("button.toggle")
        toggle.click()
        expect(toggle).to_have_attribute("aria-pressed", "true")
        after = img.get_attribute("src")
        assert before.startswith("data:image/png") and after.startswith("data:image/png") and before != after
        rows = page.locator("#worklist tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text(good.name)
        # The CSV is the server's (GET api/v1/worklist.csv, the filters and order on screen), saved under its name.
        with page.expect_download() as dl:
            page.click("#download-csv")
        assert re.fullmatch(r"pneumoscan-worklist-\d{8}T\d{6}Z\.csv", dl.value.suggested_filename)
        csv_text = Path(dl.value.path()).read_text()
        stored = _api_rows(page, "order=risk")
        lines = _csv(csv_text)
        assert [int(r["id"]) for r in lines] == [r["id"] for r in stored]
        assert [r["rank"] for r in lines] == ["1", ""] and lines[1]["decision_text"] == "Could not be read"
        assert good.name not in csv_text and "not-an-xray.png" not in csv_text  # the server never stores names
        # A reader's review: a note, then Agree (keyboard focus stays on the button after the re-render).
        first = rows.nth(0)
        first.get_by_label(f"Review note for {good.name}").fill("consolidation, right lower lobe")
        first.get_by_role("button", name=f"Agree with the result for {good.name}", exact=True).click()
        expect(rows.nth(0).locator(".verdict")).to_have_text("Agreed: consolidation, right lower lobe")
        expect(rows.nth(0).get_by_role("button", name=f"Agree with the result for {good.name}", exact=True)).to_have_attribute(
            "aria-pressed", "true")
        assert page.evaluate("document.activeElement.dataset.verdict") == "agree"
        expect(rows.nth(1).get_by_role("button")).to_have_count(0)  # an unreadable file has nothing to review
        page.screenshot(path=str(ARTIFACTS / "serve_e2e.png"), full_page=True)
        # The worklist is the server's: a reload keeps it, highest risk first, with the review.
        page.reload()
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text(good.name)  # this tab remembers the names of its own uploads
        expect(rows.nth(0).locator(".verdict")).to_have_text("Agreed: consolidation, right lower lobe")
        expect(rows.nth(1)).to_contain_text("Could not be read")
        # The stored results come back as cards, in risk order, with their thumbnails (the films were this tab's).
        expect(page.locator("article.card.stored")).to_have_count(2)
        expect(page.locator("article.card.stored").nth(0)).to_have_attribute("aria-label", good.name)
        assert page.locator("article.card.stored img").first.get_attribute("src").startswith("data:image/jpeg")
        # Another browser (no names remembered) sees the same worklist; the server never stored a file name.
        other = browser.new_page(viewport={"width": 1366, "height": 900})
        other.goto(server)
        other_rows = other.locator("#worklist tbody tr")
        expect(other_rows).to_have_count(2)
        expect(other_rows.nth(0)).to_contain_text("Agreed")
        assert good.name not in other.locator("#worklist").inner_text()
        other.close()
    assert (ARTIFACTS / "serve_e2e.png").stat().st_size > 10_000


def test_page_asks_for_the_token_and_csv_neutralises_formulas(token_server, tmp_path):
    from playwright.sync_api import expect

    good = _sample_image(tmp_path)
    evil = tmp_path / "=HYPERLINK(1).png"  # a legal file name that a spreadsheet would run as a formula
    evil.write_text("not an image")
    with _browser() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(token_server)
        login = page.locator("#login")
        expect(login).to_be_visible()
        expect(page.locator("#login-msg")).to_contain_text("API token")
        page.fill("#token", "wrong-token-0123456789")
        page.click("#login button[type=submit]")
        expect(page.locator("#login-msg")).to_contain_text("not accepted")
        page.fill("#token", TOKEN)
        page.click("#login button[type=submit]")
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        expect(login).to_be_hidden()
        page.set_input_files("#file-input", [str(good), str(evil)])
        expect(page.locator("article.card")).to_have_count(2, timeout=30_000)
        expect(page.locator("article.card:not(.error) .prob")).to_contain_text("/ 100")
        # A reader's note that a spreadsheet would run as a formula; the CSV (fetched with the token) defuses it.
        row = page.locator("#worklist tbody tr", has=page.locator("a.card-link", has_text=good.name))
        row.get_by_label(f"Review note for {good.name}").fill("=HYPERLINK(1)")
        row.get_by_role("button", name=f"Agree with the result for {good.name}", exact=True).click()
        expect(row.locator(".verdict")).to_have_text("Agreed: =HYPERLINK(1)")
        with page.expect_download() as dl:
            page.click("#download-csv")
        text = Path(dl.value.path()).read_text()
        lines = _csv(text)
        assert [(r["review"], r["review_note"]) for r in lines if r["review"]] == [("agree", "'=HYPERLINK(1)")], lines
        assert "=HYPERLINK(1).png" not in text  # the file's name never reaches the server's store
        page.screenshot(path=str(ARTIFACTS / "serve_e2e_token.png"), full_page=True)


class _ShiftedCheck:
    """A drift check that always finds the site shifted."""

    def test(self, features, descriptors, flag_rate=None):
        n = len(features)
        return DriftResult(True, 3.2, 1.3, n, n, 3.2, 0.4, 0.05)


class _ShiftedSite:
    """The e2e predictor, with its drift check stubbed to report a shifted site."""

    def __init__(self, inner):
        self._inner = inner
        self.drift = _ShiftedCheck()

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.fixture(scope="module")
def shifted_server(predictor):
    settings = ServeSettings(token=TOKEN)
    app = create_app(_ShiftedSite(predictor), settings)
    window = app.state.pneumoscan.drift
    result = predictor.assess(predictor.read(synthetic_xray(300, 240)))
    assert result.assessed and result.features is not None
    for _ in range(MIN_IMAGES):  # as if the site had already sent 50 in-scope films
        window.record(result)
    yield from _serve(app, settings)


def _no_horizontal_overflow(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.evaluate("window.innerWidth")
    assert width <= viewport, f"the page is {width} px wide in a {viewport} px viewport"


def test_not_assessed_card_and_drift_banner(shifted_server, tmp_path):
    from playwright.sync_api import expect

    good = _sample_image(tmp_path)
    blank = tmp_path / "blank-page.png"
    blank.write_bytes(png_bytes(np.full((300, 240), 235, np.uint8)))
    ARTIFACTS.mkdir(exist_ok=True)
    with _browser() as browser:
        for i, (name, viewport) in enumerate((("desktop", {"width": 1440, "height": 900}),
                                              ("phone", {"width": 390, "height": 844}))):
            page = browser.new_page(viewport=viewport)
            page.goto(shifted_server)
            page.fill("#token", TOKEN)
            page.click("#login button[type=submit]")
            expect(page.locator("#model-line")).to_contain_text("seed-cnn")
            banner = page.locator("#drift-banner")
            expect(banner).to_be_visible()  # checked on sign-in: the site was shifted before this user came
            expect(banner).to_have_attribute("role", "alert")
            expect(banner).to_contain_text("differ from the training data")
            expect(banner).to_contain_text("may not hold")
            expect(banner.locator("code")).to_have_text(["pneumoscan adapt", "pneumoscan calibrate"])
            page.set_input_files("#file-input", [str(_another_file(blank, i, tmp_path)), str(_another_file(good, i, tmp_path))])
            # The second page also shows the first one's results, stored, as cards.
            expect(page.locator("article.card")).to_have_count(2 * (i + 1), timeout=30_000)
            oos = page.locator("article.card.oos:not(.stored)")
            expect(oos).to_have_count(1)
            expect(oos).to_have_attribute("data-decision", "OUT_OF_SCOPE")
            expect(oos.locator("p.limits")).to_have_count(0)  # not assessed: no result to qualify
            expect(oos.locator(".not-assessed")).to_have_text("Not assessed")
            expect(oos.locator(".reason")).to_contain_text("blank or uniform image")
            assert "%" not in oos.inner_text()  # no risk figure, no bar, no decision
            assert oos.locator(".prob, .bar, .decision").count() == 0
            scored = page.locator("article.card:not(.oos):not(.stored)")
            expect(scored.locator(".prob")).to_contain_text("/ 100")
            expect(scored.locator(".decision")).to_contain_text("lag")  # "Flag: ..." or "Not flagged"
            # The worklist is stored: the second viewport's page also lists the first one's uploads.
            rows = page.locator("#worklist tbody tr")
            expect(rows).to_have_count(2 * (i + 1))
            expect(rows.nth(0)).to_contain_text(good.name)  # the scored films first (this newest of equals)
            expect(rows.nth(i + 1)).to_contain_text("Not assessed (out of scope)")
            expect(rows.nth(i + 1)).to_contain_text("blank or uniform image")
            expect(rows.nth(i + 1)).to_contain_text(blank.name)
            expect(page.locator("#status")).to_contain_text("1 not assessed")
            expect(page.locator("#drift-line")).to_contain_text("SHIFTED")
            with page.expect_download() as dl:
                page.click("#download-csv")
            lines = _csv(Path(dl.value.path()).read_text())
            assert [int(r["id"]) for r in lines] == [r["id"] for r in _api_rows(page, "order=risk", TOKEN)]
            assert [r["rank"] for r in lines] == [str(k + 1) for k in range(i + 1)] + [""] * (i + 1)
            assert lines[0]["decision"] in ("PNEUMONIA", "NORMAL") and float(lines[0]["score"]) >= 0
            blank_row = lines[i + 1]
            assert {k: blank_row[k] for k in ("score", "decision", "decision_text", "score_threshold", "in_scope",
                                              "scope_reason", "threshold", "model_name")} == {
                "score": "", "decision": "OUT_OF_SCOPE", "decision_text": "Not assessed (out of scope)",
                "score_threshold": "50.0", "in_scope": "false", "scope_reason": "blank or uniform image",
                "threshold": "0.500000", "model_name": "seed-cnn"}
            assert "Decision support, not a diagnosis" in blank_row["disclaimer"] and blank_row["exported_at"]
            _no_horizontal_overflow(page)
            page.screenshot(path=str(ARTIFACTS / f"serve_scope_{name}.png"), full_page=True)
            page.close()
    assert (ARTIFACTS / "serve_scope_phone.png").stat().st_size > 10_000


def test_no_banner_while_the_drift_check_waits_for_images(server):
    from playwright.sync_api import expect

    with _browser() as browser:
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(server)
        expect(page.locator("#drift-line")).to_contain_text("unavailable")  # this model has no reference
        expect(page.locator("#drift-banner")).to_be_hidden()
        _no_horizontal_overflow(page)


@pytest.fixture(scope="module")
def adapted_server(tmp_path_factory):
    """A model adapted and calibrated at a site (the metadata records; the weights do not matter here)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("site") / "site.safetensors"
    meta = {"model": "seed-cnn", "config": Config().to_dict(), "classes": ["NORMAL", "PNEUMONIA"], "epoch": 1,
            "preprocessing": default_preprocessing("seed-cnn", 96).to_dict(),
            "operating_point": {"threshold": 0.61, "method": "target_sensitivity", "target_sensitivity": 0.95},
            "adaptation": {"method": "AdaBN", "n_images": 312, "date": "2026-11-26T09:00:00Z", "prevalence_em": 0.41,
                           "training_prevalence": 0.77, "parent_model_sha256": "e4d5bf9a2f72" + "0" * 52},
            "site_calibration": {"n_images": 104, "date": "2026-11-27T09:00:00+0000", "threshold": 0.61},
            "site_state": "adapted and calibrated"}
    save_checkpoint(path, create_model("seed-cnn").state_dict(), meta)
    yield from _serve(create_app(Predictor.from_checkpoint(path)), ServeSettings())


def test_the_site_state_is_shown_next_to_the_model_name(adapted_server, server):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with _browser() as browser:
        for name, viewport in (("desktop", {"width": 1440, "height": 900}),
                               ("phone", {"width": 390, "height": 844})):
            page = browser.new_page(viewport=viewport)
            page.goto(adapted_server)
            line = page.locator("#model-line")
            expect(line).to_contain_text("seed-cnn")
            expect(line.locator("#site-state")).to_have_text("adapted and calibrated at this site")
            expect(line.locator("#site-state")).to_have_attribute(
                "title", "Model adapted at this site on 2026-11-26 from 312 films (parent e4d5bf9a2f72); threshold "
                         "calibrated at this site on 2026-11-27 on 104 labelled films (threshold 0.610)")
            card = page.locator("#model-card")
            expect(card).to_contain_text("Model adapted at this site on 2026-11-26 from 312 films")
            expect(card).to_contain_text("41.0% (EM on the adaptation films")
            _no_horizontal_overflow(page)
            page.screenshot(path=str(ARTIFACTS / f"serve_site_state_{name}.png"), full_page=True)
            page.close()
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        expect(page.locator("#site-state")).to_have_text("as shipped")


def test_the_worklist_survives_a_server_restart(predictor, tmp_path):
    """Two servers, one after the other, on one database file: the second lists what the first stored."""
    from playwright.sync_api import expect

    settings = ServeSettings(db=str(tmp_path / "worklist.db"))
    good = _sample_image(tmp_path)
    with _browser() as browser:
        first = _serve(create_app(predictor, settings), settings)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(next(first))
        expect(page.locator("#worklist tbody tr.empty")).to_have_count(1)
        page.set_input_files("#file-input", [str(good)])
        rows = page.locator("#worklist tbody tr:not(.empty)")
        expect(rows).to_have_count(1, timeout=30_000)
        rows.nth(0).get_by_role("button", name=f"Disagree with the result for {good.name}").click()
        expect(rows.nth(0).locator(".verdict")).to_have_text("Disagreed")
        percent = rows.nth(0).locator("td.num").nth(1).inner_text()
        page.close()
        next(first, None)  # stops the first server
        second = _serve(create_app(predictor, settings), settings)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(next(second))
        rows = page.locator("#worklist tbody tr:not(.empty)")
        expect(rows).to_have_count(1)
        expect(rows.nth(0).locator("td.num").nth(1)).to_have_text(percent)
        expect(rows.nth(0).locator(".verdict")).to_have_text("Disagreed")
        next(second, None)


def test_docs_and_redoc_render_offline(server):
    """/docs (Swagger UI) and /redoc (ReDoc) render with nothing fetched from outside the server."""
    from playwright.sync_api import expect

    origin = server.rstrip("/")
    ARTIFACTS.mkdir(exist_ok=True)
    with _browser() as browser:
        for path, ready in (("docs", ".swagger-ui .opblock-summary-path"), ("redoc", "[role=menuitem], .menu-content")):
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            requests: list[str] = []
            page.on("request", lambda req, seen=requests: seen.append(req.url))
            page.goto(server + path)
            expect(page.locator(ready).first).to_be_visible(timeout=20_000)
            expect(page.get_by_text("/api/v1/predict").first).to_be_attached()
            page.wait_for_load_state("networkidle")
            outside = [u for u in requests if not u.startswith((origin + "/", "data:", "blob:"))]
            assert not outside, f"{path} fetched from outside the server: {outside}"
            assert any(u.endswith(".js") for u in requests)
            page.screenshot(path=str(ARTIFACTS / f"serve_e2e_{path}.png"))
            page.close()


def test_the_full_model_card_is_rendered_html(server):
    from playwright.sync_api import expect

    with _browser() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        details = page.locator("#full-model-card")
        expect(details).to_be_attached()
        details.locator("summary").click()
        doc = details.locator(".markdown")
        expect(doc.locator("h2").first).to_contain_text("Model card")
        expect(doc.locator("h3", has_text="Intended use")).to_be_visible()
        expect(doc.locator("table").first).to_be_visible()
        expect(doc.locator("table th", has_text="threshold on validation")).to_be_visible()
        assert doc.locator("script, img, iframe").count() == 0
        assert "<script" not in doc.inner_html().lower()
        assert "| --- |" not in doc.inner_text() and "## " not in doc.inner_text()  # no raw Markdown left
        details.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "serve_e2e_model_card.png"))


def test_the_status_line_counts_each_batch_on_its_own(server, tmp_path):
    """4 unreadable files, then 1 good one: the second status counts that batch only."""
    from playwright.sync_api import expect

    bad = []
    for i in range(4):
        path = tmp_path / f"broken-{i}.png"
        path.write_text(f"not an image {i}")
        bad.append(str(path))
    good = _sample_image(tmp_path)
    with _browser() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        status = page.locator("#status")
        page.set_input_files("#file-input", bad)
        expect(status).to_have_text("Done: 0 analysed, 4 could not be read (see the cards).", timeout=30_000)
        page.set_input_files("#file-input", [str(good)])
        expect(status).to_have_text("Done: 1 analysed.", timeout=30_000)
        expect(page.locator("article.card")).to_have_count(5)  # the earlier cards stay, uncounted


def _card_order(page) -> list[tuple[str, str, float | None]]:
    return page.evaluate("""[...document.querySelectorAll('#cards article.card')].map((c) =>
        [c.getAttribute('aria-label'), c.dataset.decision,
         c.hasAttribute('data-probability') ? Number(c.dataset.probability) : null])""")


def test_cards_follow_the_worklist_and_a_row_selects_its_card(server, tmp_path):
    """Cards in risk order (as the worklist): scored by probability, then not assessed, then unreadable; clicking
    a worklist row scrolls to its card, outlines it, focuses it and marks it aria-current."""
    from playwright.sync_api import expect

    *files, blank, bad, _ = _films(tmp_path)
    uploads = [bad, files[0], blank, files[1], files[2], files[3]]
    with _browser() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        page.set_input_files("#file-input", [str(p) for p in uploads])
        expect(page.locator("#status")).to_contain_text("Done:", timeout=30_000)
        cards = _card_order(page)
        assert len(cards) == 6
        kinds = ["scored" if p is not None else "oos" if d == "OUT_OF_SCOPE" else "error" for _, d, p in cards]
        assert kinds == sorted(kinds, key=["scored", "oos", "error"].index), cards  # groups in order
        assert kinds[-1] == "error" and kinds.count("error") == 1 and "oos" in kinds
        probs = [p for _, _, p in cards if p is not None]
        assert len(probs) >= 2 and probs == sorted(probs, reverse=True), cards
        assert all(0 <= p <= 1 for p in probs)
        # data-probability on scored result cards only, nothing else on the page.
        assert page.locator("[data-probability]").count() == len(probs)
        assert page.locator("[data-decision]").count() == 6
        assert page.locator("[data-probability]:not(article.card)").count() == 0
        # The worklist lists this tab's uploads in the same order as the cards.
        links = page.locator("#worklist a.card-link")
        expect(links).to_have_count(6)
        assert links.all_inner_texts() == [name for name, _, _ in cards]
        # Clicking a row (its name, or the row itself) shows and marks the card it means.
        page.set_viewport_size({"width": 1440, "height": 500})
        for target_index in (len(cards) - 1, 1):
            name = cards[target_index][0]
            row = page.locator("#worklist tbody tr", has=page.locator("a.card-link", has_text=name))
            if target_index == 1:
                row.locator("td.num").first.click()  # a click on the row, not the link
            else:
                row.locator("a.card-link").click()
            card = page.locator("#cards article.card").nth(target_index)
            expect(card).to_have_attribute("aria-label", name)
            expect(card).to_have_class(re.compile(r"\bselected\b"))
            expect(card).to_have_attribute("aria-current", "true")
            expect(card).to_be_in_viewport()
            assert page.evaluate("document.activeElement.getAttribute('aria-label')") == name
            outline = card.evaluate("(c) => getComputedStyle(c).outlineStyle + ' ' + getComputedStyle(c).outlineWidth")
            assert outline.startswith("solid") and not outline.endswith(" 0px"), outline
            expect(page.locator("article.card.selected")).to_have_count(1)
            expect(page.locator("article.card[aria-current]")).to_have_count(1)
        page.screenshot(path=str(ARTIFACTS / "serve_e2e_selected.png"))


def test_no_horizontal_overflow_on_a_phone(adapted_server, tmp_path):
    """At 390 x 844 the page fits the screen: empty, with results, and with the full model card open; Clear,
    Download CSV and the worklist's Score and Decision columns stay on screen. 1440 x 900 for comparison.
    The adapted model's card has the longest labels ("Estimated pneumonia prevalence at this site"), which a
    ``max-content`` label column once pushed off a phone's screen."""
    server = adapted_server
    from playwright.sync_api import expect

    good = _sample_image(tmp_path)
    bad = tmp_path / "a-rather-long-file-name-that-is-not-an-image-at-all.png"
    bad.write_text("not an image")
    ARTIFACTS.mkdir(exist_ok=True)
    with _browser() as browser:
        for k, (name, viewport) in enumerate((("phone", {"width": 390, "height": 844}),
                                              ("desktop", {"width": 1440, "height": 900}))):
            page = browser.new_page(viewport=viewport)
            page.goto(server)
            expect(page.locator("#model-line")).to_contain_text("seed-cnn")
            expect(page.locator("#model-card dl")).to_be_visible()
            _no_horizontal_overflow(page)  # empty
            page.screenshot(path=str(ARTIFACTS / f"serve_e2e_empty_{name}.png"), full_page=True)
            page.set_input_files("#file-input", [str(_another_file(good, k, tmp_path)), str(bad)])
            expect(page.locator("#status")).to_contain_text("Done:", timeout=30_000)
            expect(page.locator("#worklist a.card-link")).to_have_count(2 * (k + 1))  # and the phone's, stored
            _no_horizontal_overflow(page)  # with results
            for locator in (page.locator("#clear"), page.locator("#download-csv"),
                            page.locator("#worklist thead th", has_text="Score (0–100)"),
                            page.locator("#worklist thead th", has_text="Decision")):
                box = locator.bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], (locator, box)
            page.locator("#full-model-card summary").click()
            expect(page.locator("#full-model-card table").first).to_be_visible()
            _no_horizontal_overflow(page)  # the model card's wide tables scroll inside it
            page.locator("#full-model-card summary").click()
            page.screenshot(path=str(ARTIFACTS / f"serve_e2e_results_{name}.png"), full_page=True)
            page.close()
    assert (ARTIFACTS / "serve_e2e_results_phone.png").stat().st_size > 10_000


def _background(page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def _luminance(css_rgb: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css_rgb)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_dark_theme_follows_the_system_and_the_toggle_is_remembered(server, tmp_path):
    """With the system in dark mode the page is dark; the header's toggle overrides it, and a reload keeps the
    choice (localStorage). Screenshots in dark at 1440 x 900 (with a result card and an error card) and 390 x 844."""
    from playwright.sync_api import expect

    good = _sample_image(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    ARTIFACTS.mkdir(exist_ok=True)
    with _browser() as browser:
        light = browser.new_page(viewport={"width": 1440, "height": 900}, color_scheme="light")
        light.goto(server)
        expect(light.locator("#model-line")).to_contain_text("seed-cnn")
        light_bg = _background(light)
        assert _luminance(light_bg) > 0.8
        light.close()

        context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="dark")
        page = context.new_page()
        page.goto(server)
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        dark_bg = _background(page)
        assert dark_bg != light_bg and _luminance(dark_bg) < 0.2
        toggle = page.get_by_role("button", name="Dark theme")
        expect(toggle).to_have_attribute("aria-pressed", "true")
        # Readable: the text is light on the dark background.
        assert _luminance(page.evaluate("getComputedStyle(document.body).color")) > 0.7
        page.set_input_files("#file-input", [str(good), str(bad)])
        expect(page.locator("article.card")).to_have_count(2, timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "serve_e2e_dark_desktop.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        _no_horizontal_overflow(page)
        page.screenshot(path=str(ARTIFACTS / "serve_e2e_dark_phone.png"), full_page=True)
        page.set_viewport_size({"width": 1440, "height": 900})
        # The toggle: light despite the system, remembered across a reload.
        toggle.click()
        expect(toggle).to_have_attribute("aria-pressed", "false")
        assert _background(page) == light_bg
        page.reload()
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        assert _background(page) == light_bg
        expect(page.get_by_role("button", name="Dark theme")).to_have_attribute("aria-pressed", "false")
        page.get_by_role("button", name="Dark theme").click()
        assert _background(page) == dark_bg
        context.close()
    assert (ARTIFACTS / "serve_e2e_dark_desktop.png").stat().st_size > 10_000


def test_clear_cards_asks_for_confirmation(server, tmp_path):
    """"Clear cards" only arms: the cards stay until "Really clear?" is pressed; Cancel and Escape keep them, and
    the worklist is kept either way."""
    from playwright.sync_api import expect

    good = _sample_image(tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    with _browser() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        page.set_input_files("#file-input", [str(good)])
        cards = page.locator("article.card")
        expect(cards).to_have_count(1, timeout=30_000)
        rows = page.locator("#worklist tbody tr:not(.empty)")
        expect(rows.first).to_be_visible()
        n_rows = rows.count()
        clear = page.locator("#clear")
        cancel = page.get_by_role("button", name="Cancel")
        expect(cancel).to_be_hidden()
        clear.click()
        expect(clear).to_have_text("Really clear?")
        expect(page.get_by_role("button", name="Really clear 1 card(s)? The worklist is kept")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("Really clear?")
        expect(cards).to_have_count(1)
        page.screenshot(path=str(ARTIFACTS / "serve_e2e_clear_confirm.png"))
        cancel.click()
        expect(clear).to_have_text("Clear cards")
        expect(cancel).to_be_hidden()
        expect(cards).to_have_count(1)
        # Escape (keyboard) also keeps them.
        clear.focus()
        page.keyboard.press("Enter")
        expect(clear).to_have_text("Really clear?")
        page.keyboard.press("Escape")
        expect(clear).to_have_text("Clear cards")
        expect(cards).to_have_count(1)
        # Confirmed: the cards go, the worklist stays.
        clear.click()
        clear.click()
        expect(cards).to_have_count(0)
        expect(clear).to_have_text("Clear cards")
        expect(page.locator("#status")).to_contain_text("Cleared 1 card(s)")
        expect(rows).to_have_count(n_rows)


def test_the_score_says_where_it_was_calibrated(server, tmp_path):
    """Every score is shown with where it was calibrated (the result's score_calibration): on the card, in the
    worklist (the score's title), in the viewer and in the printed report; the model card says it with its details.
    A result stored before it was recorded (no words) shows none, and nothing fails. Screenshots of the page with a
    result (heatmap on) and of the viewer (heatmap and outline) at 1366 x 900 and 390 x 844."""
    from playwright.sync_api import expect

    good = _sample_image(tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    with _browser() as browser:
        for name, viewport in (("desktop", {"width": 1366, "height": 900}), ("phone", {"width": 390, "height": 844})):
            page = browser.new_page(viewport=viewport)
            errors: list[str] = []
            page.on("pageerror", lambda exc, seen=errors: seen.append(str(exc)))
            page.add_init_script("window.print = () => {};")
            page.goto(server)
            expect(page.locator("#model-line")).to_contain_text("seed-cnn")
            model = page.request.get(server + "api/v1/model").json()
            words = model["score_calibration"]
            assert words
            card_mc = page.locator("#model-card")
            expect(card_mc.locator("dt", has_text="Score calibration")).to_have_count(1)
            # The drift verdict at this site sits in the model card with the validation figures (#24).
            expect(card_mc.locator("dt", has_text="Drift at this site")).to_have_count(1)
            expect(page.locator("#mc-drift")).to_have_text(page.locator("#drift-line").inner_text())
            expect(card_mc).to_contain_text(words)
            if model["score_calibration_details"]:
                expect(card_mc).to_contain_text(model["score_calibration_details"])
            page.get_by_label(re.compile("Compute heatmaps")).check()
            page.set_input_files("#file-input", [str(good)])  # the phone's page too: a card with its file
            expect(page.locator("#status")).to_contain_text("Done:", timeout=30_000)
            card = page.locator("article.card[data-probability]:not(.stored)").first
            expect(card).to_be_visible(timeout=30_000)
            expect(card.locator("p.calibration")).to_have_text(f"Score {words}")
            expect(page.locator("#worklist tbody td.num.calibrated").first).to_have_attribute("title", f"Score {words}")
            toggle = card.locator("button.toggle")
            if toggle.count():  # the heatmap (computed on upload) and what it is, on the card
                toggle.click()
                expect(card.locator("p.heat-note")).to_be_visible()
                expect(card.locator("p.heat-note")).to_contain_text("where hiding the film lowered the score most")
                expect(card.locator("img")).to_have_attribute("alt", re.compile("hiding the film lowered the score"))
            card.locator("button.print-report").click()
            report = page.locator("#report")
            expect(report.locator("dt", has_text="Score calibration")).to_have_count(1)
            expect(report).to_contain_text(words)
            page.evaluate("window.dispatchEvent(new Event('afterprint'))")
            _no_horizontal_overflow(page)
            card.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f"serve_calibration_{name}.png"), full_page=name == "phone")
            card.locator("button.film-open").click()
            dialog = page.get_by_role("dialog")
            expect(dialog).to_be_visible()
            expect(dialog.locator(".pv-calib")).to_have_text(f"score {words}")
            expect(page.locator(".pv-dialog")).to_have_attribute("data-film", "ready", timeout=20_000)
            page.keyboard.press("h")
            expect(page.locator(".pv-pane").first.locator("canvas.pv-heatmap")).to_be_visible(timeout=20_000)
            expect(page.locator(".pv-status")).to_contain_text("not where the disease is")
            page.keyboard.press("o")
            expect(page.locator(".pv-dialog")).to_have_attribute("data-outline", "true")
            page.keyboard.press("0")
            assert page.evaluate("document.querySelector('.pv-dialog').scrollWidth <= innerWidth")
            page.screenshot(path=str(ARTIFACTS / f"serve_calibration_{name}_viewer.png"))
            page.keyboard.press("Escape")
            expect(dialog).to_be_hidden()
            # A result stored before the words were recorded: no calibration line, and nothing fails.
            page.evaluate("""async () => {
                const { addCard } = await import(new URL("static/cards.js", location.href).href);
                addCard({ id: 990, filename: "old.png", ok: true, in_scope: true, probability: 0.4, score: 40,
                          threshold: 0.5, score_threshold: 50, decision: "NORMAL", decision_text: "Not flagged",
                          positive: false, image_png: "", score_calibration: "" });
            }""")
            old = page.locator("#card-990")
            expect(old.locator(".prob")).to_contain_text("40.0")
            expect(old.locator("p.calibration")).to_have_count(0)
            assert not errors, errors
            page.close()
    for name in ("desktop", "phone"):
        assert (ARTIFACTS / f"serve_calibration_{name}_viewer.png").stat().st_size > 10_000
