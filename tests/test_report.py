"""The evaluation report's pieces, quickly, without training: the ROC plot's zoomed inset, the gallery (its
heatmaps, enlargeable entries, the 0-100 score and the one decision wording, checked by parsing the HTML) and how
intervals are labelled."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from resultfactory import scored

from pneumoscan import metrics as M
from pneumoscan.constants import DECISION_WORDS
from pneumoscan.evaluation.report import GALLERY_SIZES, _ci, plots
from pneumoscan.evaluation.report.gallery import build_gallery
from pneumoscan.metrics.uncertainty import CI_BOOTSTRAP, CI_EXACT, CI_NO_SPREAD

VOID = {"img", "br", "meta", "input", "hr", "link", "source", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []  # children: nodes and strings

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag=None, cls=None, **attrs):
        return [n for n in self.iter() if (tag is None or n.tag == tag)
                and (cls is None or cls in (n.attrs.get("class") or "").split())
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def all_text(self) -> str:
        return "".join(c.all_text() if isinstance(c, Node) else c for c in self.children)


class Tree(HTMLParser):
    """A small DOM: enough to ask which element holds which."""

    def __init__(self, html: str):
        super().__init__()
        self.root = self.cur = Node("#root", {}, None)
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag == "br":
            self.cur.children.append("\n")
        if tag not in VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


# --- the ROC inset ----------------------------------------------------------------------------------------------


def _good_scores(n_pos=60, n_neg=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    return y, np.clip(np.r_[rng.beta(8, 1.2, n_pos), rng.beta(1.3, 5, n_neg)], 0, 1)


def _insets(fig):
    """The inset axes (matplotlib keeps them as children of the axes they sit in, not in ``fig.axes``)."""
    return [c for ax in fig.axes for c in ax.child_axes if c.get_label() == plots.INSET_LABEL]


def test_roc_inset_zooms_on_the_top_left_corner_and_keeps_markers_apart():
    y, p = _good_scores()
    ths = {"operating": 0.4, "fixed_0.5": 0.5, "youden": 0.6}  # three points within 0.08 of the corner
    fig = plots.roc_axes(y, p, ths)
    insets = _insets(fig)
    assert len(insets) == 1
    ins = insets[0]
    (x0, x1), (y0, y1) = ins.get_xlim(), ins.get_ylim()
    assert x0 <= 0 < x1 <= 0.5 and 0.5 <= y0 < 1 <= y1  # the top-left corner, zoomed
    # Every threshold's point lies inside the inset, drawn with its own marker, size and colour.
    markers = [ln for ln in ins.get_lines() if ln.get_marker() not in ("None", None, "")]
    assert len(markers) == 3
    assert len({(ln.get_marker(), ln.get_markersize(), ln.get_color()) for ln in markers}) == 3
    assert len({ln.get_markersize() for ln in markers}) == 3  # nested, so coinciding points stay visible
    for ln in markers:
        (mx,), (my,) = ln.get_data()
        assert x0 <= mx <= x1 and y0 <= my <= y1
    # Named in the inset (a label per point); the zoom is marked on the main plot.
    names = {t.get_text() for t in ins.texts}
    assert names == {"operating", "fixed 50", "Youden"}
    assert plots.roc_figure(y, p, ths)[:8] == b"\x89PNG\r\n\x1a\n"


def test_roc_coinciding_thresholds_share_one_label_and_far_points_get_no_inset():
    y = np.r_[np.ones(20, int), np.zeros(20, int)]
    p = np.r_[np.full(20, 0.9), np.full(20, 0.1)]
    fig = plots.roc_axes(y, p, {"operating": 0.3, "fixed_0.5": 0.5, "youden": 0.6})
    (ins,) = _insets(fig)
    assert [t.get_text() for t in ins.texts] == ["operating = fixed 50 = Youden"]
    # A useless model: its points lie far from the corner; no inset, the points are named on the main plot.
    rng = np.random.default_rng(1)
    fig = plots.roc_axes(y, rng.random(40) * 0.1 + 0.4, {"operating": 0.5})
    assert not _insets(fig)
    assert [t.get_text() for t in fig.axes[0].texts] == ["operating"]


# --- intervals in the report --------------------------------------------------------------------------------------


def test_interval_text_names_exact_intervals_and_hides_zero_width_ones():
    assert str(_ci([0.5, 0.75])) == "50.0% to 75.0%"
    assert str(_ci({"value": 0.6, "ci": [0.5, 0.75], "ci_method": CI_BOOTSTRAP})) == "50.0% to 75.0%"
    exact = str(_ci({"value": 1.0, "ci": [0.8316, 1.0], "ci_method": CI_EXACT}))
    assert exact.startswith("83.2% to 100.0%") and ">exact</abbr>" in exact and "Clopper-Pearson" in exact
    flat = str(_ci({"value": 1.0, "ci": [1.0, 1.0], "ci_method": CI_NO_SPREAD}, "num"))
    assert "1.000 to 1.000" not in flat and "no spread" in flat
    assert str(_ci([float("nan"), 1.0])) == ""


# --- the gallery ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """An untrained checkpoint on 20 pneumonia and 6 normal films: every score falls below 50, so there are more
    missed pneumonias than the gallery shows."""
    from imagefactory import make_png, synthetic_xray
    from modelfactory import make_checkpoint

    from pneumoscan.evaluation import evaluate

    tmp = tmp_path_factory.mktemp("report")
    root = tmp / "data"
    for label, seeds in (("NORMAL", range(6)), ("PNEUMONIA", range(6, 26))):
        (root / label).mkdir(parents=True)
        for s in seeds:
            make_png(root / label / f"p{s}.png", synthetic_xray(140, 120, seed=s))
    ckpt = make_checkpoint(tmp / "m.safetensors", threshold=0.5)
    result = evaluate([ckpt], root, tmp / "out", cache_dir=tmp / "cache", bootstrap_samples=50)
    return result, tmp / "out" / "report.html"


def test_gallery_entries_have_heatmaps_and_open_enlarged(small_report):
    result, path = small_report
    html = path.read_text(encoding="utf-8")
    tree = Tree(html)
    conf = result["models"][0]["summary"]["thresholds"]["operating"]["confusion"]
    assert conf["fn"] > GALLERY_SIZES["fn"]  # the fixture's premise
    items = tree.root.find_all("figure", cls="gallery-item")
    assert len(items) == sum(min(GALLERY_SIZES[k], conf[k]) for k in ("fn", "fp", "tp", "tn"))  # no cause output
    ids = set()
    for item in items:
        (button,) = item.find_all("button", cls="open")
        target = button.attrs["popovertarget"]
        ids.add(target)
        assert button.attrs.get("aria-label", "").startswith("Enlarge")
        thumbs = button.find_all("img")
        assert len(thumbs) == 2 and len(button.find_all("img", cls="heat")) == 1  # film and its heatmap
        (box,) = tree.root.find_all(id=target)
        assert "popover" in box.attrs and box.attrs.get("role") == "dialog"
        (close,) = box.find_all("button", cls="close")
        assert close.attrs["popovertarget"] == target and close.attrs["popovertargetaction"] == "hide"
        film, heat = (_decode(img.attrs["src"]) for img in box.find_all("img"))
        assert max(film.size) > 116 and heat.size == film.size  # enlarged, side by side at one size
        rgb = np.asarray(heat.convert("RGB"), dtype=np.int16)
        assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 40  # coloured: a heatmap, not the grey film
        # The one wording, the 0-100 scale, the truth.
        text = " ".join(box.all_text().split())
        score = float(item.attrs["data-score"])
        assert f"Score {score:.1f} of 100; threshold 50.0." in text
        kind = item.attrs["data-kind"]
        decision = DECISION_WORDS["PNEUMONIA" if kind in ("tp", "fp") else "NORMAL"]
        assert f"Decision: {decision}." in text
        assert f"True label: {'Pneumonia' if kind in ('tp', 'fn') else 'Normal'}" in text
        caption = " ".join(item.find_all("figcaption")[0].all_text().split())
        assert caption.startswith(f"Score {score:.1f} (threshold 50.0) {decision} True label:")
    assert len(ids) == len(items)  # one enlarged view per entry, ids unique
    # How many were left out is said; nothing external; a sensible size.
    left = conf["fn"] - GALLERY_SIZES["fn"]
    assert f"({GALLERY_SIZES['fn']} shown of {conf['fn']}; {left} left out" in html
    assert not tree.root.find_all("script") and "http://" not in html and "https://" not in html
    assert path.stat().st_size < 2_000_000
    assert "Occlusion sensitivity" in html and "Grad-CAM heatmap" not in html


def test_report_speaks_the_one_decision_language(small_report):
    result, path = small_report
    html = path.read_text(encoding="utf-8")
    text = " ".join(Tree(html).root.all_text().split())
    for words in DECISION_WORDS.values():
        assert words in text
    # Thresholds on the 0-100 scale, never as a bare probability "t = 0.5000" or "p = 0.447".
    assert "t = " not in text and "p = " not in text
    assert "Operating threshold 50.0 on the 0–100 score (probability 0.5000)" in text
    assert "threshold 50.0" in text and "Scores and decisions." in text
    # The exact interval is named beside the numbers it replaced (all 6 normals right: 100% specificity).
    spec = result["models"][0]["summary"]["thresholds"]["operating"]["metrics"]["specificity"]
    assert spec["value"] == 1.0 and spec["ci_method"] == CI_EXACT
    assert spec["ci"] == pytest.approx([0.025 ** (1 / 6), 1.0])
    assert f"{100 * spec['ci'][0]:.1f}% to 100.0% exact" in text
    assert "100.0% to 100.0%" not in text and "Clopper–Pearson" in text


def test_gallery_without_a_torch_model_shows_films_and_says_why(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 32, 32), dtype=np.uint8)
    records = [SimpleNamespace(path=str(tmp_path / f"gone{i}.png"), label=i % 2, patient_id=f"p{i}", cause=None)
               for i in range(6)]
    sm = SimpleNamespace(probs=np.linspace(0.1, 0.9, 6), images=images, rows=np.arange(6),
                         checkpoint=SimpleNamespace(info=None))  # an ONNX-only evaluation: no weights to explain
    results = [scored(r.path, float(p)) for r, p in zip(records, sm.probs, strict=True)]  # threshold 0.5
    gal = build_gallery(sm, records, results, np.array([r.label for r in records]), 0.5, "m1")
    assert not gal["heatmaps"] and "Heatmaps could not be made" in gal["heatmap_note"]
    items = [it for k in gal["kinds"].values() for it in k["items"]]
    assert len(items) == 6 and all(it["heat"] is None and it["large_heat"] is None for it in items)
    # The files are gone: the enlarged film is the cached square.
    assert all(_decode(it["large"]).size == (32, 32) for it in items)
    assert {it["decision"] for it in items} == {DECISION_WORDS["PNEUMONIA"], DECISION_WORDS["NORMAL"]}
    assert [it["score"] for it in gal["kinds"]["fp"]["items"]] == [M.score_100(0.74)] == [74.0]
    assert Path(items[0]["name"]).suffix == ".png"


# --- in the browser -----------------------------------------------------------------------------------------------


def test_gallery_enlarges_with_the_keyboard_in_chromium(small_report):
    """Enter on a thumbnail opens the film and heatmap side by side, focus goes to Close, Esc shuts it and gives
    focus back; no horizontal overflow at 390 px. Screenshots go to test-artifacts/."""
    import os
    import shutil

    chromium = os.environ.get("PNEUMOSCAN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip(f"Chromium not found at {chromium}; scripts/test.sh installs Debian's chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    _, path = small_report
    artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            for width, height in ((1440, 900), (390, 844)):
                page = browser.new_page(viewport={"width": width, "height": height})
                requests: list[str] = []
                page.on("request", lambda r, seen=requests: seen.append(r.url))
                page.goto(path.as_uri())
                assert page.evaluate("document.documentElement.scrollWidth") <= width
                first = page.locator(".gallery-item .open").first
                first.focus()
                page.keyboard.press("Enter")
                box = page.locator(".lightbox:popover-open")
                assert box.count() == 1 and box.locator("img").count() == 2
                assert box.locator("img").nth(1).bounding_box()["width"] > 116  # enlarged
                assert page.evaluate("document.activeElement.classList.contains('close')")
                page.screenshot(path=str(artifacts / f"report-gallery-enlarged-{width}x{height}.png"))
                page.keyboard.press("Escape")
                assert page.locator(".lightbox:popover-open").count() == 0
                assert page.evaluate("document.activeElement.classList.contains('open')")
                assert all(u.startswith(("file:", "data:")) for u in requests)
                page.close()
        finally:
            browser.close()
