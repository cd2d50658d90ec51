"""Results for tests that need a :class:`pneumoscan.result.Result` without running a model (plain functions)."""

from __future__ import annotations

from typing import Any

from pneumoscan.io import ImageContext
from pneumoscan.result import ModelIdentity, Result

#: The model every factory result names unless told otherwise (operating threshold 0.5).
MODEL = ModelIdentity("seed-cnn", "0123456789ab", 0.5)


def scored(source: str, probability: float, *, threshold: float = 0.5, in_scope: bool = True,
           scope_reason: str = "", context: ImageContext | None = None, **kwargs: Any) -> Result:
    """A film that was read and scored (out of scope with ``in_scope=False``)."""
    model = MODEL if threshold == MODEL.threshold else ModelIdentity(MODEL.name, MODEL.version, threshold)
    return Result.scored(source, probability, model, in_scope=in_scope, scope_reason=scope_reason,
                         context=context or ImageContext(), **kwargs)


def unread(source: str, error: str = "not an image", *, context: ImageContext | None = None,
           threshold: float = 0.5) -> Result:
    """A file that could not be read."""
    model = MODEL if threshold == MODEL.threshold else ModelIdentity(MODEL.name, MODEL.version, threshold)
    return Result.unread(source, error, model, context=context)
