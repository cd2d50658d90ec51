"""Grad-CAM: shapes and ranges, overlays, heatmap files, and two sanity checks.

(a) Model randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): an explanation
    that does not change when the weights are randomised explains the image, not the model.
(b) On synthetic films whose label is a bright blob, a small trained model's heatmap peaks on the blob.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagefactory import make_png, synthetic_xray
from modelfactory import checkpoint_meta
from pneumoscan.inference.explain import GradCAM, grad_cam, upsample_cam
from pneumoscan.inference.render import render_overlay, save_overlay, unique_stems
from pneumoscan.models import SeedCNN, create_model, default_preprocessing
from pneumoscan.preprocessing import preprocess
from pneumoscan.inference.predictor import Predictor

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


@pytest.fixture(scope="module")
def blob_model():
    """A narrow SeedCNN (4 blocks: an 8 x 8 Grad-CAM grid at 64 px) trained 2 epochs on 96 blob films (seconds)."""
    torch.manual_seed(0)
    spec = default_preprocessing("seed-cnn", SIZE)
    films, labels, _ = blob_films(96, seed=0)
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
    return model.eval(), spec


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps; 0 when either is constant (e.g. an all-zero map)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    ra = np.argsort(np.argsort(a.ravel(), kind="stable"), kind="stable")
    rb = np.argsort(np.argsort(b.ravel(), kind="stable"), kind="stable")
    return float(np.corrcoef(ra, rb)[0, 1])


def test_heatmap_peaks_on_the_blob(blob_model):
    model, spec = blob_model
    films, labels, centres = blob_films(40, seed=100)
    predictor = Predictor.from_model(model, checkpoint_meta("seed-cnn", SIZE))
    probs = predictor.predict_proba(films)
    assert np.mean((probs >= 0.5) == labels) >= 0.9, "the model did not learn the blob task"
    yy, xx = np.mgrid[:SIZE, :SIZE]
    hits, mass = [], []
    for film, centre in zip(films, centres):
        if centre is None:
            continue
        prob, heat = predictor.explain(film)
        assert heat.shape == film.shape and heat.dtype == np.float32
        assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        py, px = np.unravel_index(np.argmax(heat), heat.shape)
        hits.append(np.hypot(py - centre[0], px - centre[1]) <= 2 * SIGMA)
        disk = np.hypot(yy - centre[0], xx - centre[1]) <= 2 * SIGMA
        mass.append(heat[disk].sum() / heat.sum())
    assert np.mean(hits) >= 0.7, f"heatmap peak on the blob in only {np.mean(hits):.0%} of positive films"
    # the disk is ~12% of the image; the map puts far more than that of its mass there
    assert np.median(mass) >= 0.3


def test_heatmap_changes_when_the_weights_are_randomised(blob_model):
    model, spec = blob_model
    films, labels, _ = blob_films(20, seed=200)
    x = preprocess(films[labels == 1], spec)
    _, trained = grad_cam(model, x)
    torch.manual_seed(1000)
    random_model = SeedCNN(dropout=0.0, widths=(16, 32, 64, 64)).eval()  # same layout, fresh random weights
    _, randomised = grad_cam(random_model, x)
    rho = [_spearman(a, b) for a, b in zip(trained, randomised)]
    assert np.mean(rho) < 0.5, f"maps barely change under weight randomisation (mean Spearman {np.mean(rho):.2f})"
    assert all(t.max() == pytest.approx(1.0) for t in trained)


def test_grad_cam_shapes_and_no_gradient_left_behind():
    torch.manual_seed(0)
    for name in ("seed-cnn", "deep-cnn", "efficientnet-lite0"):
        model = create_model(name).eval()
        x = preprocess(np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE), dtype=np.uint8),
                       default_preprocessing(name, SIZE))
        logits, cams = GradCAM(model)(x)
        assert logits.shape == (2,) and cams.ndim == 3 and cams.shape[0] == 2 and (cams >= 0).all()
        with torch.no_grad():
            np.testing.assert_allclose(logits.numpy(), model(x).reshape(-1).numpy(), rtol=1e-4, atol=1e-5)
        assert all(p.grad is None for p in model.parameters())


def test_upsample_cam_geometry_and_zero_map():
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[0, 3] = 2.0  # top-right cell
    heat = upsample_cam(cam, (90, 200))  # a wide, non-square film
    assert heat.shape == (90, 200) and heat.max() == pytest.approx(1.0) and heat.min() >= 0
    py, px = np.unravel_index(np.argmax(heat), heat.shape)
    assert py < 90 / 4 and px > 200 * 3 / 4
    zero = upsample_cam(np.full((4, 4), -1.0), (30, 40))
    assert zero.shape == (30, 40) and not zero.any()


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
    assert sorted(p.name for p in out.iterdir()) == ["film-2_gradcam.npy", "film-2_gradcam.png",
                                                     "film_gradcam.npy", "film_gradcam.png"]
    with Image.open(out / "film_gradcam.png") as a, Image.open(out / "film-2_gradcam.png") as b:
        assert a.size == (200, 120) and b.size == (100, 180)
    raw = np.load(out / "film_gradcam.npy")
    assert raw.shape == (120, 200) and raw.dtype == np.float32 and 0 <= raw.min() and raw.max() <= 1


def test_unique_stems_fit_the_file_name_limit_and_stay_unique():
    import os

    from pneumoscan.inference.render import STEM_MAX_BYTES
    from pneumoscan.utils import NAME_MAX

    long_a, long_b, wide = "a" * 300, "a" * 299 + "b", "é" * 200  # the first two differ only past the cut
    stems = unique_stems([f"{long_a}.png", f"{long_b}.png", f"{wide}.dcm", f"x/{wide}.png", "short.png"])
    assert len({s.lower() for s in stems}) == len(stems)
    assert all(len(os.fsencode(s)) <= STEM_MAX_BYTES for s in stems)
    assert all(len(os.fsencode(f"{s}_gradcam.png")) <= NAME_MAX for s in stems)
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
