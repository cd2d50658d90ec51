"""Running the network itself: model-size squares in, logits, pooled features and explanation maps out, on either
backend (a :class:`~pneumoscan.inference.protocols.Runner`: ONNX Runtime or torch). The explanation, occlusion
sensitivity (:mod:`pneumoscan.inference.occlusion`), needs only scores, so it runs on whichever backend scores. The
:class:`~pneumoscan.inference.predictor.Predictor` turns these into probabilities (its temperature) and results (its
gate and threshold); this module decides nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pneumoscan.inference.protocols import Runner
from pneumoscan.preprocessing import Preprocessing, to_model_array

if TYPE_CHECKING:  # torch is loaded only for the torch backend and in-memory models
    from torch import nn

__all__ = ["Network"]


class Network:
    """One model file's network: ``runner`` for scores, features and explanations; ``model`` the torch module when
    there is one (the torch backend, an in-memory model), for callers that need it. Thread-safe, as the runner is."""

    def __init__(self, runner: Runner, spec: Preprocessing, *, model: nn.Module | None = None,
                 version: str = "in-memory", path: str | None = None) -> None:
        self.runner = runner
        self.spec = spec
        self.model = model
        self.version = version
        self.path = path

    def occlusion(self, squares: Sequence[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray], list[np.ndarray | None]]:
        """:meth:`logits` plus each square's occlusion map (``(10, 10)`` float32: the logit's drop when each block
        is hidden; :func:`pneumoscan.inference.occlusion.occlusion_map`)."""
        from pneumoscan.inference.occlusion import occlusion_maps

        logits, cause, feats = self.logits(squares)
        maps = occlusion_maps(lambda sq: self.logits(sq)[0], squares, bases=list(logits))
        return logits, cause, maps, feats

    def inputs(self, squares: Sequence[np.ndarray]) -> np.ndarray:
        """Model-size ``(S, S) uint8`` squares, normalised: float32 ``(N, 1, S, S)`` (a NumPy array)."""
        return to_model_array(squares, self.spec)

    def logits(self, squares: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray | None]]:
        """Logits float64 ``(N,)``, cause logits ``(N,)`` (None for a model without a cause output) and pooled
        features (``(C,)`` each; None per image when the runner gives none)."""
        x = self.inputs(squares)
        outputs = getattr(self.runner, "outputs", None)
        if outputs is not None:
            logits, cause, feats = outputs(x)
        else:  # a runner with the pneumonia output and features alone
            (logits, feats), cause = self.runner.with_features(x), None
        return (np.asarray(logits, dtype=np.float64), None if cause is None else np.asarray(cause, np.float64),
                [None] * len(squares) if feats is None else list(feats))
