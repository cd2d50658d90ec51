"""The DICOM node's outbox under a PACS outage (issue #25, "no result lost"): the PACS (dcmtk's ``storescp``) is
down for ``--outage`` seconds (60) while ``--images`` films (20) are sent to ``pneumoscan dicom-listen --forward``
(a process, the shipped model, the default pauses between tries: 1 s doubling to 30 s); then it starts. Measured:
how many SR and SC objects arrive (each received object is its own file), how many twice, and how long after the
PACS came back the last one arrived. Writes JSON to ``--out`` (``benchmarks/results/forward_outage.json``).

    .venv/bin/python benchmarks/forward_outage.py [--outage 60] [--images 20]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NODE_AET, SCU_AET, PACS_AET = "PNEUMOSCAN", "BENCHSCU", "BENCHPACS"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _film(seed: int) -> Any:
    """A DX For Presentation film (a smooth synthetic chest-like picture, 512 x 512, 12 bits) with a study."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:512j, -1:1:512j]
    lungs = np.exp(-((np.abs(x) - 0.45) ** 2 / 0.06 + y ** 2 / 0.5))
    img = (2400 * (1 - 0.6 * lungs) + rng.normal(0, 40, (512, 512))).clip(0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientAge = "Bench^Film", f"B{seed:04d}", "F", "004Y"
    ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = f"A{seed:04d}", "1", "20240315", "101500"
    ds.ReferringPhysicianName, ds.PatientBirthDate = "", ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.PixelData = img.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _send(port: int, ds: Any) -> int:
    from pynetdicom import AE

    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def _echo(port: int) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def _uids(folder: Path) -> list[str]:
    import pydicom

    out = []
    for path in sorted(folder.iterdir()):
        for _ in range(50):
            try:
                out.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
                break
            except Exception:  # noqa: BLE001 - still being written
                time.sleep(0.05)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the PACS is down, from the first image")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=180.0, help="longest wait for delivery after the PACS is up")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "forward_outage.json")
    args = parser.parse_args()
    storescp = shutil.which("storescp")
    if storescp is None:
        print("dcmtk's storescp is not installed (Debian package 'dcmtk')", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pneumoscan-outage-"))
    node_port, pacs_port = _free_port(), _free_port()
    node_log = (work / "node.log").open("w")
    node = subprocess.Popen(
        [sys.executable, "-m", "pneumoscan", "dicom-listen", "--port", str(node_port), "--ae-title", NODE_AET,
         "--allow", SCU_AET, "--db", str(work / "worklist.db"), "--forward", f"{PACS_AET}@127.0.0.1:{pacs_port}"],
        stdout=node_log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    pacs = None
    try:
        deadline = time.monotonic() + 120
        while not _echo(node_port):
            if node.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the node did not start: {(work / 'node.log').read_text()}")
            time.sleep(0.5)
        films = [_film(i) for i in range(args.images)]
        t_first = time.monotonic()
        statuses, answer_s = [], []
        for ds in films:
            t = time.monotonic()
            statuses.append(_send(node_port, ds))
            answer_s.append(time.monotonic() - t)
        t_sent = time.monotonic() - t_first
        time.sleep(max(0.0, args.outage - (time.monotonic() - t_first)))
        (work / "pacs").mkdir()
        pacs = subprocess.Popen([storescp, "-aet", PACS_AET, "-od", str(work / "pacs"), "+uf", "+xa", str(pacs_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        t_up = time.monotonic()
        expected = 2 * args.images
        last_count, t_last = 0, None
        while time.monotonic() - t_up < args.timeout:
            n = len(list((work / "pacs").iterdir()))
            if n != last_count:
                last_count, t_last = n, time.monotonic()
            if n >= expected:
                break
            time.sleep(0.1)
        time.sleep(2.0)  # anything sent twice would show now
        uids = _uids(work / "pacs")
        node.send_signal(signal.SIGTERM)
        node.wait(60)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        if pacs is not None and pacs.poll() is None:
            pacs.terminate()
            pacs.wait(10)
        node_log.close()
    status = subprocess.run([sys.executable, "-m", "pneumoscan", "dicom-listen", "--status", "--db",
                             str(work / "worklist.db")], capture_output=True, text=True, check=False).stdout
    report = {
        "images": args.images, "outage_s": args.outage, "statuses": sorted(set(statuses)),
        "sent_in_s": round(t_sent, 2), "median_answer_s": round(sorted(answer_s)[len(answer_s) // 2], 3),
        "objects_expected": 2 * args.images, "objects_received": len(uids), "distinct_received": len(set(uids)),
        "last_arrived_after_pacs_up_s": round(t_last - t_up, 2) if t_last is not None else None,
        "outbox_after": status.splitlines()[0] if status else "",
        "backoff": "1 s doubling to 30 s (defaults)", "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if len(set(uids)) == 2 * args.images else 1


if __name__ == "__main__":
    raise SystemExit(main())
