"""Atomic writes: temporary names that always fit, owner-only files, and clean-up after a killed writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pneumoscan.utils import NAME_MAX, atomic_path, atomic_write_text, fit_name


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
