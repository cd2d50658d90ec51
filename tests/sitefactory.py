"""A simulated second site, built honestly from the data we have (issue 15), for tests and
``benchmarks/site_onboarding.py``.

There is no second hospital here, so a site is simulated from films the shipped model never trained on: its own
held-out validation split (575 films of 285 patients, ``../shared/data/chest_xray_224``, the split its checkpoint
config describes), passed through a fixed acquisition and processing chain unlike the training data's:

* a different resizing chain: the film goes through a 128-pixel export (Lanczos down, bilinear back up), as a
  low-resolution PACS export or a detector binned 2x2 would give;
* flatter contrast (x0.8 around mid-gray) and a gamma of 0.9 (a different look-up table);
* more noise (Gaussian, sigma 5 gray levels; a lower-dose detector), seeded per film.

On these films the shipped model keeps its sensitivity but its specificity at the stored threshold falls to about
0.65, close to the 0.60 seen on films of another period of the same hospital (issue 15).

The site's films are split by patient: the LOWEST-numbered patients of each class (``person<N>`` for pneumonia,
``IM-<N>`` for normal; the numbering follows time in this data set) form the site's own held-out test set, never
used to adapt or calibrate; the others form the pool a site would adapt on (unlabelled) and calibrate with
(labelled subsets).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pneumoscan.data import Record, index_dataset, split_index
from pneumoscan.io import read_image

#: The simulated site's chain.
SITE = {"export_side": 128, "contrast": 0.8, "gamma": 0.9, "noise_sigma": 5.0}


def site_film(gray: np.ndarray, seed: int) -> np.ndarray:
    """One film as the simulated site would produce it (same size, ``uint8``)."""
    x = (gray.astype(np.float64) / 255.0) ** SITE["gamma"]
    x = np.clip(((x - 0.5) * SITE["contrast"] + 0.5) * 255.0, 0, 255).astype(np.uint8)
    side = SITE["export_side"]
    im = Image.fromarray(x).resize((side, side), Image.Resampling.LANCZOS)
    x = np.asarray(im.resize((gray.shape[1], gray.shape[0]), Image.Resampling.BILINEAR), dtype=np.float64)
    x = x + np.random.default_rng(seed).normal(0.0, SITE["noise_sigma"], x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


#: The acquisition shifts the drift check is measured against (:func:`acquisition_shift`): those of
#: ``tests/test_scope_shipped.py``, the simulated site's chain, and milder versions of three of them.
ACQUISITION_SHIFTS = ("exposure", "contrast", "gamma", "blur", "noise", "letterbox", "thumbnail_chain", "site_chain",
                      "exposure_mild", "blur_mild", "noise_mild")


def acquisition_shift(gray: np.ndarray, how: str, seed: int) -> np.ndarray:
    """One film ``(H, W) uint8`` through the acquisition shift ``how`` (one of :data:`ACQUISITION_SHIFTS`, or
    ``"none"``); ``seed`` seeds its noise."""
    g = gray
    if how == "none":
        return g
    if how in ("exposure", "exposure_mild"):
        return np.clip(g.astype(int) + (20 if how == "exposure" else 8), 0, 255).astype(np.uint8)
    if how == "contrast":
        return np.clip((g.astype(float) - 128) * 0.7 + 128, 0, 255).astype(np.uint8)
    if how == "gamma":
        return (255 * (g / 255.0) ** 0.7).astype(np.uint8)
    if how in ("blur", "blur_mild"):
        return np.asarray(Image.fromarray(g).filter(ImageFilter.GaussianBlur(1.5 if how == "blur" else 0.7)))
    if how in ("noise", "noise_mild"):
        sigma = 8 if how == "noise" else 4
        return np.clip(g + np.random.default_rng(seed).normal(0, sigma, g.shape), 0, 255).astype(np.uint8)
    if how == "letterbox":  # a resizing chain that keeps the aspect ratio and pads: the film fills 80% of the width
        w = int(g.shape[1] * 0.8)
        out = np.zeros_like(g)
        out[:, (g.shape[1] - w) // 2:(g.shape[1] - w) // 2 + w] = np.asarray(
            Image.fromarray(g).resize((w, g.shape[0]), Image.Resampling.BILINEAR))
        return out
    if how == "thumbnail_chain":  # a low-resolution export: box-filtered down to 64 px, bilinear back up
        small = Image.fromarray(g).resize((64, 64), Image.Resampling.BOX)
        return np.asarray(small.resize(g.shape[::-1], Image.Resampling.BILINEAR))
    if how == "site_chain":
        return site_film(g, seed)
    raise ValueError(f"unknown acquisition shift {how!r}")


def _patient_number(patient_id: str) -> int:
    m = re.search(r"(\d+)$", patient_id)
    return int(m.group(1)) if m else 10**9


@dataclass
class SimulatedSite:
    """The site's films written as PNG files: ``pool`` (adapt and calibrate) and ``test`` (held out)."""

    root: Path
    pool: list[Record]
    test: list[Record]

    @property
    def pool_folder(self) -> Path:
        """``<root>/pool/<NORMAL|PNEUMONIA>/*.png``: a labelled folder (adapt ignores the labels)."""
        return self.root / "pool"

    @property
    def test_folder(self) -> Path:
        return self.root / "test"


def build_site(data_root: str | Path, out: str | Path, *, val_fraction: float = 0.1, split_seed: int = 42,
               test_fraction: float = 0.3) -> SimulatedSite:
    """Write the simulated site under ``out`` from the model's validation split of ``data_root`` (train/ folder)."""
    index = index_dataset(data_root, split="train", check=False)
    _, val = split_index(index, val_fraction, split_seed)
    out = Path(out)
    pool, test = [], []
    for label, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
        recs = [r for r in val.records if r.label == label]
        patients = sorted({r.patient_id for r in recs}, key=_patient_number)
        held = set(patients[: max(1, round(test_fraction * len(patients)))])  # the lowest-numbered patients
        for i, rec in enumerate(recs):
            side = "test" if rec.patient_id in held else "pool"
            path = out / side / name / (Path(rec.path).stem + ".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            seed = int(np.frombuffer(Path(rec.path).name.encode()[:8].ljust(8, b"_"), dtype=np.int64)[0] % 2**31)
            Image.fromarray(site_film(read_image(rec.path), seed)).save(path)
            new = Record(str(path), rec.label, rec.patient_id, rec.cause)
            (test if side == "test" else pool).append(new)
    return SimulatedSite(out, pool, test)


def labelled_subset(records: Sequence[Record], n: int, seed: int = 0, min_per_class: int = 15) -> list[Record]:
    """``n`` labelled films from ``records``, stratified by class, seeded (at least ``min_per_class`` each)."""
    rng = np.random.default_rng(seed)
    by = {c: [r for r in records if r.label == c] for c in (0, 1)}
    share = len(by[1]) / max(1, len(records))
    n_pos = min(len(by[1]), max(min_per_class, round(n * share)))
    n_neg = min(len(by[0]), max(min_per_class, n - n_pos))
    pick = [by[1][i] for i in rng.choice(len(by[1]), n_pos, replace=False)]
    pick += [by[0][i] for i in rng.choice(len(by[0]), n_neg, replace=False)]
    return pick
