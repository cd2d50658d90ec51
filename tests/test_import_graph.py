"""Imports only go down the layers, and nothing imports in a circle (``scripts/check_imports.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_imports.py"


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_circles_and_no_upward_imports(checker):
    assert checker.problems() == []


def test_every_module_has_a_layer(checker):
    for mod in checker.modules():
        checker.layer(mod)


def _tree(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / "pneumoscan" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_checker_finds_a_circle_and_an_upward_import(checker, tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "",
        "io/__init__.py": "def f():\n    from pneumoscan import cli  # a lazy import counts too\n",
        "cli.py": "import pneumoscan.io\n",
        "gate/__init__.py": "",
        "gate/scope.py": "from pneumoscan.inference.predictor import x\n",
        "inference/__init__.py": "",
        "inference/predictor.py": "from pneumoscan.gate.scope import y\n",
    })
    found = checker.problems(src)
    assert any(p.startswith("import circle") and "pneumoscan.cli" in p and "pneumoscan.io" in p for p in found)
    assert any("upward import: pneumoscan.io" in p and "pneumoscan.cli" in p for p in found)
    assert any("upward import: pneumoscan.gate.scope" in p and "pneumoscan.inference.predictor" in p for p in found)
    assert not any("upward import: pneumoscan.inference.predictor" in p for p in found)  # gate is below inference


def test_the_package_root_holds_at_most_ten_modules(checker, tmp_path):
    assert len(checker.root_modules()) <= checker.MAX_ROOT_MODULES == 10
    src = _tree(tmp_path, {f"m{i}.py": "" for i in range(11)} | {"__init__.py": ""})
    assert any(p.startswith("12 modules directly in") for p in checker.problems(src))
