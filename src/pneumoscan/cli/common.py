"""What the ``pneumoscan`` commands share: the console, click's error types, the output-folder check.

Imports only what the command line needs at start-up (typer, rich); the library is imported inside each command.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

try:  # typer >= 0.22 vendors its own copy of click; older releases use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    import click.exceptions as click_errors

__all__ = ["ADULT_AGE_DEFAULT", "BACKEND_HELP", "Backend", "check_adult_age", "click_errors", "console",
           "needs_torch", "usage_errors", "writable_folder"]

console = Console()


class Backend(str, Enum):
    """``--backend``: the values of :data:`pneumoscan.inference.scoring.BACKENDS` (repeated: the command line must not import
    the library before a command runs; a test keeps them equal)."""

    onnx = "onnx"
    torch = "torch"


BACKEND_HELP = ("Inference backend: onnx (ONNX Runtime, the default: no torch; a .safetensors model runs through "
                "its export, packaged or built once and cached) or torch (eager PyTorch, needs a .safetensors model).")

#: Default of ``--adult-age`` (years): :data:`pneumoscan.gate.scope.ADULT_AGE_YEARS`, repeated here because importing
#: the scope gate loads NumPy and the image readers, which the command line must not do before a command runs
#: (a test keeps them equal).
ADULT_AGE_DEFAULT = 18.0


@contextmanager
def usage_errors() -> Iterator[None]:
    """A library's :class:`~pneumoscan.errors.UsageError` as the command line's bad invocation (exit code 2),
    naming the option at fault."""
    from pneumoscan.errors import UsageError

    try:
        yield
    except UsageError as exc:
        if exc.option:
            raise typer.BadParameter(str(exc), param_hint=exc.option) from exc
        raise click_errors.UsageError(str(exc)) from exc


@contextmanager
def needs_torch(what: str, modules: tuple[str, ...] = ("torch",), *, check_first: bool = True) -> Iterator[None]:
    """A command that needs PyTorch (the ``train`` extra): without it, one line that says how to install it
    (:class:`~pneumoscan.errors.MissingExtraError`, exit code 1) instead of a traceback.

    ``check_first`` imports ``modules`` before the body runs (:func:`pneumoscan.errors.require_torch`); a package of
    the extra that the body imports later (the EfficientNet weights, only for a pretrained network) gets the same
    answer. Use ``check_first=False`` for a command that needs torch only on some paths.
    """
    from pneumoscan.errors import is_train_extra_missing, missing_train_extra, require_torch

    if check_first:
        require_torch(what, modules)
    try:
        yield
    except ImportError as exc:
        if is_train_extra_missing(exc):
            raise missing_train_extra(what, exc) from exc
        raise


def writable_folder(folder: Path, option: str) -> None:
    """Create ``folder`` if needed and prove that a file can be made in it, or raise a usage error."""
    from pneumoscan.utils import check_writable_folder

    with usage_errors():
        check_writable_folder(folder, option)


def check_adult_age(years: float) -> float:
    """``--adult-age`` must be a positive number of years."""
    if not years > 0:
        raise typer.BadParameter(f"must be a positive number of years, got {years:g}", param_hint="--adult-age")
    return years
