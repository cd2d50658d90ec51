"""The model registry and factory, as in timm: ``create_model(name, pretrained=...)``, and each model's own input
recipe (:func:`default_preprocessing`), which the checkpoint then carries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pneumoscan.errors import UnknownModelError
from pneumoscan.preprocessing import Preprocessing

__all__ = ["count_parameters", "create_model", "default_preprocessing", "has_pretrained", "list_models", "model_info",
           "register_model"]



@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    mean: float
    std: float
    has_pretrained: bool
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, mean: float = 0.5, std: float = 0.25, has_pretrained: bool = False,
                   description: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(*, pretrained, num_classes, dropout, in_chans) -> nn.Module``.

    ``mean`` and ``std`` are the grayscale normalisation the weights expect (see :class:`Preprocessing`).
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, mean, std, has_pretrained, description or (builder.__doc__ or "").strip())
        return builder

    return decorate


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name: str, *, pretrained: bool = False, num_classes: int = 1, dropout: float = 0.2,
                 in_chans: int = 1) -> nn.Module:
    """Build a registered model. Its input is made by ``preprocess(images, default_preprocessing(name, S))``.

    Raises:
        UnknownModelError: ``name`` is not registered (also a ValueError and a KeyError).
        ValueError: no pretrained weights exist for ``name``, or an argument is out of range.
        ImportError: the package holding the pretrained weights is missing.
    """
    entry = _entry(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if pretrained and not entry.has_pretrained:
        raise ValueError(f"no pretrained weights for {name}; train it from scratch with pretrained=False")
    return entry.builder(pretrained=pretrained, num_classes=num_classes, dropout=dropout, in_chans=in_chans)


def has_pretrained(name: str) -> bool:
    """Whether ``name`` has pretrained weights to start from (cheap: builds nothing).

    Raises:
        UnknownModelError: ``name`` is not registered.
    """
    return _entry(name).has_pretrained


def default_preprocessing(name: str, image_size: int = 224) -> Preprocessing:
    """Return the input recipe the model's weights expect at ``image_size`` pixels."""
    entry = _entry(name)
    return Preprocessing(image_size=image_size, mean=entry.mean, std=entry.std)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameters (elements, not tensors)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_info(name: str) -> dict[str, Any]:
    """Return name, description, parameter count, whether pretrained weights exist, and default preprocessing."""
    entry = _entry(name)
    return {"name": name, "description": entry.description,
            "parameters": count_parameters(create_model(name)),
            "pretrained_available": has_pretrained(name),
            "preprocessing": default_preprocessing(name).to_dict()}
