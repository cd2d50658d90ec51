"""ONNX export: torch/onnxruntime parity for every model, dynamic batch, metadata round trip, CLI, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from imagefactory import synthetic_xray
from modelfactory import make_checkpoint
from pneumoscan.checkpoint import CheckpointError, load_checkpoint
from pneumoscan.cli import main
from pneumoscan.inference.export import export_onnx, open_onnx_session, read_onnx_metadata
from pneumoscan.inference.predictor import Predictor
from pneumoscan.utils import file_sha256

SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``{model name: (checkpoint, onnx)}`` for the three models at 64 px. BatchNorm statistics are randomised;
    efficientnet-lite0 gets its ImageNet backbone, because from random weights its output hardly depends on the
    input, which would make the comparison empty."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for i, name in enumerate(("seed-cnn", "deep-cnn", "efficientnet-lite0")):
        ckpt = make_checkpoint(root / f"{name}.safetensors", name, SIZE, seed=i, threshold=0.3, temperature=1.3,
                               pretrained=name == "efficientnet-lite0")
        out[name] = (ckpt, export_onnx(ckpt, root / f"{name}.onnx"))
    return out


@pytest.mark.parametrize("name", ["seed-cnn", "deep-cnn", "efficientnet-lite0"])
def test_torch_and_onnxruntime_agree(exported, name):
    ckpt, onnx_path = exported[name]
    eager, ort = Predictor.from_checkpoint(ckpt, backend="torch"), Predictor.from_checkpoint(onnx_path)
    assert (eager.backend, ort.backend) == ("torch", "onnxruntime")
    rng = np.random.default_rng(7)
    for batch in (1, 5):
        films = [rng.integers(0, 256, (SIZE + 9 * k, SIZE + 5 * k), dtype=np.uint8) for k in range(batch)]
        p_torch, p_onnx = eager.predict_proba(films), ort.predict_proba(films)
        assert np.max(np.abs(p_torch - p_onnx)) < 1e-4
        x = eager.network.inputs(films)
        np.testing.assert_allclose(ort.network.runner(x), eager.network.runner(x), rtol=1e-3, atol=1e-4)  # the logits too
    assert np.ptp(eager.network.runner(eager.network.inputs(films))) > 1e-4, "inputs must change the output to test parity"


def test_metadata_round_trip_and_graph(exported, tmp_path):
    ckpt, onnx_path = exported["deep-cnn"]
    assert read_onnx_metadata(onnx_path) == load_checkpoint(ckpt).meta
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert props["pneumoscan_checkpoint_sha256"] == file_sha256(ckpt)  # the export names its checkpoint
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logit", "features"]  # features: for the scope gate and drift
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, SIZE, SIZE]
    p = Predictor.from_checkpoint(onnx_path)
    assert (p.model_name, p.threshold, p.temperature, p.preprocessing.image_size) == ("deep-cnn", 0.3, 1.3, SIZE)
    session, meta = open_onnx_session(onnx_path, threads=1)
    out = session.run(["logit"], {"image": np.zeros((3, 1, SIZE, SIZE), np.float32)})[0]
    assert out.shape == (3, 1) and meta["model"] == "deep-cnn"


def test_onnx_predictor_explains(exported, tmp_path):
    p = Predictor.from_checkpoint(exported["seed-cnn"][1])
    film = synthetic_xray(80, 80, seed=2)
    prob, heat = p.explain(film)
    assert 0 <= prob <= 1 and heat.shape == film.shape and heat.dtype == np.float32
    Image.fromarray(film).save(tmp_path / "x.png")
    (r,) = p.score_files([tmp_path / "x.png"], heatmaps=tmp_path / "h")
    assert r.read and (r.heatmap_path == "" or Path(r.heatmap_path).is_file())


def test_onnx_without_metadata_is_refused(tmp_path, exported):
    proto = onnx.load(str(exported["seed-cnn"][1]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(CheckpointError, match="no pneumoscan metadata"):
        Predictor.from_checkpoint(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(tmp_path / "junk.onnx")


def test_cli_export_and_predict_with_onnx(tmp_path, exported, capsys):
    ckpt = exported["seed-cnn"][0]
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(ckpt), "--onnx", str(out)]) == 0
    assert json.loads(onnx.load(str(out)).metadata_props[0].value)["model"] == "seed-cnn"
    film = tmp_path / "film.png"
    from imagefactory import make_png

    make_png(film, synthetic_xray(100, 90))
    assert main(["predict", str(film), "--model", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["predict", str(film), "--model", str(out), "--heatmaps", str(tmp_path / "h"), "--no-progress"]) == 0
    assert [p.name for p in (tmp_path / "h").iterdir()] == ["film_heatmap.png"]  # the export alone explains
    assert main(["export", "--model", str(out), "--onnx", str(tmp_path / "again.onnx")]) == 2
