"""The reading-room page in real headless Chromium (issue 17): the worklist's filters, sort and thumbnails, the
stored results as cards on load, the printed per-patient report (print media and a PDF), the viewer opened from
a card's film, strings in one place, axe-core accessibility checks over the page's states, and every screen at
1440 x 900 and 390 x 844 in light and dark (screenshots in ``test-artifacts/serve_page_*.png``). The page is ES
modules (one module script, no globals) and keeps none of the server's rules: the ranking, the order of the cards
and the CSV are the server's."""

# ruff: noqa: F811  (pytest fixtures imported from test_serve_e2e are parameters by name)
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from test_serve_e2e import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    CHROMIUM,
    _browser,
    _csv,
    _films,
    _no_horizontal_overflow,
    _sample_image,
    predictor,
    server,
)

from pneumoscan.constants import CAUSE_CAVEAT, CAUSE_WORDS, DECISION_WORDS, NOT_READ_WORDS

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not found at {CHROMIUM}")

STATIC = Path(__file__).resolve().parents[1] / "src/pneumoscan/serve/static"

DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


def _open(browser, url, viewport=DESKTOP, scheme="light"):
    context = browser.new_context(viewport=viewport, color_scheme=scheme)
    context.add_init_script("window.print = () => { window.__printed = (window.__printed || 0) + 1; };")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.goto(url)
    from playwright.sync_api import expect

    expect(page.locator("#model-line")).to_contain_text("seed-cnn")
    page.js_errors = errors
    return page


def _upload(page, paths, *, heatmaps=False):
    from playwright.sync_api import expect

    if heatmaps:
        page.locator("#want-heatmap").check()
    page.set_input_files("#file-input", [str(p) for p in paths])
    expect(page.locator("#status")).to_contain_text("Done:", timeout=60_000)


def _axe(page, label: str) -> list[str]:
    """axe-core on the page as it is: the serious and critical violations, as lines (empty when none)."""
    from axe_playwright_python.sync_playwright import Axe

    response = Axe().run(page).response
    return [f"{label}: {v['id']} ({v['impact']}) {v['help']}: {[n['target'] for n in v['nodes']][:4]}"
            for v in response["violations"] if v["impact"] in ("serious", "critical")]


def _rows_from_api(page, query: str) -> list[dict]:
    return page.request.get(page.url + "api/v1/worklist?" + query).json()["results"]


def _module(page, module: str, function: str):
    """``function`` (JavaScript, called with the module's exports) in the page, on the page's own instance of
    ``static/<module>`` (a module is loaded once per URL): the page shares nothing through ``window``."""
    return page.evaluate(f"""async () => {{
        const m = await import(new URL("static/{module}", location.href).href);
        return ({function})(m);
    }}""")


def _download_csv(page) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """Download CSV: the query the page sent to ``api/v1/worklist.csv`` and the rows of the file it saved."""
    with page.expect_request(lambda r: "/api/v1/worklist.csv" in r.url) as request, page.expect_download() as dl:
        page.click("#download-csv")
    return parse_qs(urlparse(request.value.url).query), _csv(Path(dl.value.path()).read_text())


def _table_query(page) -> dict[str, list[str]]:
    """The query of the worklist table's latest request (the filters and order on screen; the cards' own requests
    for the server's risk order ask for other limits)."""
    table = [u for u in page.requests if "/api/v1/worklist?" in u and "limit=200" in u]
    return parse_qs(urlparse(table[-1]).query)


def test_worklist_filters_sort_thumbnails_and_stored_cards(server, tmp_path):
    from playwright.sync_api import expect

    uploads = _films(tmp_path)
    with _browser() as browser:
        page = _open(browser, server)
        expect(page.locator("#want-heatmap")).not_to_be_checked()  # #18: the viewer computes heatmaps lazily
        _upload(page, uploads)
        rows = page.locator("#worklist tbody tr")
        expect(rows).to_have_count(7)
        # Thumbnails: every read film has one (a JPEG data URI); the unreadable file a placeholder.
        expect(page.locator("#worklist td.thumb img")).to_have_count(6)
        assert all(src.startswith("data:image/jpeg;base64,") for src in
                   page.locator("#worklist td.thumb img").evaluate_all("(imgs) => imgs.map((i) => i.src)"))
        expect(page.locator("#worklist tr.bad td.thumb .thumb-none")).to_have_count(1)
        # The score on 0-100 in the rows, the decision in the one wording.
        scores = [float(t) for t in page.locator("#worklist tbody tr:not(.oos):not(.bad) td.num:nth-child(4)").all_inner_texts()]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 100 for s in scores)
        words = set(page.locator("#worklist td .decision, #worklist td .err").all_inner_texts())
        assert words <= {*DECISION_WORDS.values(), NOT_READ_WORDS}, words
        # Flagged only.
        page.get_by_label("Flagged only").check()
        flagged = _rows_from_api(page, "flagged=true")
        expect(rows).to_have_count(max(1, len(flagged)))
        if flagged:
            assert set(page.locator("#worklist .decision").all_inner_texts()) == {DECISION_WORDS["PNEUMONIA"]}
        else:
            expect(rows.first).to_have_text("No stored result matches these filters.")
        page.get_by_label("Flagged only").uncheck()
        # Borderline: the band is shown on the 0-100 scale and can be changed; the rows are the store's.
        expect(page.locator("#f-band")).to_be_disabled()
        page.get_by_label("Borderline", exact=True).check()
        expect(page.locator("#f-band-hint")).to_have_text("within ±10 of the threshold (40.0–60.0)")
        band = page.get_by_label("Borderline band: points either side of the threshold (0–100)")
        for width in (10, 1, 50):
            band.fill(str(width))
            band.dispatch_event("change")
            expected = _rows_from_api(page, f"borderline={width}")
            expect(rows).to_have_count(max(1, len(expected)))
            assert all(abs(r["probability"] - r["threshold"]) <= width / 100 + 1e-9 for r in expected)
        expect(page.locator("#f-band-hint")).to_have_text("within ±50 of the threshold (0.0–100.0)")
        assert len(expected) == 5  # every scored film (4 and the DICOM) lies within ±50
        # Download CSV: the server's file, with the filters and order on screen (the table's own query).
        query, lines = _download_csv(page)
        assert query == _table_query(page) == {"limit": ["200"], "order": ["risk"], "borderline": ["50"]}, query
        assert [int(r["id"]) for r in lines] == [r["id"] for r in expected]
        assert [r["rank"] for r in lines] == ["1", "2", "3", "4", "5"]
        page.get_by_label("Borderline", exact=True).uncheck()
        # Out of scope only; not yet reviewed; newest first.
        page.get_by_role("combobox", name="Scope").select_option("false")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("blank-page.png")
        page.get_by_role("combobox", name="Scope").select_option("")
        expect(rows).to_have_count(7)  # the full list is back before its first row is read
        first = rows.nth(0)
        first_name = first.locator("td.file a").inner_text()
        first.get_by_role("button", name=f"Agree with the result for {first_name}", exact=True).click()
        page.get_by_label("Not yet reviewed").check()
        expect(rows).to_have_count(6)
        expect(page.locator("#worklist")).not_to_contain_text(first_name)
        page.get_by_label("Not yet reviewed").uncheck()
        page.get_by_role("combobox", name="Sort").select_option("newest")
        expect(page.locator("#worklist-sub")).to_have_text("(newest first)")
        newest = _rows_from_api(page, "order=newest&limit=200")
        expect(rows.nth(0).locator("td.file")).to_contain_text(_module(page, "app.js", f"(m) => m.state.names[{newest[0]['id']}]"))
        # The rank column is the server's ranking among the listed rows (scored in scope only), whatever the sort.
        expect(rows.locator("td.num:nth-child(1)")).to_have_text([str(r["rank"]) if r["rank"] else "–" for r in newest])
        assert sorted(r["rank"] for r in newest if r["rank"]) == [1, 2, 3, 4, 5]
        query, lines = _download_csv(page)
        assert query == {"limit": ["200"], "order": ["newest"]}, query
        assert [int(r["id"]) for r in lines] == [r["id"] for r in newest]
        assert [r["rank"] for r in lines] == [str(r["rank"] or "") for r in newest]
        page.screenshot(path=str(ARTIFACTS / "serve_page_filters.png"), full_page=True)
        # The filters are remembered; a reload shows the stored results as cards, in risk order, thumbnails only.
        page.reload()
        expect(page.locator("#f-order")).to_have_value("newest")
        cards = page.locator("article.card.stored")
        expect(cards).to_have_count(7)
        probs = page.evaluate("[...document.querySelectorAll('article.card[data-probability]')].map((c) => +c.dataset.probability)")
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        kinds = page.evaluate("[...document.querySelectorAll('#cards article.card')].map((c) => c.dataset.decision)")
        assert kinds[5:] == ["OUT_OF_SCOPE", ""]  # the server's decisions: none for a file that could not be read
        # The cards are in the server's risk order (its order=risk list), as its rows.
        risk = _rows_from_api(page, "order=risk&thumbnails=false")
        ids = _module(page, "app.js", "(m) => [...document.querySelectorAll('#cards article.card')].map((c) => "
                                      "m.state.results.find((r) => 'card-' + r.id === c.id).worklist_id)")
        assert ids == [r["id"] for r in risk]
        assert page.locator("[data-probability]:not(article.card)").count() == 0
        expect(page.locator("#cards-note")).to_contain_text("7 stored result(s) from the last 24 hours")
        dicom_card = page.locator("article.card", has_text="MRN-4711")
        expect(dicom_card.locator(".context")).to_contain_text("Acc. ACC-0815")
        assert not page.js_errors, page.js_errors


def test_print_report_holds_one_case(server, tmp_path):
    """"Print report" prints that one case: film, heatmap, score and threshold on 0-100, the decision words, the
    model, version and site state, the times, the DICOM context and the full disclaimer; nothing else."""
    from playwright.sync_api import expect

    dcm = _films(tmp_path)[-1]
    with _browser() as browser:
        page = _open(browser, server)
        _upload(page, [dcm, tmp_path / "blank-page.png"], heatmaps=True)
        card = page.locator("article.card[data-probability]")
        card.get_by_role("button", name="Print a report of chest.dcm").click()
        assert page.evaluate("window.__printed") == 1
        report = page.locator("#report")
        expect(report).to_be_hidden()  # on screen
        page.emulate_media(media="print")
        expect(report).to_be_visible()
        for hidden in ("main", "header.top", ".disclaimer", "footer"):
            expect(page.locator(hidden).first).to_be_hidden()
        score = float(card.get_attribute("data-probability")) * 100
        text = report.inner_text()
        for needle in (f"{score:.1f} / 100", "50.0 / 100", "seed-cnn (version", "As shipped", "MRN-4711", "ACC-0815",
                       "004Y", "PA", "2026-11-26", "chest.dcm", "Decision support, not a diagnosis.",
                       "Every result must be reviewed by a qualified clinician", "Scored", "Printed", "Read by:"):
            assert needle in text, needle
        decision = card.get_attribute("data-decision")
        assert DECISION_WORDS[decision] in text
        expect(report.locator("img")).to_have_count(2)  # the film and its heatmap
        page.screenshot(path=str(ARTIFACTS / "serve_page_report_print.png"), full_page=True)
        pdf = page.pdf(path=str(ARTIFACTS / "serve_page_report.pdf"), format="A4", print_background=True)
        assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
        assert len(re.findall(rb"/Type\s*/Page[^s]", pdf)) == 1  # one A4 page
        # The not-assessed card's report: no score, the reason.
        page.emulate_media(media="screen")
        page.locator("article.card.oos").get_by_role("button", name="Print a report of blank-page.png").click()
        page.emulate_media(media="print")
        text = report.inner_text()
        assert "Not assessed (out of scope)" in text and "blank or uniform image" in text and "/ 100" not in text
        expect(report.locator("img")).to_have_count(1)
        page.evaluate("window.dispatchEvent(new Event('afterprint'))")
        assert not page.evaluate("document.body.classList.contains('printing-report')")
        assert not page.js_errors, page.js_errors


def test_a_cards_film_opens_the_viewer_with_the_cases_in_risk_order(server, tmp_path):
    from playwright.sync_api import expect

    uploads = _films(tmp_path)
    with _browser() as browser:
        page = _open(browser, server)
        _upload(page, uploads)
        _module(page, "viewer.js", """({ PneumoscanViewer }) => {
            const real = PneumoscanViewer.open;
            window.__opened = [];
            PneumoscanViewer.open = (cases, index, opts) => {
                window.__opened.push({ cases: cases.map((c) => ({ ...c, file: c.file ? c.file.name : null,
                                        keys: Object.keys(c) })), index, hasOnClose: typeof opts.onClose,
                                        hasApi: typeof opts.api });
                return real.call(PneumoscanViewer, cases, index, opts);
            };
        }""")
        films = page.locator("article.card button.film-open")
        expect(films).to_have_count(6)  # every card with a picture; the unreadable file has none
        second = films.nth(1)
        name = page.locator("article.card").nth(1).get_attribute("aria-label")
        expect(second).to_have_accessible_name(f"Open {name} in the viewer")
        second.click()
        opened = page.evaluate("window.__opened")[0]
        assert opened["index"] == 1 and opened["hasOnClose"] == "function" and opened["hasApi"] == "function"
        cases = opened["cases"]
        assert [c["filename"] for c in cases] == page.locator("article.card:has(button.film-open)").evaluate_all(
            "(cs) => cs.map((c) => c.getAttribute('aria-label'))")
        probs = [c["probability"] for c in cases if c["in_scope"] is not False]
        assert probs == sorted(probs, reverse=True)
        for key in ("id", "filename", "ok", "probability", "score", "threshold", "score_threshold", "decision",
                    "decision_text", "positive", "in_scope", "scope_reason", "image_png", "heatmap_png", "file",
                    "context", "worklist_id"):
            assert key in cases[0]["keys"], key
        assert cases[0]["file"] in {p.name for p in uploads} and cases[0]["image_png"].startswith("data:image/png")
        assert any(c["context"].get("patient_id") == "MRN-4711" for c in cases)
        page.keyboard.press("Escape")
        # Keyboard: the film is a button; Enter and Space open it too.
        first = films.nth(0)
        first.focus()
        page.keyboard.press("Enter")
        page.keyboard.press("Escape")
        first.focus()
        page.keyboard.press(" ")
        assert [o["index"] for o in page.evaluate("window.__opened")] == [1, 0, 0]
        assert not page.js_errors, page.js_errors


def test_every_text_comes_from_strings_js(server):
    """The page's texts are STRINGS.page's: none left unfilled, the decision words, the cause phrases and the
    cause's caveat are the constants'."""
    with _browser() as browser:
        page = _open(browser, server)
        words = _module(page, "strings.js", "({ STRINGS }) => ({p: STRINGS.page.decisionPNEUMONIA, "
                        "n: STRINGS.page.decisionNORMAL, o: STRINGS.page.decisionOUT_OF_SCOPE, x: STRINGS.page.notRead})")
        assert (words["p"], words["n"], words["o"], words["x"]) == (
            DECISION_WORDS["PNEUMONIA"], DECISION_WORDS["NORMAL"], DECISION_WORDS["OUT_OF_SCOPE"], NOT_READ_WORDS)
        causes = _module(page, "strings.js", "({ STRINGS }) => ({b: STRINGS.page.causeBACTERIAL, v: STRINGS.page.causeVIRAL, "
                         "c: STRINGS.page.causeCaveat, vb: STRINGS.viewer.cause_BACTERIAL, vv: STRINGS.viewer.cause_VIRAL, "
                         "vc: STRINGS.viewer.causeCaveat})")
        assert causes == {"b": CAUSE_WORDS["BACTERIAL"], "v": CAUSE_WORDS["VIRAL"], "c": CAUSE_CAVEAT,
                          "vb": CAUSE_WORDS["BACTERIAL"], "vv": CAUSE_WORDS["VIRAL"], "vc": CAUSE_CAVEAT}, causes
        empty = page.evaluate("[...document.querySelectorAll('[data-t]')].filter((n) => !n.textContent.trim())"
                              ".map((n) => n.dataset.t)")
        assert not empty, empty
        body = page.locator("body").inner_text()
        assert "page." not in body, re.findall(r"page\.\w+", body)
        # A translation is a new STRINGS: the page follows it.
        _module(page, "strings.js", "({ STRINGS }) => { STRINGS.page.uploadTitle = 'Röntgenbilder hochladen'; }")
        _module(page, "app.js", "({ fillStaticStrings }) => fillStaticStrings()")
        assert page.locator("#upload-title").inner_text() == "Röntgenbilder hochladen"


def _imports(source: str) -> list[str]:
    """The modules a script imports (static ``import ... from "./x.js"``)."""
    return re.findall(r'^import\s[^;]*?from\s+"\./([\w.-]+\.js)";', source, re.MULTILINE | re.DOTALL)


def test_the_page_is_es_modules_and_keeps_none_of_the_servers_rules(server):
    """index.html loads the page as ES modules only: one module script, no classic script, every script reached
    through imports (no build step), nothing shared through ``window``. No script ranks results or writes a CSV:
    no CSV column list, no ranking function (the ranking, the cards' order and the CSV are the server's)."""
    from playwright.sync_api import expect

    html = (STATIC / "index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script\b([^>]*)>", html)
    assert scripts == [' type="module" src="static/main.js"'], scripts  # modules only: no classic script tag
    scripts_js = {p.name: p.read_text(encoding="utf-8") for p in STATIC.glob("*.js")}
    reached, todo = set(), ["main.js"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += _imports(scripts_js[name])
    assert reached == set(scripts_js), set(scripts_js) - reached  # every script is a module main.js reaches
    for name, source in scripts_js.items():
        assert '"use strict"' not in source, name  # modules are strict anyway
        assert not re.search(r"\bwindow\.\w+\s*=[^=]", source), name  # no globals
        assert "document.currentScript" not in source and 'createElement("script")' not in source, name
        assert name == "main.js" or re.search(r"^export ", source, re.MULTILINE), name
        # No CSV of the page's own: no column list, no rows joined with commas, no CSV blob.
        assert not re.search(r"CSV_COLUMNS|csvRow|csvCell|text/csv", source), name
        assert not re.search(r'\[\s*"rank"\s*,', source) and '.join(",")' not in source, name
        # No ranking: no function of that name, nothing sorted by probability or score.
        assert not re.search(r"\b(function\s+|const\s+)(ranks|riskOrder|cardGroup)\b", source), name
        assert not re.search(r"\.(probability|score)\s*-\s*\w+\.(probability|score)", source), name
    with _browser() as browser:
        page = _open(browser, server)
        for name in scripts_js:  # served as JavaScript (a browser runs a module only then)
            response = page.request.get(page.url + "static/" + name)
            assert response.ok and response.headers["content-type"].startswith("text/javascript"), name
        leaked = page.evaluate("""['STRINGS', 't', 'T', 'state', 'api', 'el', 'fillStaticStrings', 'PneumoscanViewer',
            'PneumoscanFilm', 'PneumoscanViewerUI', 'refreshWorklist', 'printReport'].filter((k) => k in window)""")
        assert leaked == [], leaked
        loaded = page.evaluate("""performance.getEntriesByType('resource').map((e) => e.name)
            .filter((u) => u.endsWith('.js')).map((u) => u.split('/').pop())""")
        assert set(loaded) == set(scripts_js), loaded  # the viewer's parts come through imports, no script tags
        expect(page.locator("script:not([type=module])")).to_have_count(0)
        assert not page.js_errors, page.js_errors


def _screens(page, uploads, label: str) -> list[str]:
    """Walk the page's screens (empty, results, filtered worklist, the report in print, the viewer open): no
    horizontal overflow, a screenshot each, and axe-core's serious and critical violations (returned)."""
    from playwright.sync_api import expect

    found = _axe(page, f"{label} empty")
    _no_horizontal_overflow(page)
    page.screenshot(path=str(ARTIFACTS / f"serve_page_{label}_empty.png"), full_page=True)
    _upload(page, uploads, heatmaps=True)
    found += _axe(page, f"{label} results")
    _no_horizontal_overflow(page)
    page.screenshot(path=str(ARTIFACTS / f"serve_page_{label}_results.png"), full_page=True)
    page.get_by_label("Borderline", exact=True).check()
    page.get_by_label("Not yet reviewed").check()
    expect(page.locator("#worklist tbody tr").first).to_be_visible()
    found += _axe(page, f"{label} filtered")
    _no_horizontal_overflow(page)
    page.locator("#worklist").screenshot(path=str(ARTIFACTS / f"serve_page_{label}_filtered.png"))
    page.get_by_label("Borderline", exact=True).uncheck()
    page.get_by_label("Not yet reviewed").uncheck()
    page.locator("article.card[data-probability] button.print-report").first.click()
    page.emulate_media(media="print")
    page.screenshot(path=str(ARTIFACTS / f"serve_page_{label}_report.png"), full_page=True)
    page.emulate_media(media="screen")
    page.evaluate("window.dispatchEvent(new Event('afterprint'))")
    page.locator("article.card button.film-open").first.click()
    dialog = page.get_by_role("dialog")
    if dialog.count():  # the viewer (viewer.js) is filled in
        expect(dialog).to_be_visible()
        found += _axe(page, f"{label} viewer")
        page.screenshot(path=str(ARTIFACTS / f"serve_page_{label}_viewer.png"))
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
    return found


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_screen_in_both_sizes_is_accessible_and_fits(server, tmp_path, scheme):
    """axe-core (axe-playwright-python) finds no serious or critical violation on any screen, at 1440 x 900 and
    390 x 844, in the light or the dark theme; no screen overflows sideways; screenshots of each."""
    uploads = _films(tmp_path)[:1] + _films(tmp_path)[4:]  # a film, a blank page, an unreadable file, a DICOM
    found: list[str] = []
    with _browser() as browser:
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page = _open(browser, server, viewport, scheme)
            if size == "phone":  # the desktop's uploads are stored: they come back as cards; add this page's
                page.locator("#clear").click()
                page.locator("#clear").click()
            found += _screens(page, uploads, f"{scheme}_{size}")
            assert not page.js_errors, page.js_errors
            page.context.close()
    assert not found, "\n".join(found)
