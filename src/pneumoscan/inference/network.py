"""Running the network itself: model-size squares in, logits, pooled features and Grad-CAM maps out, on either
backend (a :class:`~pneumoscan.inference.protocols.Runner`: ONNX Runtime or torch), the torch model for Grad-CAM
loaded from the checkpoint on first use. The :class:`~pneumoscan.inference.predictor.Predictor` turns these into
probabilities (its temperature) and results (its gate and threshold); this module decides nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pneumoscan.errors import HeatmapUnavailableError
from pneumoscan.inference.backends import load_torch_model
from pneumoscan.inference.protocols import Runner
from pneumoscan.preprocessing import Preprocessing, to_model_array

if TYPE_CHECKING:  # torch is loaded only for Grad-CAM, the torch backend and in-memory models
    from torch import nn

__all__ = ["GRADCAM_CHUNK", "Network"]

#: Films per Grad-CAM pass (it keeps activations for the backward pass).
GRADCAM_CHUNK = 8


class Network:
    """One model file's network: ``runner`` for scores and features; the torch ``model`` for Grad-CAM (given, or
    loaded from ``checkpoint`` on first use: it must still be the file whose export runs, same SHA-256 ``version``).
    Thread-safe: the runner is, and the torch model is loaded once under a lock."""

    def __init__(self, runner: Runner, spec: Preprocessing, *, model: nn.Module | None = None,
                 checkpoint: str | None = None, version: str = "in-memory", path: str | None = None,
                 threads: int | None = None) -> None:
        self.runner = runner
        self.spec = spec
        self.model = model
        self.checkpoint = checkpoint
        self.version = version
        self.path = path
        self.threads = threads
        self._lock = threading.Lock()

    @property
    def can_explain(self) -> bool:
        """True when Grad-CAM is available: a torch model, or a ``.safetensors`` checkpoint to load it from (an ONNX
        export alone holds no gradients)."""
        return self.model is not None or self.checkpoint is not None

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

    def torch_model(self) -> nn.Module:
        """The torch model Grad-CAM needs: the one given, else loaded from the checkpoint on first use.

        Raises:
            HeatmapUnavailableError: an ONNX export without its checkpoint.
        """
        if self.model is None and self.checkpoint is not None:
            with self._lock:
                if self.model is None:
                    self.model = load_torch_model(self.checkpoint, self.version, self.threads)
        if self.model is None:
            raise HeatmapUnavailableError(
                f"{self.path}: Grad-CAM heatmaps need the .safetensors checkpoint (the torch model); an ONNX "
                "export holds no gradients to explain with. Pass the checkpoint the ONNX file was exported from")
        return self.model

    def gradcam(self, squares: Sequence[np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray], list[np.ndarray]]:
        """Logits float64 ``(N,)``, cause logits ``(N,)`` (None without a cause output), Grad-CAM maps of the
        pneumonia output on the layer's own grid (float32 ``(h, w)``, unnormalised) and pooled features,
        :data:`GRADCAM_CHUNK` squares at a time.

        Raises:
            HeatmapUnavailableError: this network cannot explain (:attr:`can_explain`).
        """
        import torch

        from pneumoscan.inference.explain import GradCAM

        cam = GradCAM(self.torch_model())
        logits, causes, maps, feats = [], [], [], []
        for start in range(0, len(squares), GRADCAM_CHUNK):
            part = squares[start:start + GRADCAM_CHUNK]
            z, low, pooled, every = cam.run(torch.from_numpy(self.inputs(part)))
            logits.append(z.numpy().astype(np.float64))
            causes.append(every[:, 1].numpy().astype(np.float64) if every.shape[1] > 1 else None)
            maps += [np.asarray(m, dtype=np.float32) for m in low.numpy()]
            feats += list(pooled.numpy())
        cause = None if any(c is None for c in causes) else np.concatenate(causes)
        return np.concatenate(logits), cause, maps, feats
