"""Deflated DICOM (``pneumoscan.io.deflated``): inflated with a bound on every path that reads DICOM, a file or an
upload (``pneumoscan.io``), ``POST /api/v1/predict``, the DICOM node's C-STORE and ``pneumoscan predict``.

The bomb is 1 MB on disk and 1 GiB inflated (a small DX header, then 1 GiB of Pixel Data). It is refused with a
message that names the file and the problem, and the peak memory (VmHWM) of the process reading it grows by less
than 300 MiB, measured in a subprocess."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from imagefactory import deflate_bomb_bytes, deflated_dicom_bytes, dicom_bytes, synthetic_xray
from pydicom import uid

from pneumoscan.errors import ImageTooLargeError
from pneumoscan.io import read_image, read_image_context, read_image_info

TESTS = Path(__file__).resolve().parent
MAX_GROWTH_MIB = 300

#: Run first in every measuring subprocess: VmHWM in MiB, and a reset of it (Linux clear_refs 5).
_PRELUDE = '''
import json, sys
sys.path.insert(0, {tests!r})
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
def reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
'''


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    path.write_bytes(deflate_bomb_bytes(1 << 30))
    return path


def _measure(script: str, **values: object) -> dict:
    """Run ``script`` (after the prelude, with ``values`` as globals) in a fresh interpreter; its last stdout line is
    JSON."""
    code = _PRELUDE.format(tests=str(TESTS)) + "".join(f"{k} = {v!r}\n" for k, v in values.items()) + script
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _deflated_file(ds: pydicom.Dataset, *, before_pixels: bytes = b"", after_pixels: bytes = b"") -> bytes:
    """``ds`` as a deflated Part 10 file, with raw elements spliced in before or after its Pixel Data."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    raw = body.getvalue()
    at = raw.find(b"\xe0\x7f\x10\x00")
    raw = raw[:at] + before_pixels + raw[at:] + after_pixels
    zipper = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    return head.getvalue() + zipper.compress(raw) + zipper.flush()


def _zeros_element(tag: bytes, n: int) -> bytes:
    return tag + b"OB\x00\x00" + struct.pack("<I", n) + bytes(n)


# ---------------------------------------------------------------------------------------------- the reader


def test_a_deflated_film_reads_as_the_same_film_uncompressed():
    pixels = synthetic_xray(300, 250)
    deflated, plain = deflated_dicom_bytes(pixels, window=(30000, 40000)), dicom_bytes(pixels, window=(30000, 40000))
    assert pydicom.dcmread(io.BytesIO(deflated)).file_meta.TransferSyntaxUID == uid.DeflatedExplicitVRLittleEndian
    assert np.array_equal(read_image(deflated), read_image(plain))
    assert read_image_info(deflated) == read_image_info(plain)
    assert read_image_context(deflated).patient_id == read_image_context(plain).patient_id == "TEST-0001"


def test_bombs_are_refused_before_they_are_inflated(bomb, tmp_path):
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(300, 250))))
    cases = {
        "pixels.dcm": bomb.read_bytes(),  # Pixel Data that declares 1 GiB for 2048 x 2048 pixels
        "header.dcm": _deflated_file(ds, before_pixels=_zeros_element(b"\x09\x00\x10\x10", 64 << 20)),
        "trailer.dcm": _deflated_file(ds, after_pixels=_zeros_element(b"\xfc\xff\xfc\xff", 64 << 20)),
        "huge.dcm": deflate_bomb_bytes(1 << 20, rows=30000, columns=30000),  # over the pixel limit, from the header
    }
    words = {"pixels.dcm": "Pixel Data element declares", "header.dcm": "header (before the pixel data)",
             "trailer.dcm": "inflates to more than", "huge.dcm": "30000 x 30000 pixels"}
    for name, data in cases.items():
        assert len(data) < 1 << 20, name
        path = tmp_path / name
        path.write_bytes(data)
        for source in (data, path):
            with pytest.raises(ImageTooLargeError) as err:
                read_image(source, name=name)
            assert str(err.value).startswith(f"{name}: ") and words[name] in str(err.value), str(err.value)
    # The header alone is read within its bound too (the server's estimate before the budget).
    assert read_image_info(cases["pixels.dcm"]).width == 2048
    with pytest.raises(ImageTooLargeError, match="header"):
        read_image_info(cases["header.dcm"], name="header.dcm")


# ---------------------------------------------------------------------------------------------- the three paths


def test_serve_refuses_the_bomb_in_bounded_memory(bomb, tiny_checkpoint):
    out = _measure('''
import warnings
warnings.simplefilter("ignore")
from fastapi.testclient import TestClient
from pneumoscan.inference.predictor import Predictor
from pneumoscan.serve import create_app
client = TestClient(create_app(Predictor.from_checkpoint(model)))
data = open(bomb, "rb").read()
reset(); base = hwm()
r = client.post("/api/v1/predict", files=[("files", ("bomb.dcm", data, "application/octet-stream"))])
print(json.dumps({"status": r.status_code, "body": r.json(), "growth": hwm() - base}))
''', bomb=str(bomb), model=str(tiny_checkpoint))
    assert out["status"] == 413, out
    assert "bomb.dcm" in json.dumps(out["body"]) and "deflate" in json.dumps(out["body"]), out
    assert out["growth"] < MAX_GROWTH_MIB, out


def test_the_dicom_node_refuses_the_bomb_in_bounded_memory(bomb, tiny_checkpoint, tmp_path):
    out = _measure('''
from pynetdicom import AE, _config
from pydicom import uid
from pneumoscan.dicom_node import DicomNode, NodeSettings
from pneumoscan.inference.predictor import Predictor
from pneumoscan.store import WorklistStore
_config.STORE_SEND_CHUNKED_DATASET = True  # the sender streams the file as it is (1 MB), never inflating it
node = DicomNode(Predictor.from_checkpoint(model), WorklistStore(db), NodeSettings(port=0, allow=("SCU",)))
node.start()
ae = AE(ae_title="SCU")
ae.add_requested_context(uid.DigitalXRayImageStorageForPresentation, [uid.DeflatedExplicitVRLittleEndian])
assoc = ae.associate("127.0.0.1", node.address[1], ae_title="PNEUMOSCAN")
assert assoc.is_established
reset(); base = hwm()
status = assoc.send_c_store(bomb)
growth = hwm() - base
assoc.release()
node.stop()
print(json.dumps({"status": int(status.Status), "comment": str(status.get("ErrorComment", "")), "growth": growth}))
''', bomb=str(bomb), model=str(tiny_checkpoint), db=str(tmp_path / "worklist.sqlite"))
    assert out["status"] == 0xC000 and "deflated" in out["comment"], out
    assert out["growth"] < MAX_GROWTH_MIB, out


def test_predict_refuses_the_bomb_in_bounded_memory(bomb, tiny_checkpoint):
    out = _measure('''
import contextlib, io as _io
from pneumoscan.cli import main
buf = _io.StringIO()
reset(); base = hwm()
with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
    code = main(["predict", bomb, "--model", model])
print(json.dumps({"code": code, "out": buf.getvalue(), "growth": hwm() - base}))
''', bomb=str(bomb), model=str(tiny_checkpoint))
    assert out["code"] == 1, out
    assert "deflate" in out["out"], out
    assert out["growth"] < MAX_GROWTH_MIB, out


def test_the_dicom_node_scores_a_legitimate_deflated_film(predictor, tmp_path):
    from pynetdicom import AE, _config

    from pneumoscan.dicom_node import DicomNode, NodeSettings, Status
    from pneumoscan.store import WorklistStore

    path = tmp_path / "film.dcm"
    path.write_bytes(deflated_dicom_bytes(synthetic_xray(300, 250)))
    with WorklistStore(str(tmp_path / "worklist.sqlite")) as store:
        node = DicomNode(predictor, store, NodeSettings(port=0, allow=("SCU",)))
        node.start()
        try:
            ae = AE(ae_title="SCU")
            ae.add_requested_context(uid.DigitalXRayImageStorageForPresentation, [uid.DeflatedExplicitVRLittleEndian])
            assoc = ae.associate("127.0.0.1", node.address[1], ae_title="PNEUMOSCAN")
            assert assoc.is_established
            old, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
            try:
                status = assoc.send_c_store(path)
            finally:
                _config.STORE_SEND_CHUNKED_DATASET = old
                assoc.release()
        finally:
            node.stop()
        assert status.Status == Status.SUCCESS
        (row,) = store.list()
        assert row["probability"] is not None and row["context"]["patient_id"] == "TEST-0001"
