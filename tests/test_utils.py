"""Atomic writes: temporary names that always fit, owner-only files, and clean-up after a killed writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pneumoscan.utils import NAME_MAX, atomic_path, atomic_write_text, fit_name, remove_stale_temps


def test_fit_name_counts_utf8_bytes_and_never_splits_a_character():
    assert fit_name("abc", 10) == "abc"
    assert fit_name("é" * 10, 5) == "éé"  # 2 bytes each: a third would need 6
    assert fit_name("a" + "€" * 5, 7) == "a€€"  # 3 bytes each
    assert fit_name("", 0) == ""


@pytest.mark.parametrize("name", ["a" * 250 + ".png", "é" * 125 + ".png", "x" * NAME_MAX])
def test_atomic_path_temp_name_fits_for_the_longest_legal_names(tmp_path, name):
    assert len(os.fsencode(name)) <= NAME_MAX
    seen = []
    with atomic_path(tmp_path / name) as tmp:
        seen.append(tmp.name)
        assert len(os.fsencode(tmp.name)) <= NAME_MAX and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
        tmp.write_text("ok")
    assert (tmp_path / name).read_text() == "ok"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_atomic_path_removes_the_temp_file_when_the_block_fails(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


KILLED_WRITER = """
import os, signal, sys
from pneumoscan.utils import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half of a file")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_remove_stale_temps_removes_only_the_files_of_dead_writers(tmp_path):
    target = tmp_path / "augmentations.png"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (left,) = [p for p in tmp_path.iterdir()]  # SIGKILL left its temporary file behind
    assert left.name.startswith(".augmentations.png.") and left.name.endswith(".tmp") and not target.exists()

    pid = os.getpid()
    mine = tmp_path / f".checkpoint.safetensors.{pid}.0123abcd.tmp"  # a live writer: this process
    init = tmp_path / ".config.json.1.89abcdef.tmp"  # a live writer: PID 1 always runs
    fabricated = tmp_path / f".{'x' * 200}.{_dead_pid()}.deadbeef.tmp"  # a dead writer, cut name
    others = [tmp_path / ".old.png.tmp", tmp_path / "notes.12.abcdef01.tmp", tmp_path / "keep.png"]
    for p in (mine, init, fabricated, *others):
        p.write_bytes(b"x")
    old = time.time() - 3600
    for p in tmp_path.iterdir():
        os.utime(p, (old, old))
    fresh = tmp_path / f".fresh.png.{_dead_pid()}.00000000.tmp"  # dead writer, but modified just now
    fresh.write_bytes(b"x")

    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([left, fabricated])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, init, fresh, *others))
    assert remove_stale_temps(tmp_path, min_age_s=0) == [fresh]
    assert remove_stale_temps(tmp_path / "missing") == []


def test_atomic_files_are_owner_only_whatever_the_umask(tmp_path):
    """House rule: files we write can name patients, so they are 0600 (not 0666 less the umask, as before)."""
    target = tmp_path / "worklist.csv"
    target.write_text("old")
    os.chmod(target, 0o644)
    old_umask = os.umask(0)  # the most permissive umask
    try:
        atomic_write_text(target, "new")
        with atomic_path(tmp_path / "plot.png") as tmp:
            tmp.unlink()  # a writer that replaces the file it was given (as some libraries do)
            tmp.write_bytes(b"png")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o600)
    assert oct((tmp_path / "plot.png").stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize("text", ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=1", "''-x", "'", "'a", "a=b",
                                  "", "plain.png", "/abs/-x.png", "é=", "'\t"])
def test_csv_safe_text_neutralises_formulas_and_is_exactly_reversible(text):
    from pneumoscan.utils import csv_restore_text, csv_safe_text

    safe = csv_safe_text(text)
    assert not safe.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert csv_restore_text(safe) == text
    if not text.lstrip("'").startswith(("=", "+", "-", "@", "\t", "\r")):
        assert safe == text  # ordinary text is left alone
    else:
        assert safe == "'" + text
