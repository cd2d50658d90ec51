"""The typed seams of inference: what a runner is to the :class:`~pneumoscan.inference.predictor.Predictor`, and what
a predictor is to the server and the DICOM node (which are given one and may be given a wrapper of one in tests).

Structural (:class:`typing.Protocol`): :class:`~pneumoscan.inference.scoring.OnnxRunner`,
:class:`~pneumoscan.inference.torch_scoring.TorchRunner` and :class:`~pneumoscan.inference.predictor.Predictor` satisfy
them without inheriting from them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from pneumoscan.checkpoint import ModelMeta
    from pneumoscan.gate.drift import DriftCheck
    from pneumoscan.preprocessing import Film, FilmSource, Preprocessing
    from pneumoscan.result import ModelIdentity, Result

__all__ = ["ResultMaker", "Runner"]


@runtime_checkable
class Runner(Protocol):
    """Model input in, logits out: float32 ``(N, 1, S, S)`` (a NumPy array; a torch tensor is accepted too) ->
    float64 ``(N,)``. Safe to call from several threads. ``backend`` names it (``"onnxruntime"``, ``"torch"``)."""

    backend: str

    def __call__(self, x: Any) -> np.ndarray: ...

    def with_features(self, x: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """``(logits (N,), pooled features (N, C))``; features None when the model file gives none."""
        ...

    def outputs(self, x: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(logits (N,), cause logits (N,) or None, pooled features (N, C) or None)``: every output at once."""
        ...


@runtime_checkable
class ResultMaker(Protocol):
    """What the server and the DICOM node use of a predictor: read one input the one way
    (:func:`pneumoscan.preprocessing.read_film`) and make its :class:`~pneumoscan.result.Result`."""

    model_name: str
    version: str
    threshold: float
    backend: str
    path: str | None
    preprocessing: Preprocessing
    info: ModelMeta
    meta: dict[str, Any]

    @property
    def identity(self) -> ModelIdentity: ...

    @property
    def drift(self) -> DriftCheck | None: ...

    def read(self, source: FilmSource | os.PathLike[str], *, full: bool = False, name: str | None = None,
             max_pixels: int | None = None, log_name: str | None = None) -> Film: ...

    def assess(self, film: Film, *, source: str = "", explain: bool = False, keep_film: bool = False) -> Result: ...
