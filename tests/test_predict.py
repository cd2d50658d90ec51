"""Predictor, worklist files and the `predict` command: inputs, thresholds, bad files, outputs, threads."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from imagefactory import (
    dicom_bytes,
    full_range_film,
    jpeg_bytes,
    make_dicom,
    make_jpeg,
    make_png,
    png_bytes,
)
from modelfactory import make_checkpoint
from pneumoscan.inference import backends as backends_mod
from pneumoscan.checkpoint import CheckpointError
from pneumoscan.cli import main
from pneumoscan.io import ImageError
from pneumoscan.inference.predictor import (
    ModelNotFoundError, Predictor, Result, RuntimeOptions, default_model_path,
)
from pneumoscan.constants import DISCLAIMER
from pneumoscan.worklist import CONTEXT_COLUMNS, RESULT_COLUMNS, collect_images, rank, triage, write_results


@pytest.fixture(scope="module")
def films() -> list[np.ndarray]:
    return [full_range_film(s, 100 + 7 * s, 90 + 5 * s) for s in range(12)]


def test_from_checkpoint_exposes_metadata(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", threshold=0.37, temperature=1.7)
    p = Predictor.from_checkpoint(ckpt)  # ONNX Runtime by default, on the checkpoint's export
    assert (p.model_name, p.threshold, p.temperature, p.backend) == ("seed-cnn", 0.37, 1.7, "onnxruntime")
    assert p.preprocessing.image_size == 64 and p.meta["operating_point"]["threshold"] == 0.37
    assert len(p.version) == 12 and int(p.version, 16) >= 0 and p.path == str(ckpt) 
    t = Predictor.from_checkpoint(ckpt, backend="torch")
    assert (t.backend, t.version, t.meta, t.path) == ("torch", p.version, p.meta, p.path)  # same weights, same id


def test_site_provenance_is_exposed_and_a_shipped_model_has_none(tmp_path, predictor, films, capsys):
    from pneumoscan.checkpoint import load_checkpoint, save_checkpoint

    assert predictor.adaptation is None and predictor.site_calibration is None
    src = load_checkpoint(make_checkpoint(tmp_path / "m.safetensors", threshold=0.5))
    adaptation = {"method": "AdaBN", "n_images": 312, "date": "2026-11-26T09:00:00Z",
                  "parent_model_sha256": "e4d5bf9a2f72" + "0" * 52}
    calibration = {"n_images": 104, "date": "2026-11-27T09:00:00+0000", "threshold": 0.5}
    path = save_checkpoint(tmp_path / "site.safetensors", src.state_dict,
                           {**src.meta, "adaptation": adaptation, "site_calibration": calibration,
                            "site_state": "adapted and calibrated"})
    p = Predictor.from_checkpoint(path)
    assert p.adaptation == adaptation and p.site_calibration == calibration
    out = tmp_path / "w.json"
    make_png(tmp_path / "a.png", films[0])
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(path), "--out", str(out), "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert ("Model adapted at this site on 2026-11-26 from 312 films (parent e4d5bf9a2f72); threshold calibrated at "
            "this site on 2026-11-27 on 104 labelled films (threshold 0.500).") in printed
    doc = json.loads(out.read_text())
    assert doc["site_state"] == "adapted and calibrated" and doc["adaptation"] == adaptation
    assert doc["site_calibration"] == calibration


def test_defaults_without_operating_point(tmp_path):
    p = Predictor.from_checkpoint(make_checkpoint(tmp_path / "m.safetensors"))
    assert (p.threshold, p.temperature) == (0.5, 1.0)


def test_missing_or_foreign_model_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Predictor.from_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(tmp_path / "junk.safetensors")


def test_predict_consistent_with_proba_and_threshold(tiny_checkpoint, films):
    probs = Predictor.from_checkpoint(tiny_checkpoint).predict_proba(films)
    assert probs.dtype == np.float64 and probs.shape == (len(films),) and np.all((probs >= 0) & (probs <= 1))
    threshold = float(np.median(probs))
    p = Predictor.from_checkpoint(tiny_checkpoint)
    p.threshold = threshold
    preds = p.predict(films)
    assert all(isinstance(r, Result) for r in preds)
    assert [r.probability for r in preds] == pytest.approx(list(probs), abs=1e-12)
    assert [r.positive for r in preds] == [bool(x >= threshold) for x in probs]
    assert {r.label for r in preds} == {"NORMAL", "PNEUMONIA"}
    assert all(r.threshold == threshold for r in preds)


def test_temperature_divides_the_logit(tmp_path, films):
    p1 = Predictor.from_checkpoint(make_checkpoint(tmp_path / "a.safetensors", seed=3)).predict_proba(films[:4])
    p2 = Predictor.from_checkpoint(make_checkpoint(tmp_path / "b.safetensors", seed=3, temperature=2.0)).predict_proba(films[:4])
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    np.testing.assert_allclose(logit(p2), logit(p1) / 2, rtol=1e-5, atol=1e-6)


def test_same_image_in_every_form_gives_the_same_probability(predictor, tmp_path):
    film = full_range_film(1, 130, 110)
    forms = [film, png_bytes(film), make_png(tmp_path / "a.png", film), str(tmp_path / "a.png"),
             dicom_bytes(film, bits=8), make_dicom(tmp_path / "a.dcm", film, bits=8), bytearray(png_bytes(film))]
    probs = predictor.predict_proba(forms)
    np.testing.assert_allclose(probs, probs[0], atol=1e-6)
    single = predictor.predict_proba(film)  # one image, not a list
    assert single.shape == (1,) and single[0] == pytest.approx(probs[0], abs=1e-6)
    jpeg = predictor.predict_proba([make_jpeg(tmp_path / "a.jpg", film, quality=95), jpeg_bytes(film)])
    np.testing.assert_allclose(jpeg, probs[0], atol=0.05)  # lossy, but close


def test_batch_composition_does_not_change_results(predictor, films):
    together = predictor.predict_proba(films)
    alone = np.array([predictor.predict_proba(f)[0] for f in films])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    stacked = predictor.predict_proba(np.stack([f[:90, :90] for f in films[:3]]))  # (N, H, W) array = N images
    assert stacked.shape == (3,)


def test_bad_inputs_are_refused_clearly(predictor, tmp_path):
    with pytest.raises(ValueError, match="2-D uint8"):
        predictor.predict_proba(np.zeros((80, 80), dtype=np.float32))
    with pytest.raises(ValueError, match="colour"):
        predictor.predict_proba(np.zeros((80, 80, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="not an image"):
        predictor.predict_proba([b"hello, this is text"])
    with pytest.raises(TypeError):
        predictor.predict_proba(42)


def test_concurrent_calls_match_sequential(tiny_checkpoint, films):
    p = Predictor.from_checkpoint(tiny_checkpoint, options=RuntimeOptions(decode_workers=2))
    blobs = [png_bytes(f) for f in films]
    expected = [p.predict_proba([b])[0] for b in blobs]
    expected_heat = [p.explain(f)[1] for f in films[:4]]

    def job(i: int):
        if i % 5 == 0:  # heatmaps while other threads predict through the same model
            k = (i // 5) % 4
            return "explain", k, p.explain(films[k])
        k = i % len(blobs)
        return "proba", k, p.predict_proba([blobs[k], films[(k + 1) % len(films)]])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(job, range(60)))
    for kind, k, value in results:
        if kind == "proba":
            np.testing.assert_allclose(value, [expected[k], expected[(k + 1) % len(films)]], atol=1e-6)
        else:
            prob, heat = value
            assert prob == pytest.approx(expected[k], abs=1e-6)
            np.testing.assert_allclose(heat, expected_heat[k], atol=1e-5)


# ----------------------------------------------------------------------------- files and worklists


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "films"
    (root / "sub" / "deeper").mkdir(parents=True)
    make_png(root / "a.png", full_range_film(1))
    make_jpeg(root / "b.jpeg", full_range_film(2))
    make_dicom(root / "sub" / "c.dcm", full_range_film(3), bits=8)
    make_dicom(root / "sub" / "deeper" / "IM000123", full_range_film(4), bits=8)  # PACS export without an extension
    (root / "broken.png").write_text("this is not a picture")
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpeg").write_bytes(jpeg_bytes(full_range_film(5))[:600])
    (root / "notes.txt").write_text("not an image, skipped")
    make_png(root / ".hidden.png", full_range_film(6))
    return root


def test_collect_images_flat_and_recursive(folder):
    flat = [p.name for p in collect_images([folder])]
    assert flat == ["a.png", "b.jpeg", "broken.png", "empty.jpg", "truncated.jpeg"]
    deep = [p.relative_to(folder).as_posix() for p in collect_images([folder], recursive=True)]
    assert deep == ["a.png", "b.jpeg", "broken.png", "empty.jpg", "sub/c.dcm", "sub/deeper/IM000123",
                    "truncated.jpeg"]
    # explicit files are always kept, duplicates once
    again = collect_images([folder / "notes.txt", folder, folder / "a.png"])
    assert [p.name for p in again][:2] == ["notes.txt", "a.png"] and len(again) == 6


def test_triage_reports_bad_files_and_ranks_the_rest(predictor, folder):
    files = collect_images([folder], recursive=True)
    rows = triage(predictor, files, batch_size=3)
    assert len(rows) == len(files)
    ok = [r for r in rows if not r["error"]]
    bad = [r for r in rows if r["error"]]
    assert len(ok) == 4 and len(bad) == 3 and rows[:4] == ok  # failures last
    assert [r["rank"] for r in ok] == [1, 2, 3, 4]
    assert [r["probability"] for r in ok] == sorted((r["probability"] for r in ok), reverse=True)
    assert all(r["decision"] == ("PNEUMONIA" if r["positive"] else "NORMAL") for r in ok)
    by_name = {Path(r["path"]).name: r for r in bad}
    assert "not an image" in by_name["broken.png"]["error"]
    assert "empty" in by_name["empty.jpg"]["error"]
    assert "damaged" in by_name["truncated.jpeg"]["error"]
    assert all(r["rank"] is None and r["probability"] is None and r["positive"] is None for r in bad)
    expected = predictor.predict_proba([Path(r["path"]) for r in ok])
    np.testing.assert_allclose([r["probability"] for r in ok], expected, atol=1e-6)


def test_score_files_keeps_input_order_and_leaves_ranking_to_the_worklist(predictor, folder):
    files = [folder / "broken.png", folder / "a.png", folder / "b.jpeg"]
    results = predictor.score_files(files, batch_size=2)
    assert [r.source for r in results] == [str(f) for f in files]
    assert results[0].probability is None and "not an image" in results[0].error and results[0].heatmap_path is None
    assert all(r.probability is not None and r.error == "" and r.heatmap_path is None for r in results[1:])
    rows = triage(predictor, files, batch_size=2)
    assert [r["path"] for r in rows[:2]] == [r.source for r in sorted(results[1:], key=lambda r: -r.probability)]
    assert [r["probability"] for r in rows[:2]] == sorted((r.probability for r in results[1:]), reverse=True)


def test_rank_numbers_scored_rows_ties_in_input_order_failures_last():
    rows = [{"id": 0, "probability": 0.2}, {"id": 1, "ok": False}, {"id": 2, "probability": 0.9},
            {"id": 3, "probability": None}, {"id": 4, "probability": 0.2}]
    ordered = rank(rows)
    assert [r["id"] for r in ordered] == [2, 0, 4, 1, 3]
    assert [r.get("rank") for r in rows] == [2, None, 1, None, 3]  # numbered in place; failures untouched


def test_write_results_csv_and_json(predictor, folder, tmp_path):
    rows = triage(predictor, collect_images([folder]))
    csv_path = write_results(rows, tmp_path / "out" / "r.csv",
                             info={"model": predictor.model_name, "model_version": predictor.version})
    with open(csv_path, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == [c for c in RESULT_COLUMNS if c not in ("heatmap", "dicom_out")]
    assert table[0]["disclaimer"] == DISCLAIMER and table[0]["model_version"] == predictor.version
    assert table[0]["score"] == f"{100 * float(table[0]['probability']):.1f}"
    assert all(t[c] == "" for t in table for c in CONTEXT_COLUMNS)  # PNG and JPEG have no DICOM context
    assert [t["rank"] for t in table] == ["1", "2", "", "", ""]
    assert [t["in_scope"] for t in table] == ["true", "true", "", "", ""]
    assert all(t["scope_reason"] == "" for t in table)
    assert table[0]["positive"] in ("true", "false") and table[-1]["positive"] == ""
    assert float(table[0]["probability"]) >= float(table[1]["probability"])
    doc = json.loads(write_results(rows, tmp_path / "r.json", info={"model": "seed-cnn"}).read_text())
    assert doc["disclaimer"] == DISCLAIMER and doc["model"] == "seed-cnn"
    assert [r["rank"] for r in doc["results"]] == [1, 2, None, None, None]
    assert not list(tmp_path.glob("**/*.tmp"))
    with pytest.raises(ValueError, match=".csv or .json"):
        write_results(rows, tmp_path / "r.xlsx")


# ----------------------------------------------------------------------------- default model and CLI


def test_default_model_path(monkeypatch, tmp_path):
    monkeypatch.delenv("PNEUMOSCAN_MODEL", raising=False)
    monkeypatch.setattr(backends_mod, "PACKAGED_MODEL", tmp_path / "assets" / "model.safetensors")
    with pytest.raises(ModelNotFoundError, match="--model"):
        default_model_path()
    ckpt = make_checkpoint(tmp_path / "assets" / "model.safetensors")
    assert default_model_path() == ckpt
    monkeypatch.setenv("PNEUMOSCAN_MODEL", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelNotFoundError, match="PNEUMOSCAN_MODEL"):
        default_model_path()


def test_cli_predict_outputs_and_exit_codes(tiny_checkpoint, folder, tmp_path, capsys, monkeypatch):
    out_csv = tmp_path / "res.csv"
    threads = torch.get_num_threads()
    try:
        assert main(["predict", str(folder), "-r", "--model", str(tiny_checkpoint), "--out", str(out_csv),
                     "--no-progress", "--batch-size", "2", "--threads", "1", "--backend", "torch"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 7 and [r["rank"] for r in rows[:4]] == ["1", "2", "3", "4"]
    printed = capsys.readouterr().out
    assert DISCLAIMER in printed and "4 of 7 image(s) scored" in printed

    # no --out: a table, and JSON via an env-var default model
    monkeypatch.setenv("PNEUMOSCAN_MODEL", str(tiny_checkpoint))
    assert main(["predict", str(folder / "a.png"), str(folder / "broken.png"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "worklist" in printed and "a.png" in printed and "not an image" in printed and DISCLAIMER in printed
    assert main(["predict", str(folder / "a.png"), "--out", str(tmp_path / "r.json"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["rank"] == 1

    # every file bad -> 1; nothing found -> 2; bad --out suffix -> 2
    assert main(["predict", str(folder / "broken.png"), str(folder / "empty.jpg"), "--no-progress"]) == 1
    (tmp_path / "nothing").mkdir()
    assert main(["predict", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert main(["predict", str(folder), "--out", str(tmp_path / "r.txt")]) == 2

    # no model anywhere -> 1 with a message saying what to do
    monkeypatch.delenv("PNEUMOSCAN_MODEL")
    monkeypatch.setattr(backends_mod, "PACKAGED_MODEL", tmp_path / "none" / "model.safetensors")
    capsys.readouterr()
    assert main(["predict", str(folder)]) == 1
    assert "pass --model" in capsys.readouterr().err


def test_prediction_label_and_probabilities_are_finite(predictor, films):
    for r in predictor.predict(films[:3]):
        assert math.isfinite(r.probability) and r.label in ("NORMAL", "PNEUMONIA")


def test_a_heatmap_that_cannot_be_written_fails_only_its_row(predictor, folder, tmp_path, monkeypatch):
    import pneumoscan.inference.render as explain_mod

    real = explain_mod.write_heatmap

    def flaky(out, stem, *args, **kwargs):
        if stem == "b":
            raise OSError(28, "No space left on device")
        return real(out, stem, *args, **kwargs)

    monkeypatch.setattr(explain_mod, "write_heatmap", flaky)
    files = [folder / "a.png", folder / "b.jpeg", folder / "broken.png"]
    rows = {Path(r["path"]).name: r for r in triage(predictor, files, heatmaps=tmp_path / "heat")}
    assert rows["a.png"]["error"] == "" and Path(rows["a.png"]["heatmap"]).is_file()
    b = rows["b.jpeg"]
    assert b["probability"] is not None and b["rank"] in (1, 2) and b["decision"] in ("NORMAL", "PNEUMONIA")
    assert b["heatmap"] == "" and "heatmap could not be written" in b["error"] and "No space" in b["error"]
    assert rows["broken.png"]["probability"] is None and "not an image" in rows["broken.png"]["error"]


def test_any_exception_while_decoding_one_item_becomes_its_error(predictor, folder, monkeypatch, caplog):
    from pneumoscan.inference import files as predict_files

    real = predict_files.read_film

    def buggy(source, *args, **kwargs):
        if str(source).endswith("b.jpeg"):
            raise KeyError("decoder bug")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(predict_files, "read_film", buggy)
    with caplog.at_level("DEBUG", logger="pneumoscan.inference"):
        rows = {Path(r["path"]).name: r for r in triage(predictor, [folder / "a.png", folder / "b.jpeg"])}
    assert rows["a.png"]["error"] == "" and rows["a.png"]["probability"] is not None
    assert rows["b.jpeg"]["probability"] is None and "KeyError" in rows["b.jpeg"]["error"]
    assert any(r.levelname == "DEBUG" and r.exc_info for r in caplog.records)  # the traceback, at DEBUG only
    # arrays go through the same guard: a wrong array is that item's error, not the batch's
    out = [predict_files.decode_item(a, predictor.preprocessing, raise_errors=False)
           for a in (np.zeros((70, 70), np.uint8), np.zeros((70, 70), np.float32))]
    assert isinstance(out[0].square, np.ndarray) and "2-D uint8" in out[1]
    results = predictor.score_files([np.zeros((70, 70), np.uint8), np.zeros((70, 70), np.float32)])
    assert results[0].read and not results[1].read and "2-D uint8" in results[1].error
    with pytest.raises(KeyError):
        predictor.predict_proba([folder / "b.jpeg"])


# ----------------------------------------------------------------------------- what a folder holds


def test_a_symlink_loop_or_broken_link_named_on_the_command_line_gets_a_row(tiny_checkpoint, folder, tmp_path,
                                                                           capsys):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)  # points at itself
    dangling = tmp_path / "gone.png"
    dangling.symlink_to(tmp_path / "missing.png")
    assert collect_images([loop, dangling, folder / "a.png"]) == [loop, dangling, folder / "a.png"]
    out = tmp_path / "r.csv"
    assert main(["predict", str(loop), str(dangling), str(folder / "a.png"), "--model", str(tiny_checkpoint),
                 "--out", str(out), "--no-progress"]) == 0
    with open(out, newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert rows["a.png"]["rank"] == "1" and rows["a.png"]["error"] == ""
    assert "loop of symbolic links" in rows["loop.png"]["error"]
    assert "broken link" in rows["gone.png"]["error"]
    assert "1 of 3 image(s) scored" in capsys.readouterr().out


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """A folder as people's folders are: images, images we cannot read, links, system junk and documents."""
    from PIL import Image

    root = tmp_path / "mixed"
    (root / "sub").mkdir(parents=True)
    (root / ".thumbnails").mkdir()
    make_png(root / "a.png", full_range_film(1))
    make_png(root / "sub" / "deep.png", full_range_film(2))
    make_png(root / ".thumbnails" / "t.png", full_range_film(3))
    Image.fromarray(full_range_film(4)).save(root / "anim.gif")
    Image.fromarray(full_range_film(4)).save(root / "gif-without-extension", format="GIF")
    (root / "photo.webp").write_bytes(b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(32))
    (root / "scan").write_bytes(b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(32))  # WebP by content only
    (root / "film.jp2").write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(32))
    (root / "IMG_0001").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(32))  # HEIC by content only
    (root / "dangling.png").symlink_to(root / "deleted.png")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "._a.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "desktop.ini").write_text("[.ShellClassInfo]")
    (root / "notes.txt").write_text("not an image")
    return root


def test_every_image_like_file_gets_a_row_and_everything_else_is_counted(mixed_folder):
    from pneumoscan.worklist import HIDDEN, OTHER, SUBFOLDER, collect

    got = collect([mixed_folder])
    assert [p.name for p in got.files] == ["IMG_0001", "a.png", "anim.gif", "dangling.png", "film.jp2",
                                           "gif-without-extension", "photo.webp", "scan"]
    kinds = {s.path.name: s.kind for s in got.skipped}
    assert kinds == {".DS_Store": HIDDEN, "._a.png": HIDDEN, ".thumbnails": HIDDEN, "Thumbs.db": HIDDEN,
                     "desktop.ini": HIDDEN, "notes.txt": OTHER, "sub": SUBFOLDER}
    assert got.summary() == ("6 other file(s) in the folders skipped (not images: 5 hidden/system files, 1 other); "
                             "1 sub-folder(s) not searched (use --recursive)")
    deep = collect([mixed_folder], recursive=True)
    assert "sub/deep.png" in [p.relative_to(mixed_folder).as_posix() for p in deep.files]
    assert not [p for p in deep.files if ".thumbnails" in p.parts]  # a hidden folder is one skipped entry
    assert deep.summary() == "6 other file(s) in the folders skipped (not images: 5 hidden/system files, 1 other)"


def test_a_link_back_up_the_tree_is_searched_once(tmp_path):
    from pneumoscan.worklist import collect

    root = tmp_path / "r"
    (root / "sub").mkdir(parents=True)
    make_png(root / "sub" / "x.png", full_range_film(1))
    (root / "sub" / "up").symlink_to(root)  # a cycle through a directory link
    assert [p.relative_to(root).as_posix() for p in collect([root], recursive=True).files] == ["sub/x.png"]


def test_cli_predict_lists_unsupported_and_broken_files_and_counts_the_skipped(tiny_checkpoint, mixed_folder,
                                                                              tmp_path, capsys, caplog):
    out = tmp_path / "r.csv"
    with caplog.at_level("INFO", logger="pneumoscan.worklist"):
        assert main(["-v", "predict", str(mixed_folder), "--model", str(tiny_checkpoint), "--out", str(out),
                     "--no-progress"]) == 0
    with open(out, newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert len(rows) == 8 and rows["a.png"]["rank"] == "1"
    for name in ("anim.gif", "gif-without-extension", "photo.webp", "scan"):
        assert "GIF or WebP" in rows[name]["error"] and "convert it to PNG" in rows[name]["error"], name
    assert "broken link" in rows["dangling.png"]["error"]
    assert rows["film.jp2"]["error"] and rows["IMG_0001"]["error"]
    printed = " ".join(capsys.readouterr().out.split())
    assert "1 of 8 image(s) scored" in printed
    assert "6 other file(s) in the folders skipped (not images: 5 hidden/system files, 1 other)" in printed
    logged = caplog.text
    assert all(n in logged for n in (".DS_Store", "._a.png", "Thumbs.db", "desktop.ini", "notes.txt"))


# ----------------------------------------------------------------------------- outputs checked before the work


def test_cli_predict_checks_its_outputs_before_scoring_anything(tiny_checkpoint, folder, tmp_path, capsys,
                                                               monkeypatch):
    def no_scoring(*args, **kwargs):
        raise AssertionError("an image was scored before the outputs were checked")

    monkeypatch.setattr(Predictor, "score_files", no_scoring)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "dir.csv").mkdir()
    base = ["predict", str(folder / "a.png"), "--model", str(tiny_checkpoint), "--no-progress"]
    cases = [
        (["--out", str(tmp_path / "dir.csv")], "is a folder"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--out", str(a_file / "sub" / "r.csv")], "cannot write into"),
        (["--heatmaps", str(a_file)], "is a file, not a folder"),
        (["--heatmaps", str(a_file / "heat")], "cannot write into"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (extra, err)


def test_cli_predict_never_overwrites_results_without_overwrite(tiny_checkpoint, folder, tmp_path, capsys):
    out, heat = tmp_path / "r.csv", tmp_path / "heat"
    out.write_text("my own notes\n")
    run = ["predict", str(folder / "a.png"), str(folder / "b.jpeg"), "--model", str(tiny_checkpoint),
           "--no-progress", "--out", str(out)]
    assert main(run) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "my own notes\n"
    assert main(run + ["--overwrite", "--heatmaps", str(heat), "--save-raw"]) == 0
    assert out.read_text().startswith("rank,") and len(list(heat.glob("*_heatmap.*"))) == 4
    stamp = {p: p.stat().st_mtime_ns for p in heat.iterdir()}
    capsys.readouterr()
    assert main(run[:-2] + ["--heatmaps", str(heat)]) == 2  # no --out: only the heatmaps would clash
    err = capsys.readouterr().err
    assert "2 heatmap file(s) would replace existing ones" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in heat.iterdir()} == stamp
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    stale = heat / f".a_heatmap.png.{dead}.0badc0de.tmp"  # an overlay write killed half-way
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    assert main(run[:-2] + ["--heatmaps", str(heat), "--overwrite"]) == 0
    assert not stale.exists()
    assert main(["predict", "--help"]) == 0 and "--overwrite" in capsys.readouterr().out


def test_csv_worklist_cells_never_start_like_a_formula(tmp_path):
    rows = [
        {"rank": 1, "path": "=HYPERLINK(\"http://x\")|.png", "probability": 0.9, "decision": "PNEUMONIA",
         "positive": True, "threshold": 0.5, "error": ""},
        {"rank": None, "path": "-cmd.png", "probability": None, "decision": "", "positive": None, "threshold": 0.5,
         "error": "@bad: +reason"},
        {"rank": None, "path": "\tx.png", "probability": None, "decision": "", "positive": None, "threshold": 0.5,
         "error": "-1 side"},
    ]
    out = write_results(rows, tmp_path / "r.csv")
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [t["path"] for t in table] == ["'=HYPERLINK(\"http://x\")|.png", "'-cmd.png", "'\tx.png"]
    assert [t["error"] for t in table] == ["", "'@bad: +reason", "'-1 side"]
    assert table[0]["probability"] == "0.900000" and table[0]["rank"] == "1"  # numbers stay numbers
    for t in table:
        assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in t.values())
    doc = json.loads(write_results(rows, tmp_path / "r.json").read_text())
    assert doc["results"][1]["path"] == "-cmd.png"  # JSON is data, not a spreadsheet: unchanged


# ----------------------------------------------------------------------------- the scope gate in `predict`


@pytest.fixture
def with_blank(tmp_path) -> Path:
    """Two films, a flat gray square (refused by the pixel rules even without a reference) and a broken file."""
    root = tmp_path / "mixed-scope"
    root.mkdir()
    make_png(root / "a.png", full_range_film(1))
    make_png(root / "b.png", full_range_film(2))
    make_png(root / "blank.png", np.full((120, 100), 128, np.uint8))
    (root / "broken.png").write_text("not a picture")
    return root


def test_cli_predict_lists_an_out_of_scope_image_as_not_assessed_after_the_scored_ones(tiny_checkpoint, with_blank,
                                                                                      tmp_path, capsys, monkeypatch):
    from pneumoscan.gate.scope import pixel_reason

    assert pixel_reason(np.full((64, 64), 128, np.uint8)) == "blank or uniform image"
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    assert main(["predict", str(with_blank), "--model", str(tiny_checkpoint), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    blank_line = next(line for line in printed.splitlines() if "blank.png" in line)
    cells = blank_line.strip().split("  ")  # (no rank) path, score, decision, note: cells 2+ spaces apart
    cells = [c.strip() for c in cells if c.strip()]
    assert blank_line.startswith(" ") and cells[0].endswith("blank.png")  # no rank
    assert cells[1:] == ["–", "Not assessed (out of scope)", "blank or uniform image"]  # no probability as a risk
    assert "flagged at 50.0 or above" in printed  # the threshold, once, in the table's title
    lines = printed.splitlines()
    order = [next(i for i, line in enumerate(lines) if name in line) for name in ("blank.png", "broken.png")]
    assert all(i > max(j for j, line in enumerate(lines) if "a.png" in line or "b.png" in line) for i in order)
    assert order[0] < order[1]
    summary = " ".join(printed.split())
    assert "2 of 4 image(s) scored" in summary and "Not assessed (out of scope): 1; Could not be read: 1" in summary
    assert "Drift check" not in summary  # no reference, fewer than 50 images: nothing said

    out = tmp_path / "r.csv"
    assert main(["predict", str(with_blank), "--model", str(tiny_checkpoint), "--no-progress", "--out", str(out)]) == 0
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [Path(t["path"]).name for t in table][2:] == ["blank.png", "broken.png"]
    assert [t["rank"] for t in table] == ["1", "2", "", ""]
    blank = table[2]
    assert (blank["decision"], blank["positive"], blank["in_scope"], blank["scope_reason"]) == (
        "OUT_OF_SCOPE", "false", "false", "blank or uniform image")
    assert 0.0 <= float(blank["probability"]) <= 1.0  # kept for audit
    assert [t["in_scope"] for t in table] == ["true", "true", "false", ""]

    out_json = tmp_path / "r.json"
    assert main(["predict", str(with_blank), "--model", str(tiny_checkpoint), "--no-progress", "--out",
                 str(out_json)]) == 0
    doc = json.loads(out_json.read_text())
    assert doc["drift"] is None and "no reference" in doc["drift_reason"]
    assert (doc["n_files"], doc["n_in_scope"], doc["n_out_of_scope"], doc["n_unreadable"]) == (4, 2, 1, 1)
    assert doc["adult_age_years"] == 18.0
    blank = doc["results"][2]
    assert blank["decision"] == "OUT_OF_SCOPE" and blank["rank"] is None and blank["in_scope"] is False


def test_cli_predict_only_out_of_scope_images_still_exits_0(tiny_checkpoint, with_blank, capsys):
    assert main(["predict", str(with_blank / "blank.png"), "--model", str(tiny_checkpoint), "--no-progress"]) == 0
    assert "0 of 1 image(s) scored; Flagged: possible pneumonia: 0" in " ".join(capsys.readouterr().out.split())


def test_cli_predict_adult_age_sets_the_cut_off(tiny_checkpoint, tmp_path, capsys):
    import pydicom

    ds = pydicom.dcmread(make_dicom(tmp_path / "teen.dcm", full_range_film(3), bits=8))
    ds.PatientAge = "016Y"
    ds.save_as(tmp_path / "teen.dcm")
    base = ["predict", str(tmp_path / "teen.dcm"), "--model", str(tiny_checkpoint), "--no-progress", "--out"]
    assert main(base + [str(tmp_path / "a.json")]) == 0
    row = json.loads((tmp_path / "a.json").read_text())["results"][0]
    assert row["in_scope"] is True and row["decision"] in ("NORMAL", "PNEUMONIA")
    assert main(base + [str(tmp_path / "b.json"), "--adult-age", "16"]) == 0
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["adult_age_years"] == 16.0
    row = doc["results"][0]
    assert row["in_scope"] is False and row["decision"] == "OUT_OF_SCOPE" and row["rank"] is None
    assert row["scope_reason"] == "adult patient (DICOM PatientAge 016Y)"
    capsys.readouterr()
    assert main(base + [str(tmp_path / "c.json"), "--adult-age", "0"]) == 2
    assert "--adult-age" in capsys.readouterr().err and not (tmp_path / "c.json").exists()


# ----------------------------------------------------------------------------- DICOM context and results out


def _pacs_dicom(path: Path, seed: int, **tags: object) -> Path:
    """A synthetic 8-bit DX film with the patient, study and series tags a PACS sets (``tags`` add or override)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(make_dicom(path, full_range_film(seed), bits=8))
    values = {"PatientName": "Doe^Jane", "PatientID": "MRN-1", "PatientAge": "004Y", "PatientSex": "F",
              "AccessionNumber": "ACC-1", "StudyDate": "20240301", "ViewPosition": "PA", "BodyPartExamined": "CHEST",
              "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), **tags}
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


@pytest.fixture
def pacs_folder(tmp_path) -> Path:
    """A PNG, an in-scope DICOM, an adult's DICOM (out of scope), a DICOM without study UIDs and a broken .dcm."""
    root = tmp_path / "pacs"
    root.mkdir()
    make_png(root / "a.png", full_range_film(1))
    _pacs_dicom(root / "film.dcm", 3)
    _pacs_dicom(root / "adult.dcm", 4, PatientAge="045Y", PatientID="MRN-2", PatientName="Roe^Richard")
    make_dicom(root / "nostudy.dcm", full_range_film(5), bits=8)  # no StudyInstanceUID: no study to place a result in
    (root / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 50)
    return root


def test_cli_predict_dicom_out_writes_sr_and_sc_for_each_dicom_input(tiny_checkpoint, pacs_folder, tmp_path, capsys,
                                                                    caplog):
    import logging

    import highdicom as hd
    import pydicom

    out, dicom_dir = tmp_path / "w.csv", tmp_path / "dicom-out"
    with caplog.at_level(logging.DEBUG):
        code = main(["-v", "predict", str(pacs_folder), "--model", str(tiny_checkpoint), "--no-progress", "--out",
                     str(out), "--dicom-out", str(dicom_dir)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = " ".join(printed.out.split())
    assert "DICOM results: 2 SR and 2 SC file(s) written to" in summary
    assert "1 non-DICOM input(s) skipped" in summary and "1 unreadable DICOM input(s) skipped" in summary
    assert "1 failed (e.g. nostudy.dcm: the source image has no StudyInstanceUID" in summary
    for text in (printed.out, printed.err, caplog.text, out.read_text()):
        assert "Doe" not in text and "Roe^" not in text and "Richard" not in text  # names: never

    with open(out, newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    film, adult = rows["film.dcm"], rows["adult.dcm"]
    assert (film["patient_id"], film["accession"], film["age"], film["sex"], film["view"], film["study_date"]) == (
        "MRN-1", "ACC-1", "004Y", "F", "PA", "20240301")
    assert adult["decision"] == "OUT_OF_SCOPE" and adult["age"] == "045Y"
    assert all(rows["a.png"][c] == "" for c in CONTEXT_COLUMNS) and rows["a.png"]["dicom_out"] == ""
    assert rows["nostudy.dcm"]["probability"] and "DICOM results not written" in rows["nostudy.dcm"]["error"]
    assert rows["nostudy.dcm"]["patient_id"] == "TEST-0001"

    source = pydicom.dcmread(pacs_folder / "film.dcm")
    assert film["study_uid"] == source.StudyInstanceUID and film["sop_uid"] == source.SOPInstanceUID
    sr_path, sc_path = (Path(p) for p in film["dicom_out"].split(";"))
    assert sorted(p.name for p in dicom_dir.iterdir()) == sorted(
        Path(p).name for r in (film, adult) for p in r["dicom_out"].split(";"))
    sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert (ds.PatientID, str(ds.PatientName), ds.PatientAge) == ("MRN-1", "Doe^Jane", "004Y")
    group, = hd.sr.srread(sr_path).content.get_image_measurement_groups()
    probability = next(m for m in group.get_measurements() if m.name.meaning == "Pneumonia probability")
    assert probability.value == pytest.approx(float(film["probability"]), abs=1e-6)
    assert sc.BurnedInAnnotation == "YES" and sc.ImageComments == (  # the result's one wording
        f"{film['decision_text']}. Score {film['score']} / 100 (threshold {film['score_threshold']}; "
        f"{film['score_calibration']}). Decision support, not a diagnosis.")
    assert film["score_calibration"] == "calibrated on the training hospital's validation films"
    adult_sc = pydicom.dcmread(adult["dicom_out"].split(";")[1])
    assert adult_sc.ImageComments.startswith("Not assessed (out of scope): adult patient (DICOM PatientAge 045Y)")


def test_cli_predict_pseudonymise_needs_a_secret_and_hides_identifiers(tiny_checkpoint, pacs_folder, tmp_path, capsys,
                                                                      monkeypatch):
    import pydicom

    from pneumoscan.pseudonym import KEY_ENV_VAR, pseudonymise, pseudonymise_uid

    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    film = pacs_folder / "film.dcm"
    base = ["predict", str(film), "--model", str(tiny_checkpoint), "--no-progress"]
    assert main(base + ["--pseudonymise"]) == 2
    err = capsys.readouterr().err
    assert "site secret" in " ".join(err.split()) and "token_hex" in err
    assert main(base + ["--secret-file", str(tmp_path / "x.key")]) == 2  # a secret without --pseudonymise
    capsys.readouterr()

    key = "a test site secret, not for use"
    secret = tmp_path / "site.key"
    secret.write_text(key + "\n")
    secret.chmod(0o600)
    outputs = []
    for n, how in enumerate((["--secret-file", str(secret)], [])):
        if not how:
            monkeypatch.setenv(KEY_ENV_VAR, key)
        out, dicom_dir = tmp_path / f"w{n}.json", tmp_path / f"dicom{n}"
        assert main(base + ["--pseudonymise", *how, "--out", str(out), "--dicom-out", str(dicom_dir)]) == 0
        doc = json.loads(out.read_text())
        assert doc["pseudonymised"] is True
        outputs.append(doc["results"][0])
        written = [pydicom.dcmread(p) for p in doc["results"][0]["dicom_out"]]
        source = pydicom.dcmread(film)
        for ds in written:
            assert ds.PatientID == pseudonymise("MRN-1", key) and "Doe" not in str(ds.PatientName)
            assert ds.StudyInstanceUID == pseudonymise_uid(source.StudyInstanceUID, key)
        raw = out.read_text() + "".join(Path(p).read_bytes().decode("latin-1") for p in doc["results"][0]["dicom_out"])
        for secret_text in ("MRN-1", "ACC-1", "Doe", source.StudyInstanceUID, source.SOPInstanceUID):
            assert secret_text not in raw
    first, second = outputs
    assert first["patient_id"] == second["patient_id"] == pseudonymise("MRN-1", key)  # same key: same pseudonyms
    assert first["accession"] == pseudonymise("ACC-1", key) and first["study_uid"] == second["study_uid"]
    assert first["age"] == "004Y" and first["view"] == "PA"
