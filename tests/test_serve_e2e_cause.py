"""The cause of a flagged film on the page, in real headless Chromium: a model with a cause output (two head
outputs: pneumonia, and viral rather than bacterial) answers "more like bacterial or viral?" for every flagged
film. The page shows it as a line under the decision, with its caveat, on the card, in the viewer and on the
printed report; the worklist filters by it (remembered, sent to the table and the CSV alike) and shows it in the
decision cell; a film that is not flagged shows none. axe-core finds no serious or critical violation on these
screens at 1440 x 900 and 390 x 844, light and dark (screenshots in ``test-artifacts/serve_page_cause_*.png``).

The test model is untrained: its thresholds are set from its own scores on the test films, so that exactly one
in-scope film is not flagged and the flagged ones split between the two patterns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from modelfactory import checkpoint_meta
from test_serve_e2e import (
    ARTIFACTS,
    CHROMIUM,
    _browser,
    _films,
    _no_horizontal_overflow,
    _serve,
)
from test_serve_e2e_page import (
    DESKTOP,
    PHONE,
    _axe,
    _download_csv,
    _module,
    _open,
    _screens,
    _table_query,
    _upload,
)

from pneumoscan.checkpoint import save_checkpoint
from pneumoscan.constants import CAUSE_CAVEAT, CAUSE_WORDS, DECISION_WORDS
from pneumoscan.inference.predictor import Predictor
from pneumoscan.models import create_model
from pneumoscan.serve import ServeSettings, create_app

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not found at {CHROMIUM}")


def _cause_checkpoint(path: Path, state_dict, threshold: float, cause_threshold: float) -> Path:
    meta = checkpoint_meta("seed-cnn", 64, threshold=threshold, temperature=1.0)
    meta["outputs"] = ["pneumonia", "viral"]
    meta["cause"] = {"threshold": cause_threshold, "temperature": 1.0, "rule": "test", "method": "test"}
    return save_checkpoint(path, state_dict, meta)


def _between(values: list[float], i: int) -> float:
    """A threshold halfway between the i-th and (i+1)-th smallest value, well clear of both."""
    low, high = sorted(values)[i:i + 2]
    assert high - low > 1e-4, f"the test films score too close together ({low}, {high})"
    return (low + high) / 2


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> list[Path]:
    """Four films, a blank page (not assessed), an unreadable file and a DICOM film (test_serve_e2e's)."""
    return _films(tmp_path_factory.mktemp("films"))


@pytest.fixture(scope="module")
def cause_model(tmp_path_factory, films):
    """``(predictor, {file name: its Result})`` for a seed-cnn with a cause output, its main threshold just above
    its lowest in-scope score (that film is not flagged, every other in-scope one is) and its cause threshold
    halfway through the flagged films' P(viral) (some viral, some bacterial)."""
    torch.manual_seed(0)
    state = create_model("seed-cnn", num_classes=2).state_dict()
    folder = tmp_path_factory.mktemp("cause-model")
    probe = Predictor.from_checkpoint(_cause_checkpoint(folder / "probe.safetensors", state, 0.0, 0.5))
    scored = [r for r in probe.score_files(films) if r.read and r.in_scope]
    probe.close()
    threshold = _between([r.probability for r in scored], 0)
    flagged = [r.cause_probability for r in scored if r.probability > threshold]
    cause_threshold = _between(flagged, len(flagged) // 2 - 1)
    predictor = Predictor.from_checkpoint(_cause_checkpoint(folder / "cause.safetensors", state, threshold,
                                                            cause_threshold))
    expected = {Path(r.source).name: r for r in predictor.score_files(films)}
    causes = [r.cause for r in expected.values()]
    assert causes.count("VIRAL") >= 1 and causes.count("BACTERIAL") >= 1, causes
    assert [r.decision for r in expected.values()].count("NORMAL") == 1
    yield predictor, expected
    predictor.close()


@pytest.fixture
def cause_server(cause_model):
    """A fresh server (and worklist database) per test, with the cause model."""
    yield from _serve(create_app(cause_model[0]), ServeSettings())


def _line(r) -> str:
    """The cause line the page must show for a Result (the Python side's own numbers)."""
    words = CAUSE_WORDS[r.cause]
    return (f"{words[0].upper()}{words[1:]} · viral score {r.cause_score:.1f} / 100 "
            f"(threshold {r.cause_score_threshold:.1f})")


def test_the_cause_on_the_card_viewer_report_and_worklist(cause_server, cause_model, films):
    from playwright.sync_api import expect

    _, expected = cause_model
    with_cause = {name: r for name, r in expected.items() if r.cause}
    viral = sorted(name for name, r in with_cause.items() if r.cause == "VIRAL")
    bacterial = sorted(name for name, r in with_cause.items() if r.cause == "BACTERIAL")
    normal = next(name for name, r in expected.items() if r.decision == "NORMAL")
    with _browser() as browser:
        page = _open(browser, cause_server)
        _upload(page, films)
        # The card: the line under the decision, its caveat beside it; none on any other card.
        for name, r in with_cause.items():
            card = page.locator(f'article.card[aria-label="{name}"]')
            expect(card.locator(".decision")).to_have_text(DECISION_WORDS["PNEUMONIA"])
            expect(card.locator(".cause")).to_have_text(_line(r))
            expect(card.locator(".cause-caveat")).to_have_text(CAUSE_CAVEAT)
        expect(page.locator("article.card .cause")).to_have_count(len(with_cause))
        for name in (normal, "blank-page.png", "broken.png"):
            card = page.locator(f'article.card[aria-label="{name}"]')
            expect(card).to_have_count(1)
            expect(card.locator(".cause, .cause-caveat")).to_have_count(0)
            assert "pattern more like" not in card.inner_text().lower(), name
        expect(page.locator(f'article.card[aria-label="{normal}"] .decision')).to_have_text(DECISION_WORDS["NORMAL"])
        page.locator("#cards").screenshot(path=str(ARTIFACTS / "serve_page_cause_cards.png"))
        # The viewer: the same line and caveat under its decision; nothing for the film that is not flagged.
        page.locator(f'article.card[aria-label="{viral[0]}"] button.film-open').click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        expect(dialog.locator(".pv-cause-line")).to_have_text(_line(with_cause[viral[0]]))
        expect(dialog.locator(".pv-cause-note")).to_have_text(CAUSE_CAVEAT)
        expect(page.locator(".pv-dialog[data-film='ready']")).to_have_count(1)
        page.screenshot(path=str(ARTIFACTS / "serve_page_cause_viewer.png"))
        for _ in range(len(films)):  # step through the cases to the film that is not flagged
            if page.locator("#pv-title").inner_text() == normal:
                break
            page.keyboard.press("j")
        expect(page.locator("#pv-title")).to_have_text(normal)
        expect(dialog.locator(".pv-cause")).to_be_hidden()
        assert "pattern more like" not in dialog.locator(".pv-meta").inner_text().lower()
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        # The printed report: the line as its own row, the caveat with it; none on the unflagged film's report.
        report = page.locator("#report")
        card = page.locator(f'article.card[aria-label="{bacterial[0]}"]')
        card.get_by_role("button", name=f"Print a report of {bacterial[0]}").click()
        page.emulate_media(media="print")
        expect(report.locator("dt", has_text="Cause")).to_have_count(1)
        expect(report.locator("dt:text-is('Cause') + dd")).to_have_text(_line(with_cause[bacterial[0]]))
        expect(report.locator(".report-cause-caveat")).to_have_text(CAUSE_CAVEAT)
        page.screenshot(path=str(ARTIFACTS / "serve_page_cause_report.png"), full_page=True)
        pdf = page.pdf(path=str(ARTIFACTS / "serve_page_cause_report.pdf"), format="A4", print_background=True)
        assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) == 1  # one A4 page
        page.emulate_media(media="screen")
        page.locator(f'article.card[aria-label="{normal}"]').get_by_role(
            "button", name=f"Print a report of {normal}").click()
        page.emulate_media(media="print")
        expect(report.locator("dt", has_text="Decision")).to_have_count(1)
        assert "pattern more like" not in report.inner_text().lower() and CAUSE_CAVEAT not in report.inner_text()
        page.emulate_media(media="screen")
        page.evaluate("window.dispatchEvent(new Event('afterprint'))")
        # The worklist: the cause of flagged rows in the decision cell, and a filter by cause.
        rows = page.locator("#worklist tbody tr")
        expect(rows).to_have_count(len(films))
        expect(page.locator("#worklist td .cause")).to_have_count(len(with_cause))
        cause_filter = page.get_by_role("combobox", name="Cause")
        expect(cause_filter.locator("option")).to_have_text(["All", "Bacterial pattern", "Viral pattern"])
        expect(page.locator("#f-cause-note")).to_be_hidden()
        for value, names in (("VIRAL", viral), ("BACTERIAL", bacterial)):
            cause_filter.select_option(value)
            expect(rows).to_have_count(len(names))
            words = CAUSE_WORDS[value]
            for row, name in zip(rows.all(), names, strict=True):
                expect(row.locator(".decision")).to_have_text(DECISION_WORDS["PNEUMONIA"])
                expect(row.locator(".cause")).to_contain_text(words[0].upper() + words[1:] + " · viral score ")
            shown = sorted(_module(page, "app.js", "(m) => m.state.worklist.map((r) => m.state.names[r.id])"))
            assert shown == names, (value, shown)
            expect(page.locator("#f-cause-note")).to_have_text(CAUSE_CAVEAT)
            # The table and the CSV ask the server the same: cause=...
            assert _table_query(page)["cause"] == [value]
            query, lines = _download_csv(page)
            assert query == _table_query(page) and query["cause"] == [value], query
            assert {line["cause"] for line in lines} == {value} and len(lines) == len(names)
        page.locator("#worklist").screenshot(path=str(ARTIFACTS / "serve_page_cause_worklist.png"))
        # Remembered like the other filters.
        page.reload()
        expect(page.get_by_role("combobox", name="Cause")).to_have_value("BACTERIAL")
        expect(rows).to_have_count(len(bacterial))
        assert _table_query(page)["cause"] == ["BACTERIAL"]
        # The stored results come back as cards with their cause.
        expect(page.locator("article.card.stored .cause")).to_have_count(len(with_cause))
        page.get_by_role("combobox", name="Cause").select_option("")
        expect(rows).to_have_count(len(films))
        assert "cause" not in _table_query(page)
        assert not page.js_errors, page.js_errors


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_cause_screens_are_accessible_and_fit(cause_server, films, scheme):
    """axe-core finds no serious or critical violation with cause lines on the cards, the viewer and the
    worklist (filtered by cause too), at 1440 x 900 and 390 x 844; nothing overflows sideways."""
    from playwright.sync_api import expect

    found: list[str] = []
    with _browser() as browser:
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page = _open(browser, cause_server, viewport, scheme)
            if size == "phone":  # the desktop's uploads come back as cards; this page adds its own
                page.locator("#clear").click()
                page.locator("#clear").click()
            label = f"cause_{scheme}_{size}"
            found += _screens(page, films, label)
            page.get_by_role("combobox", name="Cause").select_option("VIRAL")
            expect(page.locator("#f-cause-note")).to_be_visible()
            expect(page.locator("#worklist td .cause").first).to_be_visible()
            found += _axe(page, f"{label} cause filter")
            _no_horizontal_overflow(page)
            page.locator(".worklist-panel").screenshot(path=str(ARTIFACTS / f"serve_page_{label}_cause_filter.png"))
            page.get_by_role("combobox", name="Cause").select_option("")
            page.locator("article.card .cause").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f"serve_page_{label}_cause_card.png"))
            assert not page.js_errors, page.js_errors
            page.context.close()
    assert not found, "\n".join(found)
