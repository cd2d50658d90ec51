"""Small shared helpers: atomic file writes and seeding (called by entry points only)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "NAME_MAX", "atomic_path", "atomic_write_bytes", "atomic_write_text", "check_writable_folder", "csv_restore_text",
    "csv_safe_text",
    "file_sha256", "fit_name", "is_loopback", "remove_stale_temps", "seed_everything"]

log = logging.getLogger(__name__)

#: Longest file name (one path component) in bytes on the file systems we write to (ext4, XFS, APFS, NTFS...).
NAME_MAX = 255
_TEMP_SUFFIX = ".tmp"
#: An :func:`atomic_path` temporary name: ``.{name, maybe cut}.{writer's pid}.{8 hex digits}.tmp``.
_TEMP_RE = re.compile(r"^\..*\.(\d+)\.[0-9a-f]{8}\.tmp$", re.DOTALL)


def fit_name(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose file-system encoding (UTF-8 here) takes at most ``limit`` bytes.

    Cuts between characters, never inside one, so the result is still a valid name.
    """
    if len(os.fsencode(text)) <= limit:
        return text
    out, used = [], 0
    for ch in text:
        n = len(os.fsencode(ch))
        if used + n > limit:
            break
        out.append(ch)
        used += n
    return "".join(out)


def _temp_name(target_name: str) -> str:
    """``.{name}.{pid}.{random}.tmp``, with ``name`` shortened so that the whole fits :data:`NAME_MAX` bytes.

    The writer's PID lets a later run tell a crashed writer's leftover from a live writer's file.
    """
    tail = f".{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
    return "." + fit_name(target_name, NAME_MAX - 1 - len(tail)) + tail


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash (even SIGKILL) leaves either the old file or the new one, never half
    of one. The temporary file is removed if the block raises. Its name always fits
    :data:`NAME_MAX` (a long target name is shortened in the temporary name only).

    The file is readable and writable by its owner only (mode 0600), whatever the umask, and whatever
    mode a file it replaces had. House rule: what we write (worklists, heatmaps, checkpoints, reports)
    can name patients and show their images, so it is private until its owner chooses to share it;
    a permissive umask on a shared machine must not publish it. (Before, the mode was 0666 less the
    umask, like a plain ``open()``.)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp_path = target.parent / _temp_name(target.name)
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        os.close(fd)
        break
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o600)  # again: a writer may have replaced the file we created (see the docstring)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: str | os.PathLike[str], *, min_age_s: float = 60.0) -> list[Path]:
    """Delete the :func:`atomic_path` temporary files in ``folder`` whose writer is dead; return their paths.

    A writer killed with SIGKILL cannot remove its temporary file. One is removed only when the PID in its
    name is no longer a running process (``os.kill(pid, 0)`` raises ``ProcessLookupError``) *and* it has not
    been modified for ``min_age_s`` seconds: the age also protects a writer this process cannot see (another
    container or host writing to a shared folder, where the PID means nothing here). A live writer's file,
    including this process's own, is never touched; nor is any other file. Does nothing on Windows, where
    ``os.kill(pid, 0)`` is not a liveness test, and when ``folder`` does not exist.
    """
    if os.name == "nt":  # pragma: no cover - signal 0 is CTRL_C_EVENT there
        return []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    now = time.time()
    removed: list[Path] = []
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < min_age_s:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:  # another process cleaned it first
            continue
        except OSError as exc:
            log.warning("cannot remove the stale temporary file %s: %s", entry.path, exc.strerror or exc)
            continue
        removed.append(Path(entry.path))
    if removed:
        log.info("removed %d temporary file(s) left in %s by writers that were killed", len(removed), folder)
    return removed


def _pid_alive(pid: int) -> bool:
    """True unless ``pid`` is certainly not a running process (when in doubt, alive)."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process; anything else: do not guess
        return True
    return True


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe_text(text: str) -> str:
    """A text cell for a CSV file that a spreadsheet shows as text, never runs as a formula.

    The one rule for every CSV we write (OWASP): a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab
    or a carriage return, after any leading ``'``, gets one more ``'`` in front (a spreadsheet shows the
    rest as text). Counting the existing quotes makes the rule exactly reversible by
    :func:`csv_restore_text`, for files pneumoscan reads back. Only for *text* (paths, names, errors,
    notes): numbers stay numbers, so ``-0.5`` written as a number is not changed.
    """
    return "'" + text if text.lstrip("'").startswith(_FORMULA_START) else text


def csv_restore_text(text: str) -> str:
    """Undo :func:`csv_safe_text` (for a CSV file read back): ``csv_restore_text(csv_safe_text(t)) == t``."""
    return text[1:] if text.startswith("'") and text.lstrip("'").startswith(_FORMULA_START) else text


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. Only entry points (CLI commands, scripts) call this."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency, but keep utils importable
        return
    torch.manual_seed(seed)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else, hostnames too
    (a server that binds to one of those is reachable from other machines)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (read in 1 MiB chunks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_writable_folder(folder: str | os.PathLike[str], option: str) -> Path:
    """Create ``folder`` if needed and prove that a file can be made in it; return it.

    Raises:
        UsageError: ``folder`` is a file, or cannot be created or written (``option`` names the option at fault).
    """
    import tempfile

    from pneumoscan.errors import UsageError

    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file, not a folder", option)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write into {path}: {exc.strerror or exc}", option) from exc
    return path
