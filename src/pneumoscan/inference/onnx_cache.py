"""The ONNX Runtime model of a ``.safetensors`` checkpoint: shipped beside it, or built once and cached.

ONNX Runtime is the default backend, so a checkpoint needs its export. :func:`open_for_checkpoint` looks, in order:

1. beside the checkpoint (``<stem>.onnx``; the packaged ``model.onnx`` lies beside ``model.safetensors``);
2. in the cache folder (:func:`cache_dir`), as ``<sha256 of the checkpoint>.onnx``;

and uses a file only when its metadata names the checkpoint's SHA-256 (``pneumoscan_checkpoint_sha256``, written
by :func:`pneumoscan.inference.export.export_onnx`), so a stale or foreign export is never used. When neither fits, it
exports the checkpoint into the cache (owner-only folder and file, written atomically): that one run imports
torch and says so in a log line; later runs load the cached file without torch. The cache keeps the
:data:`MAX_CACHED` most recently used exports.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from pneumoscan.errors import CheckpointError, require_torch
from pneumoscan.inference.scoring import CHECKPOINT_SHA256_KEY, open_onnx_session

__all__ = ["CACHE_ENV_VAR", "MAX_CACHED", "cache_dir", "open_for_checkpoint"]

log = logging.getLogger(__name__)

#: Environment variable naming the folder of cached ONNX exports.
CACHE_ENV_VAR = "PNEUMOSCAN_ONNX_CACHE"
#: Exports kept in the cache (the least recently used beyond this are deleted when a new one is built).
MAX_CACHED = 8


def cache_dir() -> Path:
    """``$PNEUMOSCAN_ONNX_CACHE``, else ``$XDG_CACHE_HOME/pneumoscan/onnx``, else ``~/.cache/pneumoscan/onnx``."""
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "pneumoscan" / "onnx"


def _checkpoint_sha(session: Any) -> str:
    return str(dict(session.get_modelmeta().custom_metadata_map).get(CHECKPOINT_SHA256_KEY, ""))


def _try_open(path: Path, sha256: str, threads: int | None, inter_op_threads: int | None,
              spin: bool) -> tuple[Any, dict[str, Any]] | None:
    """The session and metadata of ``path`` when it is an export of the checkpoint ``sha256``; else None."""
    if not path.is_file():
        return None
    try:
        session, meta = open_onnx_session(path, threads=threads, inter_op_threads=inter_op_threads, spin=spin)
    except CheckpointError as exc:
        log.info("not using %s: %s", path, exc)
        return None
    if _checkpoint_sha(session) != sha256:
        log.info("not using %s: it was exported from another checkpoint (or before exports named theirs)", path)
        return None
    if path.parent == cache_dir():
        _touch(path)
    return session, meta


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _make_cache_dir() -> Path:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if folder.stat().st_mode & 0o077:
            os.chmod(folder, 0o700)
    except OSError as exc:
        log.debug("could not make %s owner-only: %s", folder, exc)
    return folder


def _prune(folder: Path, keep: Path) -> None:
    """Delete the least recently used exports beyond :data:`MAX_CACHED` (never ``keep``)."""
    try:
        files = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in [p for p in files if p != keep][MAX_CACHED - 1:]:
        try:
            old.unlink()
        except OSError as exc:
            log.debug("could not delete the cached export %s: %s", old, exc)


def build(checkpoint: str | os.PathLike[str], sha256: str) -> Path:
    """Export ``checkpoint`` into the cache as ``<sha256>.onnx`` (this imports torch) and return its path.

    Raises:
        CheckpointError: ``checkpoint`` is not a readable pneumoscan checkpoint (said before any export is announced
            or the cache folder is made), or its export cannot be written.
        MissingExtraError: PyTorch (the ``train`` extra) is not installed; the message says how to install it or
            where to make the export instead.
    """
    from pneumoscan.checkpoint import load_checkpoint_arrays

    load_checkpoint_arrays(checkpoint)  # its header and metadata, without torch: a bad file is refused here
    onnx_beside = Path(checkpoint).with_suffix(".onnx")
    require_torch(f"building the ONNX Runtime model of {checkpoint} (once)", advice=(
        f"or, where PyTorch is installed, run pneumoscan export --model {checkpoint} --onnx {onnx_beside} and put "
        "that file beside the checkpoint (or pass the .onnx as --model)"))
    from pneumoscan.inference.export import (
        export_onnx,  # torch: only in the run that builds the export
    )

    try:
        folder = _make_cache_dir()
    except OSError as exc:
        raise CheckpointError(f"cannot create the ONNX cache folder {cache_dir()} ({exc.strerror or exc}); set "
                              f"${CACHE_ENV_VAR} to a writable folder, or use --backend torch") from exc
    target = folder / f"{sha256}.onnx"
    t0 = time.perf_counter()
    log.warning("building the ONNX Runtime model of %s once (this run imports torch for the export); cached as %s",
                checkpoint, target)
    try:
        export_onnx(checkpoint, target)
    except OSError as exc:
        raise CheckpointError(f"cannot write the ONNX export {target} ({exc.strerror or exc}); set "
                              f"${CACHE_ENV_VAR} to a writable folder, or use --backend torch") from exc
    log.info("exported %s in %.1f s", target.name, time.perf_counter() - t0)
    _prune(folder, target)
    return target


def open_for_checkpoint(checkpoint: str | os.PathLike[str], sha256: str, *, threads: int | None = None,
                        inter_op_threads: int | None = 1, spin: bool = False) -> tuple[Any, dict[str, Any], Path]:
    """An ONNX Runtime session of the checkpoint whose file has SHA-256 ``sha256``: ``(session, metadata, the
    .onnx used)``, from the export beside it, the cache, or a new export into the cache (see the module doc).

    Raises:
        CheckpointError: the checkpoint cannot be read or exported, or its export cannot be opened.
    """
    ckpt = Path(checkpoint)
    for candidate in (ckpt.with_suffix(".onnx"), cache_dir() / f"{sha256}.onnx"):
        found = _try_open(candidate, sha256, threads, inter_op_threads, spin)
        if found is not None:
            return (*found, candidate)
    built = build(ckpt, sha256)
    found = _try_open(built, sha256, threads, inter_op_threads, spin)
    if found is None:
        raise CheckpointError(f"{built}: the ONNX export just made of {ckpt} cannot be opened")
    return (*found, built)
