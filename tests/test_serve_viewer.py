"""The film viewer (static/viewer.js) in headless Chromium: opened with cases built from real predict responses,
zoom, window/level, the lazily computed heatmap (overlay with opacity, side by side; coloured as the server's
overlays, with the outline of the strongest region on request), j/k, Escape and focus, the dialog's accessibility;
screenshots at 1440 x 900 and 390 x 844, light and dark, in ``test-artifacts/viewer_*.png``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from imagefactory import dicom_bytes, png_bytes, synthetic_xray
from test_serve_e2e import (  # noqa: F401 - fixtures, used by name
    ARTIFACTS,
    _browser,
    _sample_image,
    predictor,
    pytestmark,
    server,
)

STATIC = Path(__file__).resolve().parents[1] / "src/pneumoscan/serve/static"

# Builds the viewer's cases as the page would: one POST api/v1/predict per file (no heatmap: the page's default),
# each result with its File (uploaded from this tab) unless `keep` is false (a result restored from the worklist).
_PREDICT = """async (files) => {
  const cases = [];
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.b64), (ch) => ch.charCodeAt(0));
    const file = new File([bytes], f.name, { type: f.type });
    const form = new FormData();
    form.append("files", file, f.name);
    const res = await fetch("api/v1/predict?preview=true", { method: "POST", body: form });
    const r = (await res.json()).results[0];
    r.id = 900 + cases.length;
    if (f.keep) r.file = file;
    cases.push(r);
  }
  cases.sort((a, b) => b.probability - a.probability);
  window.__cases = cases;
  return cases.map((c) => c.filename);
}"""

# The viewer is an ES module (static/viewer.js): the page's own instance, imported, not a global.
_OPEN = """async (i) => { window.__closed = 0;
  const { PneumoscanViewer } = await import(new URL("static/viewer.js", location.href).href);
  PneumoscanViewer.open(window.__cases, i, { onClose: () => { window.__closed += 1; } }); }"""

# A sparse checksum of the visible film canvas (every 97th pixel's red value).
_PIXELS = """() => { const c = document.querySelector(".pv-pane:not([hidden]) canvas.pv-film");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let s = 0; for (let i = 0; i < d.length; i += 4 * 97) s += d[i]; return [c.width, c.height, s]; }"""


def _files(tmp_path: Path) -> list[dict]:
    sample = _sample_image(tmp_path)
    dcm = dicom_bytes((synthetic_xray(420, 360, seed=7).astype(np.uint16) * 16), bits_stored=12)
    items = [(sample.name, sample.read_bytes(), "image/jpeg", True),
             # 16-bit, 12 bits used: the browser would show it black; the server stretches it as for scoring.
             ("phantom.png", png_bytes(synthetic_xray(480, 400, seed=8).astype(np.uint16) * 16), "image/png", True),
             ("scan.dcm", dcm, "application/dicom", True),
             ("restored.png", png_bytes(synthetic_xray(300, 260, seed=9)), "image/png", False)]
    return [{"name": n, "b64": base64.b64encode(d).decode("ascii"), "type": t, "keep": k} for n, d, t, k in items]


def _ready(page):
    from playwright.sync_api import expect

    expect(page.locator(".pv-dialog")).to_have_attribute("data-film", "ready", timeout=20_000)


def _zoom(page) -> float:
    return float(page.locator(".pv-dialog").get_attribute("data-zoom"))


def _transform(page) -> str:
    return page.locator(".pv-pane").first.locator(".pv-layer").evaluate("e => e.style.transform")


def test_viewer_zoom_window_heatmap_navigation_and_focus(server, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    with _browser() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        names = page.evaluate(_PREDICT, _files(tmp_path))
        opener = page.locator("#theme-toggle")
        opener.focus()
        page.evaluate(_OPEN, 0)
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        expect(dialog).to_have_attribute("aria-modal", "true")
        expect(dialog).to_have_accessible_name(names[0])
        _ready(page)
        expect(dialog.locator(".pv-result")).to_contain_text(" / 100")
        expect(dialog.locator(".pv-disclaimer")).to_have_text("Decision support, not a diagnosis")
        _every_control_is_named(page)
        _zoom_changes_the_transform(page)
        _presets_change_the_pixels(page)
        _navigate_and_heatmap(page, names)
        # Focus stays inside: Tab from the last control wraps to the first.
        for _ in range(40):
            page.keyboard.press("Tab")
            assert page.evaluate("document.querySelector('.pv-dialog').contains(document.activeElement)")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        assert page.evaluate("document.activeElement.id") == "theme-toggle"
        assert page.evaluate("window.__closed") == 1
        assert page.evaluate("document.querySelector('main').inert") is False


def _every_control_is_named(page) -> None:
    unnamed = page.evaluate("""() => [...document.querySelectorAll('.pv-dialog button, .pv-dialog select, .pv-dialog input')]
      .filter((e) => !(e.getAttribute('aria-label') || e.closest('label') || e.textContent.trim()))
      .map((e) => e.outerHTML)""")
    assert unnamed == []
    assert page.evaluate("document.querySelector('main').inert") is True  # the page behind is out of reach


def _zoom_changes_the_transform(page) -> None:
    fitted, before = _zoom(page), _transform(page)
    page.keyboard.press("+")
    assert _zoom(page) == pytest.approx(fitted * 1.25, rel=1e-3) and _transform(page) != before
    page.get_by_role("button", name="Zoom in (+)").click()
    assert _zoom(page) == pytest.approx(fitted * 1.25 ** 2, rel=1e-3)
    page.keyboard.press("-")
    page.keyboard.press("0")
    assert _zoom(page) == pytest.approx(fitted, rel=1e-3) and _transform(page) == before
    page.get_by_role("button", name="Actual pixels: one film pixel per screen pixel (1)").click()
    assert _zoom(page) == pytest.approx(1.0, rel=1e-3)
    page.mouse.move(700, 500)
    page.mouse.wheel(0, -200)
    assert _zoom(page) > 1.0
    box = page.locator(".pv-pane").first.bounding_box()
    moved = _transform(page)
    page.mouse.move(box["x"] + 200, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] + 260, box["y"] + 240, steps=3)
    page.mouse.up()
    assert _transform(page) != moved  # dragged: panned
    page.keyboard.press("0")
    # Pinch (two touch pointers moving apart) zooms in.
    fitted = _zoom(page)
    page.evaluate("""() => {
      const pane = document.querySelector(".pv-pane"), r = pane.getBoundingClientRect();
      const cx = r.left + r.width / 2, cy = r.top + r.height / 2;
      const fire = (type, id, x) => pane.dispatchEvent(new PointerEvent(type, { pointerId: id, pointerType: "touch",
        clientX: x, clientY: cy, bubbles: true, cancelable: true, isPrimary: id === 1 }));
      fire("pointerdown", 1, cx - 50); fire("pointerdown", 2, cx + 50);
      fire("pointermove", 1, cx - 100); fire("pointermove", 2, cx + 100);
      fire("pointerup", 1, cx - 100); fire("pointerup", 2, cx + 100);
    }""")
    assert _zoom(page) == pytest.approx(fitted * 2, rel=0.02)
    page.keyboard.press("0")


def _presets_change_the_pixels(page) -> None:
    w, h, default = page.evaluate(_PIXELS)
    assert w > 512 or h > 512  # the film at full resolution, not the 512 px preview
    page.get_by_label("Window/level preset").select_option("bone")
    bone = page.evaluate(_PIXELS)[2]
    assert bone != default
    expect_text(page, ".pv-wl", "W 140 L 180")
    page.keyboard.press("i")
    assert page.evaluate(_PIXELS)[2] != bone
    expect_attr(page, "Invert the gray levels (i)", "aria-pressed", "true")
    # Right-drag adjusts window/level ("Custom").
    box = page.locator(".pv-pane").first.bounding_box()
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.down(button="right")
    page.mouse.move(box["x"] + 360, box["y"] + 340, steps=3)
    page.mouse.up(button="right")
    assert page.get_by_label("Window/level preset").input_value() == "custom"
    page.keyboard.press("r")
    assert page.evaluate(_PIXELS)[2] == default
    assert page.get_by_label("Window/level preset").input_value() == "default"


def expect_text(page, selector: str, text: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_have_text(text)


def expect_attr(page, name: str, attr: str, value: str) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("button", name=name)).to_have_attribute(attr, value)


def _go(page, names: list[str], here: int, name: str) -> None:
    from playwright.sync_api import expect

    steps = names.index(name) - here
    for _ in range(abs(steps)):
        page.keyboard.press("j" if steps > 0 else "k")
    expect(page.locator("#pv-title")).to_have_text(name)


def _navigate_and_heatmap(page, names: list[str]) -> None:
    from playwright.sync_api import expect

    dialog = page.locator(".pv-dialog")
    # h: the case has no heatmap (the page no longer computes them by default): fetched from its File.
    page.keyboard.press("h")
    expect(dialog).to_have_attribute("data-heatmap", "overlay")
    heat = page.locator(".pv-pane").first.locator("canvas.pv-heatmap")
    expect(heat).to_be_visible(timeout=20_000)
    pane = page.locator(".pv-pane").first
    before = pane.screenshot()
    slider = page.get_by_label("Heatmap opacity")
    slider.focus()
    for _ in range(30):
        page.keyboard.press("ArrowRight")
    assert heat.evaluate("e => e.style.opacity") == "0.8"
    assert pane.screenshot() != before
    page.keyboard.press("h")
    expect(dialog).to_have_attribute("data-heatmap", "side")
    expect(page.locator(".pv-pane").nth(1).locator("canvas.pv-heatmap")).to_be_visible()
    # j / k: next and previous in the list's order; the title follows.
    page.keyboard.press("j")
    expect(dialog).to_have_attribute("data-case-index", "1")
    expect(page.locator("#pv-title")).to_have_text(names[1])
    _ready(page)
    page.keyboard.press("k")
    expect(dialog).to_have_attribute("data-case-index", "0")
    # The DICOM film comes from the server (the browser cannot decode it); its heatmap too.
    _go(page, names, 0, "phantom.png")
    _ready(page)
    w, h, total = page.evaluate(_PIXELS)
    assert (w, h) == (400, 480) and total / (w * h / 97) > 40  # not black
    _go(page, names, names.index("phantom.png"), "scan.dcm")
    _ready(page)
    assert page.evaluate(_PIXELS)[:2] == [360, 420]
    expect(page.locator(".pv-pane").nth(1).locator("canvas.pv-heatmap")).to_be_visible(timeout=20_000)
    # A result restored from the worklist has no File: the viewer says so plainly.
    _go(page, names, names.index("scan.dcm"), "restored.png")
    expect(page.locator(".pv-status")).to_contain_text("server never keeps images")
    expect(page.locator(".pv-info")).to_contain_text("Preview only")
    page.keyboard.press("h")
    expect(dialog).to_have_attribute("data-heatmap", "off")
    for _ in range(len(names)):
        page.keyboard.press("k")
    expect(dialog).to_have_attribute("data-case-index", "0")


def _axe(page) -> list[str]:
    """axe-core (bundled with axe-playwright-python; nothing downloaded) on the open viewer: serious and critical
    violations, as lines."""
    from axe_playwright_python.sync_playwright import Axe

    response = Axe().run(page, context=".pv-root").response
    return [f"{v['id']} ({v['impact']}) {v['help']}: {[n['target'] for n in v['nodes']][:4]}"
            for v in response["violations"] if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_viewer_screenshots(server, tmp_path, scheme):  # noqa: F811
    """The open viewer with the heatmap overlay, at 1440 x 900 and 390 x 844: nothing overflows, the toolbar and the
    disclaimer are on screen."""
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with _browser() as browser:
        context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme=scheme)
        page = context.new_page()
        page.goto(server)
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        page.evaluate(_PREDICT, _files(tmp_path)[:2])
        page.evaluate(_OPEN, 0)
        _ready(page)
        page.keyboard.press("h")
        expect(page.locator(".pv-pane").first.locator("canvas.pv-heatmap")).to_be_visible(timeout=20_000)
        assert _axe(page) == []
        for width, height in ((1440, 900), (390, 844)):
            page.set_viewport_size({"width": width, "height": height})
            page.keyboard.press("0")
            for name in ("Close the viewer (Esc)", "Next case (j)", "Fit the film to the window (0)"):
                expect(page.get_by_role("button", name=name)).to_be_in_viewport()
            expect(page.locator(".pv-disclaimer")).to_be_in_viewport()
            assert page.evaluate("document.querySelector('.pv-dialog').scrollWidth <= innerWidth")
            page.screenshot(path=str(ARTIFACTS / f"viewer_{width}x{height}_{scheme}.png"))
            page.keyboard.press("h")  # side by side
            expect(page.locator(".pv-pane").nth(1)).to_be_visible()
            page.keyboard.press("0")
            page.screenshot(path=str(ARTIFACTS / f"viewer_{width}x{height}_{scheme}_side.png"))
            page.keyboard.press("h")
            page.keyboard.press("h")  # off, then overlay again
            expect(page.locator(".pv-pane").first.locator("canvas.pv-heatmap")).to_be_visible()
        context.close()


def test_clicking_a_card_opens_the_viewer(server, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    cards_js = (STATIC / "cards.js").read_text(encoding="utf-8")
    assert 'import { PneumoscanViewer } from "./viewer.js";' in cards_js  # the page's cards import the viewer

    sample = _sample_image(tmp_path)
    other = tmp_path / "second.png"
    other.write_bytes(png_bytes(synthetic_xray(400, 340, seed=11)))
    with _browser() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        page.set_input_files("#file-input", [str(sample), str(other)])
        cards = page.locator("article.card[data-decision]")
        expect(cards).to_have_count(2, timeout=30_000)
        # The worklist is re-ranked as the second result and the next refresh arrive: read the cards' names once the
        # page is quiet, and check the viewer against the card that was actually opened (the order may settle late).
        page.wait_for_load_state("networkidle")
        labels = {cards.nth(i).get_attribute("aria-label") for i in range(2)}
        assert len(labels) == 2 and None not in labels
        cards.first.locator("img").first.click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        opened = page.locator("#pv-title").inner_text().strip()
        assert opened in labels
        expect(dialog).to_have_accessible_name(opened)
        _ready(page)
        page.keyboard.press("j")
        expect(page.locator("#pv-title")).to_have_text((labels - {opened}).pop())
        page.keyboard.press("k")
        expect(page.locator("#pv-title")).to_have_text(opened)
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        assert page.evaluate("document.activeElement.closest('article.card') !== null")


def _module(page, function: str):
    """``function`` (JavaScript, called with static/viewer-film.js's exports) in the page, on its own instance."""
    return page.evaluate(f"""async () => {{
        const m = await import(new URL("static/viewer-film.js", location.href).href);
        return ({function})(m);
    }}""")


def _blob(h: int = 160, w: int = 200) -> np.ndarray:
    """A heatmap as the server sends it (0 none .. 255 most): one smooth blob, its maximum 255."""
    yy, xx = np.mgrid[0:h, 0:w]
    heat = np.exp(-(((yy - 0.45 * h) / (0.2 * h)) ** 2 + ((xx - 0.6 * w) / (0.18 * w)) ** 2))
    return np.rint(255 * heat / heat.max()).astype(np.uint8)


def test_the_viewer_colours_the_map_as_the_servers_overlay(server):  # noqa: F811
    """viewer-film.js's heatTable(alpha) is render.heat_table(alpha) (RGB within 1 of 255, opacity within 1e-6),
    with the same evidence floor and outline level; its drawOutline marks what render.outline_mask marks."""
    from pneumoscan.inference.render import EVIDENCE_FLOOR, OUTLINE_LEVEL, OUTLINE_RGB, heat_table, outline_mask

    with _browser() as browser:
        page = browser.new_page(viewport={"width": 800, "height": 600})
        page.goto(server)
        consts = _module(page, "(m) => [m.EVIDENCE_FLOOR, m.OUTLINE_LEVEL, m.OUTLINE_RGB]")
        assert consts == [EVIDENCE_FLOOR, OUTLINE_LEVEL, list(OUTLINE_RGB)]
        for alpha in (1.0, 0.55, 0.3):
            js = np.asarray(_module(page, f"(m) => m.heatTable({alpha})"), dtype=np.float64)
            py = heat_table(alpha).astype(np.float64)
            assert js.shape == py.shape == (256, 4)
            assert np.abs(js[:, :3] - py[:, :3]).max() <= 1.0, alpha
            assert np.abs(js[:, 3] - py[:, 3]).max() <= 1e-6, alpha
        assert (js[:64, 3] == 0).all() and js[64, 3] > 0  # nothing drawn below the floor (64 / 255 > 0.25)
        blob = _blob()
        h, w = blob.shape
        drawn = np.asarray(_module(page, f"""(m) => {{
            const c = document.createElement("canvas");
            const n = m.drawOutline(c, {{ w: {w}, h: {h}, v: Uint8Array.from({blob.ravel().tolist()}) }});
            const d = c.getContext("2d").getImageData(0, 0, {w}, {h}).data;
            return [n, Array.from(d.filter((_, i) => i % 4 === 3))];
        }}""")[1]).reshape(h, w) > 0
        want = outline_mask(blob.astype(np.float32) / 255)
        assert want.sum() > 50 and np.array_equal(drawn, want), (int(drawn.sum()), int(want.sum()))


# The heatmap the first case gets without asking the server: a known blob, so the outline has a region to draw.
_GIVE_MAP = """(uri) => { window.__cases[0].heatmap_map = uri; }"""

# Cyan pixels (the outline's colour) on a pane's outline canvas, and whether that canvas is shown.
_OUTLINE = """() => { const c = document.querySelector(".pv-pane canvas.pv-outline");
  if (!c.width) return [c.hidden, 0];
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] && !d[i] && d[i + 1] === 255 && d[i + 2] === 255) n++;
  return [c.hidden, n]; }"""


def test_the_outline_of_the_strongest_region_is_toggled(server, tmp_path):  # noqa: F811
    """The toolbar's "Outline strongest region" button (off by default; o too) draws the region's border in cyan
    over the heatmap, at full strength whatever the opacity, and takes it away again."""
    from playwright.sync_api import expect

    uri = "data:image/png;base64," + base64.b64encode(png_bytes(_blob(240, 200))).decode("ascii")
    with _browser() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(server)
        expect(page.locator("#model-line")).to_contain_text("seed-cnn")
        page.evaluate(_PREDICT, _files(tmp_path)[:1])
        page.evaluate(_GIVE_MAP, uri)
        page.evaluate(_OPEN, 0)
        _ready(page)
        outline = page.get_by_role("toolbar").get_by_role("button", name="Outline strongest region (o)")
        expect(outline).to_have_attribute("aria-pressed", "false")
        expect(outline).to_be_disabled()  # with the heatmap off
        page.keyboard.press("h")
        expect(page.locator(".pv-pane").first.locator("canvas.pv-heatmap")).to_be_visible(timeout=20_000)
        expect(outline).to_be_enabled()
        pane = page.locator(".pv-pane").first
        before = pane.screenshot()
        assert page.evaluate(_OUTLINE)[0] is True  # off by default
        outline.click()
        expect(outline).to_have_attribute("aria-pressed", "true")
        hidden, cyan = page.evaluate(_OUTLINE)
        assert hidden is False and cyan > 50
        assert pane.screenshot() != before
        page.keyboard.press("o")
        expect(outline).to_have_attribute("aria-pressed", "false")
        assert page.evaluate(_OUTLINE)[0] is True
        assert pane.screenshot() == before
        # The ramp's key: yellow to red from the floor, labelled.
        expect(page.locator(".pv-ramp")).to_have_text("lessmore evidence")
        ramp = page.locator(".pv-ramp i").evaluate("e => getComputedStyle(e).backgroundImage")
        assert "rgba(0, 0, 0, 0) 25%" in ramp and "rgb(255, 255, 0) 25%" in ramp and "rgb(255, 0, 0)" in ramp, ramp
        assert _axe(page) == []
