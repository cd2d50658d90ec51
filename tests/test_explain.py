"""The explanation (occlusion sensitivity): the map's arithmetic, overlays, heatmap files, and three sanity checks.

(a) Model randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): an explanation
    that does not change when the weights are randomised explains the image, not the model.
(b) Data randomisation (the same paper): a model trained on shuffled labels learned nothing about the blob, so its
    map must not point at the blob as the trained model's does.
(c) On synthetic films whose label is a bright blob, a small trained model's heatmap peaks on the blob.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagefactory import make_png, synthetic_xray
from modelfactory import checkpoint_meta
from pneumoscan.inference.occlusion import GRID, block_side, occlusion_map
from pneumoscan.inference.render import (
    EVIDENCE_FLOOR,
    OUTLINE_LEVEL,
    heat_table,
    outline_mask,
    render_overlay,
    save_overlay,
    unique_stems,
)
from pneumoscan.models import SeedCNN, default_preprocessing
from pneumoscan.preprocessing import preprocess
from pneumoscan.inference.predictor import Predictor
from pneumoscan.result import upsample_map

SIZE = 64
SIGMA = SIZE / 10  # blob width, as in test_train.make_blob_dataset


def blob_films(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int] | None]]:
    """``n`` noisy 64 x 64 films, every other one (label 1) with a bright Gaussian blob; returns centres too."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    films, labels, centres = [], [], []
    for i in range(n):
        img = rng.normal(90, 20, (SIZE, SIZE))
        centre = None
        if i % 2:
            cy, cx = (int(v) for v in rng.integers(SIZE // 4, 3 * SIZE // 4, 2))
            img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * SIGMA**2))
            centre = (cy, cx)
        films.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(i % 2)
        centres.append(centre)
    return np.stack(films), np.array(labels), centres


def _train(labels_seed: int | None) -> SeedCNN:
    """A narrow SeedCNN trained 2 epochs on 96 blob films (seconds); ``labels_seed``: shuffle the labels first."""
    torch.manual_seed(0)
    spec = default_preprocessing("seed-cnn", SIZE)
    films, labels, _ = blob_films(96, seed=0)
    if labels_seed is not None:
        labels = np.random.default_rng(labels_seed).permutation(labels)
    x, y = preprocess(films, spec), torch.tensor(labels, dtype=torch.float32)
    model = SeedCNN(dropout=0.0, widths=(16, 32, 64, 64))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 16):
            idx = order[i:i + 16]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx]).reshape(-1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def blob_model():
    return _train(None), default_preprocessing("seed-cnn", SIZE)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps; 0 when either is constant (e.g. an all-zero map)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    ra = np.argsort(np.argsort(a.ravel(), kind="stable"), kind="stable")
    rb = np.argsort(np.argsort(b.ravel(), kind="stable"), kind="stable")
    return float(np.corrcoef(ra, rb)[0, 1])


def _blob_hits(model, films, centres) -> tuple[float, float]:
    """Share of blob films whose map peaks within 2 sigma of the blob, and the median share of the map's mass on
    that disk."""
    predictor = Predictor.from_model(model, checkpoint_meta("seed-cnn", SIZE))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    hits, mass = [], []
    for film, centre in zip(films, centres):
        if centre is None:
            continue
        _, heat = predictor.explain(film)
        assert heat.shape == film.shape and heat.dtype == np.float32 and heat.min() >= 0
        if not heat.max() > 0:
            hits.append(False)
            mass.append(0.0)
            continue
        py, px = np.unravel_index(np.argmax(heat), heat.shape)
        hits.append(np.hypot(py - centre[0], px - centre[1]) <= 2 * SIGMA)
        disk = np.hypot(yy - centre[0], xx - centre[1]) <= 2 * SIGMA
        mass.append(heat[disk].sum() / heat.sum())
    return float(np.mean(hits)), float(np.median(mass))


def test_occlusion_map_is_the_drop_of_the_logit_per_block():
    square = np.full((64, 64), 100, np.uint8)
    b = block_side(64)
    assert b == 6 and GRID == 10
    square[3 * b:4 * b, 7 * b:8 * b] = 250  # one bright block: the "lesion"

    def logits(squares):  # the score is the brightness of that block: hiding it removes the evidence
        return np.array([float(np.asarray(sq)[3 * b:4 * b, 7 * b:8 * b].mean()) for sq in squares])

    m = occlusion_map(logits, square)
    assert m.shape == (GRID, GRID) and m.dtype == np.float32
    assert np.unravel_index(np.argmax(m), m.shape) == (3, 7)
    assert m[3, 7] == pytest.approx(250 - np.rint(square.mean()), abs=1e-4)
    assert np.count_nonzero(m) == 1  # no other block changes the score

    def inverse(squares):  # hiding the block RAISES the score: no evidence for pneumonia there, clipped to 0
        return -logits(squares)

    assert not occlusion_map(inverse, square).any()
    # the last row and column take the remainder (64 = 9 x 6 + 10): every pixel belongs to a block
    edge = square.copy()
    edge[60:, 60:] = 0

    def corner(squares):
        return np.array([-float(np.asarray(sq)[60:, 60:].mean()) for sq in squares])

    assert np.unravel_index(np.argmax(occlusion_map(corner, edge)), (GRID, GRID)) == (9, 9)


def test_heatmap_peaks_on_the_blob(blob_model):
    model, spec = blob_model
    films, labels, centres = blob_films(40, seed=100)
    predictor = Predictor.from_model(model, checkpoint_meta("seed-cnn", SIZE))
    probs = predictor.predict_proba(films)
    assert np.mean((probs >= 0.5) == labels) >= 0.9, "the model did not learn the blob task"
    hit, mass = _blob_hits(model, films, centres)
    assert hit >= 0.7, f"heatmap peak on the blob in only {hit:.0%} of positive films"
    assert mass >= 0.3  # the disk is ~12% of the image; the map puts far more than that of its mass there


def test_heatmap_changes_when_the_weights_are_randomised(blob_model):
    model, spec = blob_model
    films, labels, _ = blob_films(20, seed=200)
    trained_p = Predictor.from_model(model, checkpoint_meta("seed-cnn", SIZE))
    torch.manual_seed(1000)
    random_model = SeedCNN(dropout=0.0, widths=(16, 32, 64, 64)).eval()  # same layout, fresh random weights
    random_p = Predictor.from_model(random_model, checkpoint_meta("seed-cnn", SIZE))
    rho = [_spearman(trained_p.explain(f)[1], random_p.explain(f)[1]) for f in films[labels == 1]]
    assert np.mean(rho) < 0.5, f"maps barely change under weight randomisation (mean Spearman {np.mean(rho):.2f})"


def test_a_model_trained_on_shuffled_labels_does_not_point_at_the_blob(blob_model):
    films, _, centres = blob_films(40, seed=100)
    trained_hit, trained_mass = _blob_hits(blob_model[0], films, centres)
    shuffled_hit, shuffled_mass = _blob_hits(_train(labels_seed=7), films, centres)
    assert shuffled_hit < trained_hit - 0.3 or shuffled_mass < trained_mass / 2, (
        f"shuffled labels: peak on the blob {shuffled_hit:.0%} (trained {trained_hit:.0%}), mass {shuffled_mass:.2f} "
        f"(trained {trained_mass:.2f})")


def test_upsample_map_geometry_and_zero_map():
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[0, 3] = 2.0  # top-right cell
    heat = upsample_map(cam, (90, 200))  # a wide, non-square film
    assert heat.shape == (90, 200) and heat.max() == pytest.approx(1.0) and heat.min() >= 0
    py, px = np.unravel_index(np.argmax(heat), heat.shape)
    assert py < 90 / 4 and px > 200 * 3 / 4
    zero = upsample_map(np.full((4, 4), -1.0), (30, 40))
    assert zero.shape == (30, 40) and not zero.any()


def test_colour_only_where_the_evidence_is():
    table = heat_table(0.55)
    floor = int(np.ceil(EVIDENCE_FLOOR * 255))
    assert not table[:floor, 3].any()  # below a quarter of the maximum: nothing drawn
    assert table[floor, 3] == pytest.approx(0.55 * 0.3, abs=0.01) and table[255, 3] == pytest.approx(0.55)
    assert list(table[floor, :3]) == [255, 255, 0] and list(table[255, :3]) == [255, 0, 0]  # yellow to red
    film = np.full((100, 100), 120, np.uint8)
    heat = np.zeros((100, 100), np.float32)
    heat[:, 50:] = np.linspace(0, 1, 50, dtype=np.float32)
    rgb = render_overlay(film, heat, legend=False)
    weak = heat < EVIDENCE_FLOOR - 0.01
    assert (rgb[weak] == 120).all(), "the film is tinted where the model found little evidence"
    assert (rgb[heat > 0.5][:, 2] < 120).all()  # coloured (red-yellow, less blue) where the evidence is
    ringed = render_overlay(film, heat, legend=False, outline=True)
    ring = outline_mask(heat)
    assert ring.any() and (heat[ring] >= OUTLINE_LEVEL).all()
    assert (ringed[ring] == [0, 255, 255]).all() and (ringed[~ring] == rgb[~ring]).all()


def test_overlay_keeps_the_aspect_ratio(tmp_path):
    film = synthetic_xray(300, 180)
    heat = np.zeros((300, 180), dtype=np.float32)
    heat[:, 90:] = np.linspace(0, 1, 90, dtype=np.float32)
    rgb = render_overlay(film, heat, caption="P(pneumonia) 0.73")
    assert rgb.shape == (300, 180, 3) and rgb.dtype == np.uint8
    # where the map is 0 the film shows through untinted (away from caption and legend)
    assert np.array_equal(rgb[150, 10], [film[150, 10]] * 3)
    assert not np.array_equal(rgb[150, 179], [film[150, 179]] * 3)  # tinted where the map is 1
    big = synthetic_xray(1500, 2400)
    out = save_overlay(tmp_path / "big.png", big, np.zeros((1500, 2400), np.float32), caption="x")
    with Image.open(out) as im:
        assert im.size == (1024, 640) and im.mode == "RGB"
        assert im.text["Description"] == "x" and im.text["OriginalSize"] == "2400x1500"


def test_unique_stems():
    assert unique_stems(["a/x.png", "b/x.jpeg", "c/X.dcm", "x-2.png", "y"]) == ["x", "x-2", "X-3", "x-2-2", "y"]


def test_cli_heatmaps_for_every_readable_image(tiny_checkpoint, tmp_path):
    from pneumoscan.cli import main

    for sub in ("one", "two"):
        (tmp_path / "in" / sub).mkdir(parents=True)
    make_png(tmp_path / "in" / "one" / "film.png", synthetic_xray(120, 200))
    make_png(tmp_path / "in" / "two" / "film.png", synthetic_xray(180, 100, seed=2))
    (tmp_path / "in" / "bad.png").write_text("nope")
    out = tmp_path / "heat"
    assert main(["predict", str(tmp_path / "in"), "-r", "--model", str(tiny_checkpoint), "--heatmaps", str(out),
                 "--save-raw", "--out", str(tmp_path / "r.json"), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["film-2_heatmap.npy", "film-2_heatmap.png",
                                                     "film_heatmap.npy", "film_heatmap.png"]
    with Image.open(out / "film_heatmap.png") as a, Image.open(out / "film-2_heatmap.png") as b:
        assert a.size == (200, 120) and b.size == (100, 180)
    raw = np.load(out / "film_heatmap.npy")
    assert raw.shape == (120, 200) and raw.dtype == np.float32 and 0 <= raw.min() and raw.max() <= 1


def test_unique_stems_fit_the_file_name_limit_and_stay_unique():
    import os

    from pneumoscan.inference.render import STEM_MAX_BYTES
    from pneumoscan.utils import NAME_MAX

    long_a, long_b, wide = "a" * 300, "a" * 299 + "b", "é" * 200  # the first two differ only past the cut
    stems = unique_stems([f"{long_a}.png", f"{long_b}.png", f"{wide}.dcm", f"x/{wide}.png", "short.png"])
    assert len({s.lower() for s in stems}) == len(stems)
    assert all(len(os.fsencode(s)) <= STEM_MAX_BYTES for s in stems)
    assert all(len(os.fsencode(f"{s}_heatmap.png")) <= NAME_MAX for s in stems)
    assert stems[0].startswith("a" * 200) and stems[1].startswith("a" * 200) and stems[4] == "short"
    assert stems[3].endswith(f"{stems[2][-9:]}-2")  # same stem, same digest, then the counter
    assert unique_stems([f"{long_a}.png"]) == stems[:1]  # deterministic


def test_cli_heatmaps_for_a_file_with_the_longest_legal_name(tiny_checkpoint, tmp_path):
    import csv
    import os

    from pneumoscan.cli import main

    (tmp_path / "in").mkdir()
    name = "p" * 250 + ".png"  # 254 bytes: legal, but the old heatmap and temp names were not
    make_png(tmp_path / "in" / name, synthetic_xray(120, 100))
    make_png(tmp_path / "in" / "short.png", synthetic_xray(120, 100, seed=1))
    out = tmp_path / "heat"
    assert main(["predict", str(tmp_path / "in"), "--model", str(tiny_checkpoint), "--heatmaps", str(out),
                 "--save-raw", "--out", str(tmp_path / "r.csv"), "--no-progress"]) == 0
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["error"] == "" and r["probability"] for r in rows)
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 4 and not [n for n in written if n.endswith(".tmp")]
    assert all(len(os.fsencode(n)) <= 255 for n in written)
    assert {r["heatmap"] for r in rows} == {str(out / n) for n in written if n.endswith(".png")}


def test_cli_outline_draws_the_strongest_region_and_needs_a_heatmap_output(tiny_checkpoint, tmp_path):
    from pneumoscan.cli import main

    (tmp_path / "in").mkdir()
    make_png(tmp_path / "in" / "film.png", synthetic_xray(160, 200, seed=4))
    assert main(["predict", str(tmp_path / "in"), "--model", str(tiny_checkpoint), "--outline",
                 "--no-progress"]) == 2  # nothing to draw on
    for name, extra in (("plain", []), ("ringed", ["--outline"])):
        assert main(["predict", str(tmp_path / "in"), "--model", str(tiny_checkpoint), "--heatmaps",
                     str(tmp_path / name), "--save-raw", "--no-progress", *extra]) == 0
    raw = np.load(tmp_path / "plain" / "film_heatmap.npy")
    with Image.open(tmp_path / "plain" / "film_heatmap.png") as a, Image.open(tmp_path / "ringed" / "film_heatmap.png") as b:
        plain, ringed = np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))
    cyan = np.all(ringed == [0, 255, 255], axis=-1) & ~np.all(plain == [0, 255, 255], axis=-1)
    assert raw.max() > 0  # this model finds evidence somewhere on this film
    # its strongest region is outlined, nothing else changes
    assert cyan.any() and (raw[cyan] >= 0.5).all()
    changed = np.any(ringed != plain, axis=-1) & ~cyan  # only where a caption box lies over the outline
    assert changed.mean() < 0.02
