"""In real headless Chromium (issue #25): the page and ``/docs`` work under the server's Content-Security-Policy
with no violation reported (a ``securitypolicyviolation`` listener installed before any of the page's scripts,
and the console), and a card says so, plainly and accessibly, when the worklist database could not store its
result (a real read-only SQLite database), as does the upload's summary line. Screenshots in
``test-artifacts/serve_csp_*.png`` and ``serve_unsaved_*.png`` (1366 x 900 and 390 x 844)."""

# ruff: noqa: F811  (pytest fixtures imported from test_serve_e2e are parameters by name)
from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_serve_e2e import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    CHROMIUM,
    _browser,
    _films,
    _no_horizontal_overflow,
    _serve,
    predictor,
    server,
)
from test_serve_e2e_page import _axe

from pneumoscan.serve import ServeSettings, create_app
from pneumoscan.store import WorklistStore

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not found at {CHROMIUM}")

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}

#: Installed in every document before its own scripts run: every CSP violation, in words, in window.__csp.
_LISTEN = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.effectiveDirective || e.violatedDirective} blocked ${e.blockedURI || "inline"} ` +
                    `(${e.sourceFile || ""}:${e.lineNumber || 0}) ${e.sample || ""}`);
});
window.print = () => { window.__printed = (window.__printed || 0) + 1; };
"""


def _context(browser, viewport=DESKTOP, scheme="light"):
    context = browser.new_context(viewport=viewport, color_scheme=scheme, accept_downloads=True)
    context.add_init_script(_LISTEN)
    return context


def _watch(page) -> list[str]:
    """Console errors that mention the policy, and uncaught errors, as they come."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") and "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda exc: seen.append(f"pageerror: {exc}"))
    return seen


def _violations(page, seen: list[str]) -> list[str]:
    return [*page.evaluate("window.__csp || []"), *seen]


def test_the_page_works_under_its_policy_with_no_violation(server, tmp_path):
    """Upload films (heatmaps on), the heatmap toggle, the viewer (with its heatmap from the server), the printed
    report, the full model card, the CSV download and the theme: nothing the policy refuses."""
    from playwright.sync_api import expect

    films = _films(tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    with _browser() as browser:
        context = _context(browser)
        page = context.new_page()
        seen = _watch(page)
        response = page.goto(server)
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        page.locator("#full-model-card summary").click()
        expect(page.locator("#full-model-card .markdown table").first).to_be_visible()
        page.locator("#want-heatmap").check()
        page.set_input_files("#file-input", [str(films[0]), str(films[4]), str(films[-1])])  # film, blank, DICOM
        expect(page.locator("#status")).to_contain_text("Done:", timeout=60_000)
        card = page.locator("article.card[data-probability]").first
        card.get_by_role("button", name="Show heatmap").click()
        expect(card.locator("img").first).to_have_attribute("src", re.compile(r"^data:image/png"))
        # The viewer: the browser decodes the PNG (a blob: URL), the server the DICOM; heatmaps from the server.
        card.locator("button.film-open").click()
        dialog = page.locator(".pv-dialog")
        expect(dialog).to_have_attribute("data-film", "ready", timeout=20_000)
        page.keyboard.press("h")
        expect(page.locator(".pv-pane").first.locator("canvas.pv-heatmap")).to_be_visible(timeout=20_000)
        for _ in range(3):
            page.keyboard.press("j")
            expect(dialog).to_have_attribute("data-film", "ready", timeout=20_000)
        page.screenshot(path=str(ARTIFACTS / "serve_csp_viewer.png"))
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        # The printed report.
        card.locator("button.print-report").click()
        assert page.evaluate("window.__printed") == 1
        page.emulate_media(media="print")
        expect(page.locator("#report img").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "serve_csp_report.png"), full_page=True)
        page.emulate_media(media="screen")
        page.evaluate("window.dispatchEvent(new Event('afterprint'))")
        # The CSV (the server's file, saved through a blob: URL) and the theme.
        with page.expect_download() as download:
            page.click("#download-csv")
        assert Path(download.value.path()).read_text().startswith("rank,")
        page.locator("#theme-toggle").click()
        page.screenshot(path=str(ARTIFACTS / "serve_csp_page.png"), full_page=True)
        assert _violations(page, seen) == []
        # The listener works: an inline script added now is refused, reported, and does not run.
        page.evaluate("""() => { const s = document.createElement("script");
                                 s.textContent = "window.__inlineRan = true"; document.head.append(s); }""")
        page.wait_for_function("window.__csp.length > 0")
        assert page.evaluate("window.__inlineRan") is None
        assert page.evaluate("window.__csp")[0].startswith("script-src")
        context.close()


@pytest.mark.parametrize(("path", "ready"), [("docs", ".swagger-ui .opblock-summary-path"),
                                             ("redoc", "[role=menuitem], .menu-content")])
def test_the_docs_work_under_their_policy_with_no_violation(server, path, ready):
    """Swagger UI (its one inline script allowed by hash) renders, opens an operation and runs it ("Try it
    out" on ``GET /api/v1/model``); ReDoc renders. No violation."""
    from playwright.sync_api import expect

    with _browser() as browser:
        context = _context(browser)
        page = context.new_page()
        seen = _watch(page)
        response = page.goto(server + path)
        assert response.headers["x-frame-options"] == "DENY"
        expect(page.locator(ready).first).to_be_visible(timeout=20_000)
        expect(page.get_by_text("/api/v1/predict").first).to_be_attached()
        if path == "docs":
            op = page.locator(".opblock", has=page.locator(".opblock-summary-path", has_text="/api/v1/model")).first
            op.locator(".opblock-summary").click()
            op.get_by_role("button", name="Try it out").click()
            op.get_by_role("button", name="Execute").click()
            live = op.locator(".live-responses-table")
            expect(live).to_contain_text("200", timeout=20_000)
            expect(live).to_contain_text("seed-cnn")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ARTIFACTS / f"serve_csp_{path}.png"))
        assert _violations(page, seen) == []
        context.close()


@pytest.fixture
def readonly_server(predictor, tmp_path):
    """A server whose worklist database is a real SQLite file opened read-only: every write fails."""
    db = tmp_path / "worklist.db"
    WorklistStore(db).close()
    store = WorklistStore(f"sqlite:///file:{db}?mode=ro&uri=true")
    try:
        yield from _serve(create_app(predictor, ServeSettings(), store=store), ServeSettings())
    finally:
        store.close()


_REASON = "the worklist database is read-only; see the server log"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_card_says_it_was_not_saved_to_the_worklist(readonly_server, tmp_path, scheme):
    """Each card whose result the database refused says so (role=alert) with the server's reason; a result worth
    keeping says it is on this page only; the summary line counts them. Accessible (axe-core), no overflow, at
    1366 x 900 and 390 x 844."""
    from playwright.sync_api import expect

    films = _films(tmp_path)
    uploads = [films[0], films[4], films[5]]  # a film, a blank page (not assessed), an unreadable file
    found: list[str] = []
    with _browser() as browser:
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            context = _context(browser, viewport, scheme)
            page = context.new_page()
            seen = _watch(page)
            page.goto(readonly_server)
            expect(page.locator("#model-line")).to_contain_text("seed-cnn")
            page.set_input_files("#file-input", [str(p) for p in uploads])
            status = page.locator("#status")
            expect(status).to_contain_text("Done:", timeout=60_000)
            expect(status).to_have_text("Done: 1 analysed, 1 not assessed (outside what the model was built for; see "
                                        "the cards), 1 could not be read (see the cards). 3 not saved to the "
                                        f"worklist: {_REASON}.")
            cards = page.locator("article.card")
            expect(cards).to_have_count(3)
            expect(page.locator("article.card.unsaved")).to_have_count(3)
            for i in range(3):
                note = cards.nth(i).get_by_role("alert").filter(has_text="Not saved to the worklist")
                expect(note).to_have_count(1)
                expect(note.locator("strong")).to_have_text(f"Not saved to the worklist: {_REASON}.")
            scored = page.locator("article.card[data-probability] .not-saved")
            expect(scored).to_contain_text("on this page only")
            expect(page.locator("article.card.error .not-saved p")).to_have_count(0)  # nothing to keep
            expect(page.locator("#worklist tbody tr.empty")).to_have_count(1)  # the worklist has nothing
            found += _axe(page, f"{scheme} {size} unsaved")
            _no_horizontal_overflow(page)
            page.locator("#cards").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f"serve_unsaved_{scheme}_{size}.png"), full_page=True)
            page.locator("article.card[data-probability]").screenshot(
                path=str(ARTIFACTS / f"serve_unsaved_{scheme}_{size}_card.png"))
            assert [v for v in _violations(page, seen) if not v.startswith("pageerror")] == []
            assert not [v for v in seen if v.startswith("pageerror")]
            context.close()
    assert not found, "\n".join(found)
