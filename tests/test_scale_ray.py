"""``pneumoscan predict --engine ray`` (pneumoscan.scale): an archive scored on Ray Data gives what the default
``predict`` gives, file for file, and a run killed mid-way and rerun scores every file exactly once.

One local Ray instance (2 CPUs, no dashboard) serves the module; the killed run is a separate driver process that
joins it by ``--address`` and gets SIGKILL once it has committed some shards. The model is a seed-cnn at 64 px that
carries a reference (as in test_drift_cli.py), so the drift check runs on both paths. Skips without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from imagefactory import jpeg_bytes, make_dicom, make_jpeg, make_png, synthetic_xray, varied_film
from modelfactory import checkpoint_meta, randomize_batchnorm
from pneumoscan.checkpoint import save_checkpoint
from pneumoscan.cli import main
from pneumoscan.models import create_model, default_preprocessing
from pneumoscan.onboarding.reference_builder import build_reference
from pneumoscan.preprocessing import resize_for_model
from pneumoscan.utils import file_sha256

REPO = Path(__file__).resolve().parents[1]
N_FILMS = 300
BAD = {"bad-truncated.jpg", "bad-text.png", "bad-empty.png"}


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_ray = pytest.mark.skipif(not _have("ray"), reason="Ray is not installed (the 'ray' extra: "
                                                          "bash scripts/setup.sh ray)")


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance for the module (2 CPUs, no dashboard), shut down at the end; its address."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (the 'ray' extra)")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ref_model(tmp_path_factory) -> Path:
    """A seed-cnn checkpoint at 64 px carrying a reference of 120 bank and 320 validation films (so that the drift
    check tests every in-scope film of the archive: it samples at most as many as the reference has validation
    films)."""
    spec = default_preprocessing("seed-cnn", 64)
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("seed-cnn"), 0).eval()
    squares = np.stack([resize_for_model(varied_film(1000 + i), spec) for i in range(440)])
    ref = build_reference(model, squares, np.arange(120), np.arange(120, 440), spec, bank_size=120)
    meta = {**checkpoint_meta("seed-cnn", 64, threshold=0.5, temperature=1.0), "reference": ref.to_meta()}
    return save_checkpoint(tmp_path_factory.mktemp("ref") / "ref.safetensors", model.state_dict(), meta,
                           extra=ref.to_tensors())


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """300 films (PNG, JPEG, a few DICOM) with three bad files among them, a file that is not an image and a hidden
    file (both skipped, as predict skips them)."""
    root = tmp_path_factory.mktemp("archive")
    for i in range(N_FILMS):
        film = varied_film(i)
        if i % 50 == 7:
            make_dicom(root / f"film{i:03d}.dcm", film)
        elif i % 3:
            make_png(root / f"film{i:03d}.png", film)
        else:
            make_jpeg(root / f"film{i:03d}.jpg", film)
    (root / "bad-truncated.jpg").write_bytes(jpeg_bytes(synthetic_xray(300, 240))[:2000])
    (root / "bad-text.png").write_text("this is not a picture")
    (root / "bad-empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image: skipped")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


@pytest.fixture(scope="module")
def default_run(archive, ref_model, tmp_path_factory) -> dict:
    """The default engine's JSON worklist of the archive (given as an absolute folder)."""
    out = tmp_path_factory.mktemp("default") / "worklist.json"
    assert main(["predict", str(archive), "--model", str(ref_model), "--no-progress", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _ray_args(archive: Path, model: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["predict", str(archive), "--model", str(model), "--no-progress", "--engine", "ray",
            "--run-dir", str(run_dir), *extra]


def _shard_rows(run_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    from pneumoscan.scale.shards import shard_files

    return [row for p in shard_files(run_dir / "shards") for row in pq.read_table(p).to_pylist()]


@needs_ray
def test_ray_engine_equals_the_default_engine_file_for_file(ray_address, archive, ref_model, default_run, tmp_path,
                                                            capsys):
    run_dir, out = tmp_path / "run", tmp_path / "ray.json"
    capsys.readouterr()
    assert main(_ray_args(archive, ref_model, run_dir, "--out", str(out), "--batch-size", "16")) == 0
    printed = " ".join(capsys.readouterr().out.split())
    doc = json.loads(out.read_text())
    ours, theirs = doc["results"], default_run["results"]
    assert len(ours) == len(theirs) == N_FILMS + len(BAD)
    # One result, the same columns, the same ranking (ties in listing order), the errors as rows.
    for a, b in zip(ours, theirs):
        assert list(a) == list(b)
        assert a["path"] == b["path"] and a["rank"] == b["rank"]
        if b["probability"] is None:
            assert a["probability"] is None
        else:
            assert abs(a["probability"] - b["probability"]) <= 1e-6
        assert {k: v for k, v in a.items() if k not in ("probability", "score", "cause_probability")} == \
            {k: v for k, v in b.items() if k not in ("probability", "score", "cause_probability")}
    errors = {Path(r["path"]).name: r["error"] for r in ours if r["error"]}
    assert set(errors) == BAD and all(errors.values())
    for key in ("n_files", "n_in_scope", "n_out_of_scope", "n_unreadable", "n_cautioned", "model_version",
                "threshold"):
        assert doc[key] == default_run[key], key
    # The drift check ran once over the in-scope films; when they are fewer than it samples (at most 500), it is
    # predict's own verdict.
    assert doc["drift"] is not None and default_run["drift"] is not None
    assert doc["drift"]["n_used"] == default_run["drift"]["n_used"] == doc["n_in_scope"]
    assert doc["drift"]["shifted"] == default_run["drift"]["shifted"]
    assert doc["drift"]["n_images"] == default_run["drift"]["n_images"] == doc["n_in_scope"]
    assert doc["drift"]["statistic"] == pytest.approx(default_run["drift"]["statistic"], rel=1e-5, abs=1e-9)
    assert "Drift check on" in printed and f"{N_FILMS + len(BAD)} file(s) listed" in printed
    # The shards: owner-only, one row per file, each with the SHA-256 of the bytes it was scored from.
    rows = _shard_rows(run_dir)
    assert sorted(r["path"] for r in rows) == sorted(r["path"] for r in theirs)
    for r in rows[:20]:
        assert r["sha256"] == file_sha256(r["path"]) and r["size_bytes"] == os.stat(r["path"]).st_size
    for p in [run_dir / "run.json", run_dir / "summary.json", *(run_dir / "shards").iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    # The drift sample's features are kept for at most 500 films, nobody else's.
    assert sum(r["drift_features"] is not None for r in rows) == doc["n_in_scope"]


@needs_ray
def test_a_killed_run_resumed_scores_every_file_exactly_once(ray_address, archive, ref_model, default_run, tmp_path):
    run_dir = tmp_path / "run"
    args = _ray_args(archive, ref_model, run_dir, "--address", ray_address, "--batch-size", "4", "--shard-rows", "8")
    code = f"import sys; from pneumoscan.cli import main; sys.exit(main({args!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list((run_dir / "shards").glob("shard-*.parquet"))) < 3:
            assert proc.poll() is None, f"the driver stopped early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no shards were written in 240 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the driver itself, at once: no chance to tidy up
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        proc.stderr.close()
    before = _shard_rows(run_dir)
    assert 0 < len(before) < N_FILMS + len(BAD), "the run finished before it could be killed"
    assert not (run_dir / "summary.json").exists()

    from pneumoscan.scale import ArchiveRequest, archive_job

    report = archive_job(ArchiveRequest(paths=[archive], run_dir=run_dir, model=ref_model, batch_size=4,
                                        shard_rows=8, address=ray_address))
    assert report.resumed and report.n_done == len(before) and report.n_scored == N_FILMS + len(BAD) - len(before)
    rows = _shard_rows(run_dir)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == N_FILMS + len(BAD)  # every file once: no row twice, none missing
    assert set(paths) == {r["path"] for r in default_run["results"]}
    expected = {r["path"]: r["probability"] for r in default_run["results"]}
    for r in rows:
        if expected[r["path"]] is None:
            assert r["probability"] is None and r["error"]
        else:
            assert abs(r["probability"] - expected[r["path"]]) <= 1e-6
    assert report.counts["n_files"] == N_FILMS + len(BAD) and (run_dir / "summary.json").exists()

    # A file that changed is scored again and its new row supersedes the old; with --rehash the others are read
    # and hashed again and, unchanged, not scored.
    from pneumoscan.scale import read_results

    changed = next(archive.glob("film00[0-9].png"))
    original = changed.read_bytes()
    try:
        make_png(changed, varied_film(5000))
        again = archive_job(ArchiveRequest(paths=[archive], run_dir=run_dir, model=ref_model, batch_size=16))
        assert (again.n_scored, again.n_done) == (1, N_FILMS + len(BAD) - 1)
    finally:
        changed.write_bytes(original)
    rehashed = archive_job(ArchiveRequest(paths=[archive], run_dir=run_dir, model=ref_model, batch_size=16,
                                          rehash=True))
    assert (rehashed.n_scored, rehashed.n_unchanged, rehashed.n_done) == (1, N_FILMS + len(BAD) - 1, 0)
    latest = read_results(str(run_dir), ["sha256", "probability"]).to_pylist()
    assert len(latest) == N_FILMS + len(BAD) and len(_shard_rows(run_dir)) == N_FILMS + len(BAD) + 2
    mine = next(r for r in latest if r["path"] == str(changed))
    assert mine["sha256"] == file_sha256(changed)
    assert abs(mine["probability"] - expected[str(changed)]) <= 1e-6


def test_the_default_engine_never_imports_ray(archive, tmp_path):
    code = ("import sys; from pneumoscan.cli import main; "
            f"rc = main(['predict', {str(next(archive.glob('*.png')))!r}, '--no-progress', '--out', "
            f"{str(tmp_path / 'w.csv')!r}]); print(rc, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 False", "the default predict imported ray"


@pytest.mark.parametrize("args, message", [
    (["--engine", "ray"], "--run-dir"),
    (["--engine", "ray", "--run-dir", "R", "--heatmaps", "H"], "--heatmaps"),
    (["--engine", "ray", "--run-dir", "R", "--backend", "torch"], "--backend torch"),
    (["--run-dir", "R"], "only with --engine ray"),
    (["--manifest", "M"], "only with --engine ray"),
])
def test_options_of_the_other_engine_are_refused_before_anything_runs(archive, tmp_path, capsys, args, message):
    args = [a if a not in ("R", "H", "M") else str(tmp_path / a) for a in args]
    assert main(["predict", str(archive), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "R").exists()


# ----------------------------------------------------------------------------- the parts, without Ray


needs_arrow = pytest.mark.skipif(not _have("pyarrow"), reason="pyarrow is not installed (the 'ray' extra)")


@needs_arrow
def test_the_listing_streams_folders_globs_and_manifests_once_each(tmp_path):
    from pneumoscan.scale.listing import Listing, iter_paths, pending_blocks

    root = tmp_path / "a"
    (root / "sub").mkdir(parents=True)
    films = [make_png(root / "x.png", varied_film(1)), make_png(root / "sub" / "y.png", varied_film(2))]
    (root / "sub" / "readme.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")  # a glob's * does not match it either
    manifest = tmp_path / "list.txt"
    manifest.write_text("# the archive\n\na/x.png\na/missing.png\n" + str(films[1]) + "\n")
    listing = Listing()
    paths = list(iter_paths([root, str(tmp_path / "a" / "**" / "*")], [manifest], recursive=False, listing=listing))
    # The folder (not recursive), then the glob (** reaches sub/), then the manifest (relative to its folder).
    assert paths[0] == str(films[0]) and str(films[1]) in paths and str(tmp_path / "a" / "missing.png") in paths
    assert dict(listing.skipped) == {"sub-folder": 1, "other": 1, "hidden/system file": 1}
    blocks = list(pending_blocks(iter(paths), listing, block_rows=2))
    listed = [p for b in blocks for p in b["path"].to_pylist()]
    assert listed == [str(films[0]), str(films[1]), str(tmp_path / "a" / "missing.png")]  # each once, in order
    assert listing.n_listed == 3 and listing.n_repeated == len(paths) - 3
    assert all(b.num_rows <= 2 for b in blocks)


@needs_arrow
def test_a_resume_leaves_out_unchanged_files_and_rehash_asks_for_their_hashes(tmp_path):
    from pneumoscan.scale.listing import Listing, pending_blocks
    from pneumoscan.scale.shards import DoneIndex, path_key

    files = [make_png(tmp_path / f"f{i}.png", varied_film(i)) for i in range(4)]
    st = [os.stat(f) for f in files]
    done = DoneIndex([path_key(str(f)) for f in files[:3]], [s.st_size for s in st[:3]],
                     [s.st_mtime_ns for s in st[:3]], [file_sha256(f) for f in files[:3]])
    make_png(files[1], varied_film(99))  # changed since it was scored
    listing = Listing()
    left = [p for b in pending_blocks((str(f) for f in files), listing, block_rows=10, done=done)
            for p in b["path"].to_pylist()]
    assert left == [str(files[1]), str(files[3])] and listing.n_done == 2
    listing = Listing()
    table = next(pending_blocks((str(f) for f in files), listing, block_rows=10, done=done, rehash=True))
    expected = dict(zip(table["path"].to_pylist(), table["expected_sha256"].to_pylist()))
    assert expected[str(files[0])] == file_sha256(files[0]) and expected[str(files[3])] is None
    assert listing.n_done == 0


def test_the_drift_sample_is_the_lowest_priorities_while_storing_few():
    from pneumoscan.scale.shards import DriftSample

    rng = np.random.default_rng(0)
    priorities = rng.integers(0, 2**63, size=20_000).tolist()
    sample = DriftSample(500)
    stored = [p for p in priorities if sample.offer(p)]
    assert set(sorted(priorities)[:500]) <= set(stored)  # the final bottom-500 all had their features stored
    assert len(stored) < 500 * (2 + np.log(20_000 / 500))  # about k (1 + ln(N / k)), not N
    resumed = DriftSample(500)
    resumed.seed(stored[:3000])
    later = [p for p in priorities[len(stored[:3000]):] if resumed.offer(p)]
    assert set(sorted(priorities)[:500]) <= set(stored[:3000]) | set(later)


@needs_arrow
def test_a_run_folder_refuses_another_run_and_a_second_driver(tmp_path):
    from pneumoscan.errors import UsageError
    from pneumoscan.scale.run import RunFolder

    settings = {"inputs": ["/a"], "manifests": [], "recursive": False, "model_version": "abc", "threshold": 0.5,
                "temperature": 1.0, "cause_threshold": None, "adult_age_years": 18.0, "pseudonym_check": None}
    with RunFolder.open(tmp_path / "run", settings) as run:
        assert not run.resumed and run.next_seq() == 1
        with pytest.raises(UsageError, match="another pneumoscan run is working"):
            RunFolder.open(tmp_path / "run", settings)
    with RunFolder.open(tmp_path / "run", settings) as run:
        assert run.resumed
    with pytest.raises(UsageError, match=r"model_version: \"abc\" then, \"def\" now"):
        RunFolder.open(tmp_path / "run", {**settings, "model_version": "def"})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.csv").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        RunFolder.open(tmp_path / "other", settings)


@needs_arrow
def test_pseudonymised_shards_hold_the_pseudonyms_predict_writes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pneumoscan.io import ImageContext
    from pneumoscan.scale.shards import ShardWriter, shard_files, shard_schema
    from pneumoscan.worklist.rows import context_columns

    ctx = ImageContext(patient_id="P-1234", accession="ACC9", study_uid="1.2.3", series_uid="1.2.3.4",
                       sop_uid="1.2.3.4.5", sex="F")
    key = b"0123456789abcdef-site-secret"
    row = {"path": "/x.dcm", **ctx.to_dict(), "probability": 0.3, "_unchanged": False}
    writer = ShardWriter(tmp_path, first_seq=1, shard_rows=1, sample=None, pseudonym_key=key)
    writer.add(pa.Table.from_pylist([row], schema=shard_schema(scorer=True)))
    written = pq.read_table(shard_files(tmp_path)[0]).to_pylist()[0]
    assert {k: written[k] for k in ctx.OUTPUT_KEYS} == context_columns(ctx, key)
    assert "P-1234" not in json.dumps(written)
