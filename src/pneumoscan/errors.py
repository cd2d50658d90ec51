"""Every error pneumoscan raises on purpose, under one base class.

A caller (the CLI, the server, a hospital's integration script) catches :class:`PneumoscanError` to tell "the
input or the setup is wrong, and the message says how" from a bug. Each class also derives from the built-in
exception it always was (``ValueError``, ``KeyError``, ``FileExistsError``...), so existing ``except`` clauses
keep working. Messages name the file and the problem, and what to do about it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError", "ConfigError", "CorruptImageError", "DatasetError", "EmptyFileError",
    "ImageError", "ImageMemoryError", "ImageTooLargeError", "ImageTooSmallError", "ModelNotFoundError",
    "NotAnImageError", "PneumoscanError", "RunExistsError", "UnknownModelError", "UnsupportedDicomError", "UsageError",
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
