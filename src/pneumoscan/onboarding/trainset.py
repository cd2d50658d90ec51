"""Which images did a model learn from? Content hashes of its training and validation films, kept in the checkpoint.

A model's own training images give optimistic numbers: an evaluation on them says nothing about new patients,
and a threshold or an adaptation chosen on them is biased. Paths cannot tell (files get renamed and copied), so
each film is identified by the SHA-256 of its *decoded pixels* (shape and gray levels): the same film renamed,
copied, or re-saved without loss (JPEG to PNG, a DICOM export of the same pixels) has the same hash. A lossy
re-encoding (a re-compressed JPEG) does not, and is not caught.

The hashes (their first 8 bytes, as int64) travel in the checkpoint as the tensors ``trainset.train`` and
``trainset.val`` (about 40 KB for 5,000 films), written at the end of training; the shipped model's were added
with ``scripts/build_reference.py``. :func:`overlap` says which of a list of images a model trained on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from pneumoscan.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pneumoscan.data import model_split
from pneumoscan.errors import ImageError
from pneumoscan.io import read_image

__all__ = ["TENSOR_PREFIX", "Overlap", "attach_trainset", "hash_files", "image_set_sha256", "overlap", "pixel_hash",
           "split_hashes", "trainset_tensors"]

TENSOR_PREFIX = "trainset."
_ROLES = ("train", "val")


def pixel_hash(gray: np.ndarray) -> int:
    """The first 8 bytes of the SHA-256 of a decoded ``(H, W) uint8`` image's shape and pixels, as a signed int64."""
    g = np.ascontiguousarray(gray, dtype=np.uint8)
    digest = hashlib.sha256(f"{g.shape[0]}x{g.shape[1]}:".encode() + g.tobytes()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def image_set_sha256(hashes: Sequence[int]) -> str:
    """SHA-256 (hex) of a film set: over its :func:`pixel_hash` values, sorted, as little-endian int64 bytes; the
    same films in any order, under any names, give the same hash (``adapt`` and fine-tuning record it)."""
    return hashlib.sha256(np.sort(np.asarray(list(hashes), dtype=np.int64)).astype("<i8").tobytes()).hexdigest()


def hash_files(paths: Sequence[str | os.PathLike[str]], *, workers: int = 2) -> list[int | None]:
    """:func:`pixel_hash` of each file (None for a file that cannot be decoded), in input order."""
    def one(path: str | os.PathLike[str]) -> int | None:
        try:
            return pixel_hash(read_image(path))
        except ImageError:
            return None

    if workers <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pneumoscan-hash") as pool:
        return list(pool.map(one, paths))


def trainset_tensors(train: Sequence[int | None], val: Sequence[int | None]) -> dict[str, torch.Tensor]:
    """The checkpoint tensors for a model's training and validation hashes (undecodable files left out)."""
    def tensor(hashes: Sequence[int | None]) -> torch.Tensor:
        return torch.tensor(sorted({h for h in hashes if h is not None}), dtype=torch.int64)

    return {TENSOR_PREFIX + "train": tensor(train), TENSOR_PREFIX + "val": tensor(val)}


@dataclass
class Overlap:
    """Which of the given images a model trained on (``train``) or chose its threshold and epoch on (``val``)."""

    known: bool  # False: the model carries no hashes, nothing can be said
    train: list[int] = field(default_factory=list)  # indices into the given images
    val: list[int] = field(default_factory=list)
    n_images: int = 0

    def to_dict(self, paths: Sequence[str] | None = None) -> dict[str, object]:
        name = (lambda i: paths[i]) if paths is not None else (lambda i: i)
        return {"known": self.known, "n_images": self.n_images, "n_train": len(self.train), "n_val": len(self.val),
                "train_examples": [name(i) for i in self.train[:10]], "val_examples": [name(i) for i in self.val[:10]]}


def overlap(ckpt: Checkpoint, hashes: Sequence[int | None]) -> Overlap:
    """Which of the images (given by their :func:`pixel_hash`) are in the checkpoint's training or validation set."""
    if not all(TENSOR_PREFIX + role in ckpt.extra for role in _ROLES):
        return Overlap(known=False, n_images=len(hashes))
    sets = {role: set(ckpt.extra[TENSOR_PREFIX + role].tolist()) for role in _ROLES}
    out = Overlap(known=True, n_images=len(hashes))
    for i, h in enumerate(hashes):
        if h is None:
            continue
        if h in sets["train"]:
            out.train.append(i)
        elif h in sets["val"]:
            out.val.append(i)
    return out


def split_hashes(ckpt: Checkpoint, data: str | os.PathLike[str], *, split: str | None = None,
                 workers: int = 2) -> dict[str, torch.Tensor]:
    """The trainset tensors of a model that predates them, from its own split rebuilt over ``data`` (the folder it
    was trained on, split as its stored config says: :func:`pneumoscan.data.model_split`)."""
    train, val = model_split(data, ckpt.info.config.get("data") or {}, split=split)
    return trainset_tensors(hash_files([r.path for r in train.records], workers=workers),
                            hash_files([r.path for r in val.records], workers=workers))


def attach_trainset(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                    split: str | None = None) -> dict[str, int]:
    """Write ``out``: the checkpoint plus the content hashes of its training and validation films (same weights).

    Returns the number of hashes per role."""
    ckpt = load_checkpoint(checkpoint)
    tensors = split_hashes(ckpt, data, split=split)
    save_checkpoint(out, ckpt.state_dict, ckpt.meta, extra={**ckpt.extra, **tensors})
    return {name.removeprefix(TENSOR_PREFIX): int(t.numel()) for name, t in tensors.items()}
