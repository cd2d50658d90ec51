"""ONNX Runtime as the default backend (issue 18): no torch on the prediction path, the export cache, heatmaps
loaded on first use, --backend and --threads, the decoding pipeline, and parity between the backends."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from imagefactory import make_jpeg, make_png, synthetic_xray
from modelfactory import make_checkpoint
from pneumoscan.inference import onnx_cache
from pneumoscan.checkpoint import CheckpointError
from pneumoscan.cli import main
from pneumoscan.inference.pipeline import batched, ordered_map
from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor, RuntimeOptions
from pneumoscan.utils import file_sha256

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def onnx_cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "onnx-cache"
    monkeypatch.setenv(onnx_cache.CACHE_ENV_VAR, str(folder))
    return folder


@pytest.fixture
def films(tmp_path) -> list[Path]:
    root = tmp_path / "films"
    root.mkdir()
    paths = [make_png(root / f"f{i:02d}.png", synthetic_xray(90 + 3 * i, 80 + 2 * i, seed=i)) for i in range(7)]
    paths.insert(3, root / "broken.png")
    paths[3].write_text("not an image")
    paths.append(make_jpeg(root / "last.jpg", synthetic_xray(120, 100, seed=9)))
    return paths


def _run_python(code: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- no torch on the prediction path


def test_predict_with_the_shipped_model_never_imports_torch(films, tmp_path):
    code = ("import sys; from pneumoscan.cli import main; "
            f"rc = main(['predict', *{[str(f) for f in films]!r}, '--no-progress', '--out', "
            f"{str(tmp_path / 'w.json')!r}]); print(rc, 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "PNEUMOSCAN_MODEL"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 False", "pneumoscan predict imported torch"


def test_a_users_checkpoint_imports_torch_once_to_build_its_export_then_never(tmp_path, films, onnx_cache_dir):
    ckpt = make_checkpoint(tmp_path / "mine.safetensors", threshold=0.5)
    code = ("import sys; from pneumoscan.cli import main; "
            f"rc = main(['predict', {str(films[0])!r}, '--model', {str(ckpt)!r}, '--no-progress', '--out', "
            f"{str(tmp_path / 'w.csv')!r}, '--overwrite']); print(rc, 'torch' in sys.modules)")
    env = {onnx_cache.CACHE_ENV_VAR: str(onnx_cache_dir)}
    assert _run_python(code, env) == "0 True"  # the run that builds the export
    cached = onnx_cache_dir / f"{file_sha256(ckpt)}.onnx"
    assert cached.is_file()
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600 and stat.S_IMODE(onnx_cache_dir.stat().st_mode) == 0o700
    assert _run_python(code, env) == "0 False"  # every later run


def test_version_is_fast_and_loads_no_library():
    code = ("import sys, time; t = time.perf_counter(); from pneumoscan.cli import main; rc = main(['--version']); "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnxruntime', 'scipy', 'numpy'}); "
            "print(rc, heavy, round(time.perf_counter() - t, 3))")
    line = _run_python(code)
    assert line.startswith("0 [] "), line  # nothing heavy imported
    assert float(line.rsplit(" ", 1)[1]) < 1.0


def test_cli_backend_choices_are_the_librarys():
    from pneumoscan.cli.common import Backend
    from pneumoscan.inference.scoring import BACKENDS, DEFAULT_BACKEND

    assert tuple(b.value for b in Backend) == BACKENDS and DEFAULT_BACKEND == "onnx"


# ----------------------------------------------------------------------------- the export cache


def test_the_export_is_built_once_and_reused(tmp_path, onnx_cache_dir, caplog):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", threshold=0.4)
    with caplog.at_level(logging.INFO, logger="pneumoscan.inference.onnx_cache"):
        first = Predictor.from_checkpoint(ckpt)
    assert "imports torch" in caplog.text
    assert first.onnx_path == str(onnx_cache_dir / f"{file_sha256(ckpt)}.onnx") and first.path == str(ckpt)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pneumoscan.inference.onnx_cache"):
        again = Predictor.from_checkpoint(ckpt)
    assert "building" not in caplog.text and again.onnx_path == first.onnx_path


def test_a_stale_or_foreign_export_is_never_used(tmp_path, onnx_cache_dir):
    from pneumoscan.inference.export import export_onnx

    old = make_checkpoint(tmp_path / "old.safetensors", seed=1)
    new = make_checkpoint(tmp_path / "m.safetensors", seed=2)
    export_onnx(old, tmp_path / "m.onnx")  # beside the checkpoint, but made from other weights
    onnx_cache_dir.mkdir(mode=0o700)
    (onnx_cache_dir / f"{file_sha256(new)}.onnx").write_bytes(b"junk")  # a damaged cache entry
    p = Predictor.from_checkpoint(new)
    assert p.onnx_path == str(onnx_cache_dir / f"{file_sha256(new)}.onnx")
    film = synthetic_xray(100, 90)
    torch_p = Predictor.from_checkpoint(new, backend="torch")
    assert abs(p.predict_proba(film)[0] - torch_p.predict_proba(film)[0]) <= 1e-5
    export_onnx(new, tmp_path / "m.onnx")  # now the export beside it is this checkpoint's: it is used
    assert Predictor.from_checkpoint(new).onnx_path == str(tmp_path / "m.onnx")


def test_the_cache_keeps_the_most_recent_exports(tmp_path, onnx_cache_dir, monkeypatch):
    monkeypatch.setattr(onnx_cache, "MAX_CACHED", 2)
    made = []
    for seed in range(3):
        ckpt = make_checkpoint(tmp_path / f"m{seed}.safetensors", seed=seed)
        made.append(Path(Predictor.from_checkpoint(ckpt).onnx_path))
        time.sleep(0.02)
    assert [p.is_file() for p in made] == [False, True, True]


# ----------------------------------------------------------------------------- heatmaps under ONNX Runtime


def test_heatmaps_run_on_onnx_runtime_without_torch_weights(tmp_path, onnx_cache_dir, films):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", threshold=0.5)
    p = Predictor.from_checkpoint(ckpt)
    assert p.backend == "onnxruntime" and p._model is None
    film = synthetic_xray(120, 100, seed=3)
    pred = p.assess(p.read(film, full=True), explain=True)
    heat = pred.heatmap(film.shape)
    assert p._model is None, "occlusion sensitivity needs no torch model"
    assert heat.shape == film.shape and pred.features is not None and pred.explanation.method == "occlusion"
    plain = p.assess(p.read(film))
    assert plain.explanation is None and pred.probability == pytest.approx(plain.probability, abs=1e-6)
    prob, heat2 = p.explain(film)
    np.testing.assert_allclose(heat2, heat, atol=1e-6)
    results = p.score_files(films, heatmaps=tmp_path / "heat")
    assert [bool(r.heatmap_path) for r in results] == [r.read for r in results]
    assert "not an image" in results[3].error or results[3].error


def test_an_onnx_file_alone_explains_but_cannot_run_with_torch(tmp_path, onnx_cache_dir):
    from pneumoscan.inference.export import export_onnx

    ckpt = make_checkpoint(tmp_path / "m.safetensors")
    onnx_file = export_onnx(ckpt, tmp_path / "only.onnx")
    film = synthetic_xray(80, 80)
    alone = Predictor.from_checkpoint(onnx_file)
    r = alone.assess(alone.read(film, full=True), explain=True)
    torch_r = Predictor.from_checkpoint(ckpt, backend="torch")
    t = torch_r.assess(torch_r.read(film, full=True), explain=True)
    assert r.explanation is not None and t.explanation is not None
    np.testing.assert_allclose(r.explanation.cam, t.explanation.cam, atol=1e-3)  # the same map on either backend
    with pytest.raises(CheckpointError, match="torch backend needs the .safetensors"):
        Predictor.from_checkpoint(onnx_file, backend="torch")
    assert main(["predict", str(tmp_path), "--model", str(onnx_file), "--backend", "torch"]) == 2


# ----------------------------------------------------------------------------- threads


def test_threads_reach_onnx_runtime(tmp_path, onnx_cache_dir):
    ckpt = make_checkpoint(tmp_path / "m.safetensors")
    p = Predictor.from_checkpoint(ckpt, options=RuntimeOptions(threads=1))
    assert p.network.runner.session.get_session_options().intra_op_num_threads == 1
    q = Predictor.from_checkpoint(ckpt, options=RuntimeOptions(threads=3))
    assert q.network.runner.session.get_session_options().intra_op_num_threads == 3
    with pytest.raises(ValueError, match="backend"):
        RuntimeOptions(backend="tensorflow")


def test_serve_threads_workers_and_backend_reach_the_settings(monkeypatch):
    import pneumoscan.serve as serve

    seen = {}
    monkeypatch.setattr(serve, "run", lambda model, **kw: seen.update(kw))
    assert main(["serve", "--threads", "2", "--workers", "3", "--backend", "torch"]) == 0
    s = seen["settings"]
    assert (s.threads, s.workers, s.backend) == (2, 3, "torch")
    assert main(["serve"]) == 0
    s = seen["settings"]
    assert (s.threads, s.backend) == (1, "onnx") and s.workers == max(2, os.cpu_count() or 1)


def test_the_decoding_pool_lives_as_long_as_the_predictor(tmp_path, onnx_cache_dir, films):
    p = Predictor.from_checkpoint(make_checkpoint(tmp_path / "m.safetensors"),
                                  options=RuntimeOptions(decode_workers=2))
    p.score_files(films, batch_size=2)
    pool = p._pool
    p.score_files(films, batch_size=3)
    p.predict_proba(films[:2])
    assert pool is not None and p._pool is pool  # one pool for every batch and call
    p.close()
    assert p._pool is None
    assert len(p.score_files(films)) == len(films)  # usable after close: a new pool starts


# ----------------------------------------------------------------------------- the pipeline


def test_ordered_map_keeps_order_and_a_bounded_window():
    live, peak, lock = [0], [0], threading.Lock()

    def work(i: int) -> int:
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.002 * (i % 3))
        with lock:
            live[0] -= 1
        return i * i

    submitted = []

    def items():
        for i in range(40):
            submitted.append(i)
            yield i

    with ThreadPoolExecutor(4) as pool:
        out = []
        for n, r in enumerate(ordered_map(pool, work, items(), window=5)):
            assert len(submitted) - n <= 5  # never more than the window ahead of the consumer
            out.append(r)
    assert out == [i * i for i in range(40)] and peak[0] <= 4
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_ordered_map_raises_in_turn_and_cancels_the_rest_when_closed():
    def work(i: int) -> int:
        if i == 2:
            raise KeyError(i)
        time.sleep(0.01)
        return i

    with ThreadPoolExecutor(1) as pool:
        stream = ordered_map(pool, work, range(10), window=3)
        assert [next(stream), next(stream)] == [0, 1]
        with pytest.raises(KeyError):
            next(stream)
        stream = ordered_map(pool, work, range(100, 200), window=50)
        next(stream)
        stream.close()  # the consumer stops: the items not started are cancelled, not run


def test_overlap_on_and_off_give_the_same_results_and_errors(tmp_path, onnx_cache_dir, films):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", threshold=0.5)
    on = Predictor.from_checkpoint(ckpt, options=RuntimeOptions(overlap=True)).score_files(films, batch_size=3)
    off = Predictor.from_checkpoint(ckpt, options=RuntimeOptions(overlap=False)).score_files(films, batch_size=3)
    assert [r.source for r in on] == [str(f) for f in films]
    assert on == off  # every field that compares: source, probability, scope verdict, decision, error...
    assert on[3].probability is None and on[3].error


# ----------------------------------------------------------------------------- parity


def test_preprocess_array_is_bit_identical_to_the_torch_path():
    import torch  # noqa: F401 - the reference path

    from pneumoscan.preprocessing import Preprocessing, preprocess, preprocess_array

    pixels = np.tile(np.arange(256, dtype=np.uint8), 16).reshape(1, 64, 64)
    for mean, std in ((0.5, 0.25), (0.449, 0.226), (0.485, 0.229), (0.3, 0.7)):
        spec = Preprocessing(image_size=64, mean=mean, std=std)
        a, b = preprocess_array(pixels, spec), preprocess(pixels, spec).numpy()
        assert a.dtype == np.float32 and a.flags.c_contiguous
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.shared_data
def test_backends_agree_within_1e_5_on_the_shared_samples(shared_data_root):
    """300 training films (every 17th) through both backends: probabilities within 1e-5, no decision changed."""
    files = sorted(p for p in shared_data_root.rglob("*.jpeg"))[::17][:300]
    onnx_p = Predictor.from_checkpoint(PACKAGED_MODEL)
    torch_p = Predictor.from_checkpoint(PACKAGED_MODEL, backend="torch")
    a = onnx_p.score_files(files, batch_size=32)
    b = torch_p.score_files(files, batch_size=32)
    pa = np.array([r.probability for r in a])
    pb = np.array([r.probability for r in b])
    assert len(pa) >= 250 and np.max(np.abs(pa - pb)) <= 1e-5
    assert np.array_equal(pa >= onnx_p.threshold, pb >= torch_p.threshold)
    assert [r.in_scope for r in a] == [r.in_scope for r in b]


def test_provenance_without_torch_is_the_one_site_reexports():
    from pneumoscan.inference import provenance
    from pneumoscan.onboarding import site

    assert site.provenance is provenance.provenance and site.site_state is provenance.site_state
    meta = {"adaptation": {"date": "2026-01-02T00:00:00Z", "n_images": 3, "parent_model_sha256": "ab" * 32},
            "site_calibration": {"n_images": 60, "threshold": 0.31, "date": "2026-02-03"}}
    out = provenance.provenance(meta)
    assert out["site_state"] == "adapted and calibrated"
    assert out["provenance"] == ("Model adapted at this site on 2026-01-02 from 3 films (parent abababababab); "
                                 "threshold calibrated at this site on 2026-02-03 on 60 labelled films "
                                 "(threshold 0.310)")
    assert provenance.provenance({})["site_state"] == "shipped" and provenance.provenance_line({}) == ""


def test_the_scope_cut_lies_between_validation_films_never_on_one():
    from pneumoscan.gate.reference import midpoint_cut

    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    cut = midpoint_cut(scores, 0.2)  # at most 2 of 10 above (the rank rule leaves 1, as before)
    assert cut == pytest.approx(0.95) and np.sum(scores > cut) == 1 and not np.any(scores == cut)
    assert midpoint_cut(scores, 0.0) == 1.0  # nothing above: the largest score itself


@pytest.mark.shared_data
def test_the_shipped_cut_flips_no_validation_film_between_backends():
    """A reference's cut-off once sat on one validation film's score (torch 0.298296); ONNX Runtime's 1e-7
    difference flipped it out of scope. The cut lies halfway between two validation films' scores, on none."""
    from pneumoscan.checkpoint import load_checkpoint_arrays
    from pneumoscan.inference.predictor import PACKAGED_MODEL
    from pneumoscan.gate.reference import reference_of

    ref = reference_of(load_checkpoint_arrays(PACKAGED_MODEL))
    scores = ref.ood_scores(ref.val_features)
    assert np.min(np.abs(scores - ref.knn_cut)) > 1e-6
    assert np.mean(scores > ref.knn_cut) <= ref.info["max_val_flag_rate"]
