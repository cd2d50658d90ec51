"""Shared pytest fixtures. Image builders live in ``imagefactory.py`` (plain functions, importable by any test).

Both shared-data fixtures skip the test, with a message, when their folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pgserver import empty_db_url, pg_server, store_url  # noqa: F401 - fixtures: PostgreSQL, both engines

#: ``../shared/data`` beside the repository (see its README); never copied into the project.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Environment variable naming the training data set folder (same as ``pneumoscan.config.DATA_ENV_VAR``).
DATA_ENV_VAR = "PNEUMOSCAN_DATA"
#: Environment variable naming the full-resolution sample images.
SAMPLES_ENV_VAR = "PNEUMOSCAN_SAMPLES"


def _from_env_or(var: str, default: Path) -> Path:
    value = os.environ.get(var, "").strip()
    return Path(value) if value else default


def fullres_samples_path() -> Path:
    """Return ``$PNEUMOSCAN_SAMPLES``, else ``../shared/data/fullres_samples``."""
    return _from_env_or(SAMPLES_ENV_VAR, SHARED_DATA / "fullres_samples")


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """The 224 x 224 training data set (``$PNEUMOSCAN_DATA``, else ``../shared/data/chest_xray_224``)."""
    root = _from_env_or(DATA_ENV_VAR, SHARED_DATA / "chest_xray_224")
    if not root.is_dir():
        pytest.skip(f"shared data set not found at {root} (set ${DATA_ENV_VAR} to run this test)")
    return root


@pytest.fixture(scope="session")
def fullres_samples() -> list[Path]:
    """All image files under the full-resolution samples folder, sorted."""
    root = fullres_samples_path()
    if not root.is_dir():
        pytest.skip(f"full-resolution samples not found at {root} (set ${SAMPLES_ENV_VAR} to run this test)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        pytest.skip(f"no files in the full-resolution samples folder {root}")
    return files


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained seed-cnn checkpoint at 64 px with operating threshold 0.5 and temperature 1.0 stored."""
    from modelfactory import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", threshold=0.5, temperature=1.0)


@pytest.fixture(scope="session")
def predictor(tiny_checkpoint):
    """THE predictor of the tests that need any model: :func:`tiny_checkpoint` on ONNX Runtime (thread-safe, so the
    servers and the DICOM node of several tests share it). A test that changes a predictor makes its own."""
    from pneumoscan.inference.predictor import Predictor

    return Predictor.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="session", autouse=True)
def _onnx_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """The ONNX exports the tests' own checkpoints get (``pneumoscan.inference.onnx_cache``) go to a temporary folder, never
    the user's ``~/.cache`` (subprocesses inherit it); a cache the caller chose is kept."""
    if os.environ.get("PNEUMOSCAN_ONNX_CACHE", "").strip():
        yield
        return
    os.environ["PNEUMOSCAN_ONNX_CACHE"] = str(tmp_path_factory.mktemp("onnx-cache"))
    try:
        yield
    finally:
        os.environ.pop("PNEUMOSCAN_ONNX_CACHE", None)
