"""Grad-CAM (Selvaraju et al., 2017): where the network found evidence for pneumonia (needs torch; drawing the
maps for people is :mod:`pneumoscan.inference.render`, which does not).

For the pneumonia logit ``y`` and the activations ``A`` (``K`` channels) of the model's ``gradcam_layer``
(its last convolutional stage)::

    w_k = mean over (i, j) of dy / dA_k[i, j]
    cam = ReLU(sum_k w_k A_k)

then upsampled (bilinear) to the image and divided by its maximum, giving values in [0, 1]. Where no region
raises the logit, the map is all zeros: "no positive evidence", not an error.

A heatmap shows where the network looked, not where the disease is. It is a check on the model (does it look
at the lungs, or at a marker in the corner?), shown beside the probability; it is not a segmentation.

Thread safety: hooks are attached for one call and only record the calling thread's forward pass, and the
gradient is taken with ``torch.autograd.grad`` with respect to the activations only, so no ``.grad`` builds up
on the shared weights. One model can serve predictions on other threads while a heatmap is computed.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumoscan.result import upsample_map

__all__ = ["GradCAM", "grad_cam", "upsample_cam"]


class GradCAM:
    """Grad-CAM on ``layer`` (default: ``model.gradcam_layer``) for output column ``target`` (0: pneumonia).

    Call it with a model input ``(N, C, S, S)``; it returns ``(logits (N,), cams (N, h, w))``, both float32
    CPU tensors, the cams non-negative and unnormalised at the layer's resolution ``h x w``. The model must
    be in eval mode (BatchNorm with running statistics), so every image's map depends on that image only.
    """

    def __init__(self, model: nn.Module, layer: nn.Module | None = None, target: int = 0) -> None:
        self.model = model
        self.layer = layer if layer is not None else model.gradcam_layer  # type: ignore[attr-defined]
        self.target = target
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, cams, _, _ = self.run(x)
        return logits, cams

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits (N,), cams (N, h, w), pooled features (N, C), every output (N, K))``: the features are the
        Grad-CAM layer's activations averaged over space, which for every registered model is the feature map its
        head pools (what :meth:`~pneumoscan.models.layers.Classifier.forward_with_features` returns); the last is
        the whole head (the cause output too, for a model that has one)."""
        owner = threading.get_ident()
        captured: list[torch.Tensor] = []

        def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if threading.get_ident() == owner:  # another thread's forward pass through the shared model
                captured.append(output)

        # The lock serialises heatmaps from one GradCAM; the thread check keeps other forward passes out.
        with self._lock, torch.inference_mode(False), torch.enable_grad():
            handle = self.layer.register_forward_hook(keep)
            try:
                inp = x.detach().clone().requires_grad_(True)  # the graph must exist even with frozen weights
                out = self.model(inp)
            finally:
                handle.remove()
            if len(captured) != 1:
                raise RuntimeError(f"Grad-CAM layer ran {len(captured)} times in one forward pass; expected once")
            acts = captured[0]
            every = out.reshape(len(x), -1)
            logits = every[:, self.target]
            # Images are independent in eval mode, so the sum's gradient is each image's own gradient.
            (grads,) = torch.autograd.grad(logits.sum(), acts)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cams = F.relu((weights * acts).sum(dim=1)).detach()
        return (logits.detach().float(), cams.float(), acts.detach().mean(dim=(2, 3)).float(),
                every.detach().float())


def upsample_cam(cam: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear-upsample one ``(h, w)`` cam to ``size = (H, W)`` and scale it to [0, 1] by its maximum
    (:func:`pneumoscan.result.upsample_map`, which every heatmap of a result uses too).

    The model saw the whole film squeezed to a square, so the square map stretched back to ``(H, W)`` lies on
    the original geometry. Returns float32 ``(H, W)``; all zeros when the cam has no positive value.
    """
    arr = cam.detach().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam)
    return upsample_map(arr, size)


def grad_cam(model: nn.Module, x: torch.Tensor, *, layer: nn.Module | None = None,
             size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N,)`` and heatmaps ``(N, H, W)`` float32 in [0, 1] (``size`` default: the input's ``S x S``)."""
    logits, cams = GradCAM(model, layer)(x)
    out = size or tuple(x.shape[-2:])
    return logits.numpy(), np.stack([upsample_cam(c, out) for c in cams])
