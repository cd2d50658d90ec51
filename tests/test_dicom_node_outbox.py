"""No result lost (``pneumoscan.dicom_node.forward`` and the outbox): the SR and SC wait in the database while the
PACS is down and arrive when it is back, across a SIGKILL and a restart too; SOP Instance UIDs stay the same
across retries; the node knows its own output exactly; a re-sent image is recognised.

The PACS is dcmtk's ``storescp`` (a real peer; the tests that need it skip with a message without it), writing
each object it receives to its own file (``+uf``), so counting files counts deliveries.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from test_dicom_node import (
    NODE_AET,
    PACS_AET,
    SCU_AET,
    RecordingPACS,
    dx_dataset,
    echo,
    free_port,
    rows,
    store_to,
    wait_for,
)

from pneumoscan.dicom_node import DicomNode, ForwardTarget, NodeSettings, Status
from pneumoscan.dicom_out import UID_ROOT, new_uid

STORESCP = shutil.which("storescp")
needs_storescp = pytest.mark.skipif(
    STORESCP is None, reason="dcmtk's storescp not installed (Debian package 'dcmtk'; scripts/test.sh installs it as root)")


class StoreSCP:
    """dcmtk's storescp on ``port``: every object it receives becomes one file in ``folder`` (unique names)."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.log = (folder.parent / f"storescp-{port}.log").open("w")
        self.proc = subprocess.Popen([STORESCP, "-aet", PACS_AET, "-od", str(folder), "+uf", "+xa", str(port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_for(lambda: self.proc.poll() is not None or _listening(port), 10, 0.05), "storescp did not start"
        assert self.proc.poll() is None, (folder.parent / f"storescp-{port}.log").read_text()

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def uids(self) -> list[str]:
        """The SOP Instance UID of every object received (a file still being written is read again)."""
        out = []
        for path in self.files():
            for _ in range(50):
                try:
                    out.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
                    break
                except Exception:  # noqa: BLE001 - written while we read it
                    time.sleep(0.05)
            else:
                raise AssertionError(f"storescp wrote an unreadable file: {path}")
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def store(tmp_path):
    from pneumoscan.store import WorklistStore

    with WorklistStore(str(tmp_path / "worklist.sqlite")) as s:
        yield s


def _node(predictor, store, **kwargs) -> DicomNode:
    settings = NodeSettings(ae_title=NODE_AET, port=0, allow=(SCU_AET,), grace_seconds=5, **kwargs)
    node = DicomNode(predictor, store, settings)
    node.start()
    return node


def _outbox_uids(store, state: str = "delivered") -> set[str]:
    return {i["sop_instance_uid"] for i in store.outbox.items(state, limit=1000)}


# ---------------------------------------------------------------------------------------------- the PACS down


@needs_storescp
def test_pacs_down_while_20_images_arrive_then_up_every_sr_and_sc_arrives_once(predictor, store, tmp_path):
    """The PACS is down while 20 images are scored (each answered success at once); when it starts, all 20 SRs and
    20 SCs arrive, each once, with the SOP Instance UIDs the outbox stored; the worklist says so."""
    port = free_port()
    node = _node(predictor, store, forward=ForwardTarget(PACS_AET, "127.0.0.1", port),
                 forward_retry_seconds=0.05, forward_retry_max_seconds=0.3)
    pacs = None
    try:
        films = [dx_dataset(100 + i) for i in range(20)]
        assert store_to(node.address[1], *films) == [Status.SUCCESS] * 20
        results = rows(store)
        assert len(results) == 20  # stored before each answer: the sender of the images waited for nothing else
        assert store.outbox.counts() == {"pending": 40, "delivered": 0, "failed": 0}
        assert wait_for(lambda: all(r.forward["attempts"] >= 1 for r in rows(store)), 10)
        r = rows(store)[0]
        assert r.forward["state"] == "pending" and "could not be reached" in r.forward["last_error"]
        pacs = StoreSCP(tmp_path / "pacs", port)
        t0 = time.monotonic()
        assert wait_for(lambda: len(pacs.files()) >= 40 and store.outbox.counts()["pending"] == 0, 30), \
            f"{len(pacs.files())} of 40 objects arrived; outbox {store.outbox.counts()}"
        took = time.monotonic() - t0
        time.sleep(0.3)  # anything sent twice would show now
        received = pacs.uids()
    finally:
        node.stop()
        if pacs is not None:
            pacs.stop()
    assert len(received) == 40 and len(set(received)) == 40, "an object arrived twice, or one is missing"
    assert set(received) == _outbox_uids(store)
    assert all(u.startswith(UID_ROOT + ".") for u in received)
    assert store.outbox.counts() == {"pending": 0, "delivered": 40, "failed": 0}
    for r in rows(store):
        assert r.forward["state"] == "delivered" and r.forward["delivered"] == r.forward["objects"] == 2
        assert r.forward["target"] == f"{PACS_AET}@127.0.0.1:{port}"
    assert node.stats.forwarded == 40 and node.stats.forward_failed == 0
    assert took < 10, f"delivered {took:.1f} s after the PACS came back"


@needs_storescp
def test_sigkill_with_results_pending_then_restart_delivers_them_all(tiny_checkpoint, tmp_path):
    """The node (a process) scores 10 images while the PACS is down and is killed with SIGKILL; ``--status``
    shows the 20 objects pending (no patient data); the PACS starts, the node restarts on the same database and
    all 20 arrive."""
    node_port, pacs_port = free_port(), free_port()
    db = tmp_path / "worklist.sqlite"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "pneumoscan", "dicom-listen", "--port", str(node_port), "--ae-title", NODE_AET,
            "--allow", SCU_AET, "--db", str(db), "--model", str(tiny_checkpoint),
            "--forward", f"{PACS_AET}@127.0.0.1:{pacs_port}", "--forward-retry-max", "0.3"]

    def start(log_name: str) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=(tmp_path / log_name).open("w"), stderr=subprocess.STDOUT, env=env)
        up = wait_for(lambda: proc.poll() is not None or echo(node_port), 60, 0.25)
        assert up and proc.poll() is None, (tmp_path / log_name).read_text()
        return proc

    first = start("node-1.log")
    pacs = second = None
    try:
        films = [dx_dataset(200 + i) for i in range(10)]
        assert store_to(node_port, *films) == [Status.SUCCESS] * 10
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        status = subprocess.run([*argv[:4], "--status", "--db", str(db)], capture_output=True, text=True, env=env,
                                timeout=60, check=False)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "20 pending, 0 delivered, 0 failed" in status.stdout, status.stdout
        assert "Doe" not in status.stdout and "P-0200" not in status.stdout
        pacs = StoreSCP(tmp_path / "pacs", pacs_port)
        second = start("node-2.log")
        assert wait_for(lambda: len(pacs.files()) >= 20, 30), f"{len(pacs.files())} of 20 objects arrived"
        time.sleep(0.3)
        received = pacs.uids()
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if pacs is not None:
            pacs.stop()
    log = (tmp_path / "node-2.log").read_text()
    assert "20 result object(s) waiting from before" in log, log
    assert len(received) == 20 and len(set(received)) == 20
    from pneumoscan.store import WorklistStore

    with WorklistStore(db) as store:
        assert set(received) == _outbox_uids(store)
        assert store.outbox.counts() == {"pending": 0, "delivered": 20, "failed": 0}
        assert len(rows(store)) == 10


# ---------------------------------------------------------------------------------------------- retries


class RefusingPACS(RecordingPACS):
    """A PACS that answers 0xA700 (out of resources) to the first ``refuse`` C-STOREs, then stores."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.refused: list[str] = []
        super().__init__()

    def _on_store(self, event) -> int:
        if len(self.refused) < self.refuse:
            self.refused.append(str(event.dataset.SOPInstanceUID))
            return 0xA700
        return super()._on_store(event)


def test_an_object_the_pacs_refuses_is_tried_again_with_the_same_sop_instance_uid(predictor, store):
    pacs = RefusingPACS(refuse=3)
    node = _node(predictor, store, forward=ForwardTarget(PACS_AET, "127.0.0.1", pacs.port),
                 forward_retry_seconds=0.05, forward_retry_max_seconds=0.2)
    try:
        assert store_to(node.address[1], dx_dataset(300)) == [Status.SUCCESS]
        assert wait_for(lambda: len(pacs.received) >= 2, 20), f"refused {len(pacs.refused)}, {pacs.received}"
    finally:
        node.stop()
        pacs.close()
    stored = {str(d.SOPInstanceUID) for d in pacs.received}
    assert len(pacs.received) == 2 and stored == _outbox_uids(store)
    assert set(pacs.refused) <= stored  # every retry sent the object it had sent before
    (r,) = rows(store)
    assert r.forward["state"] == "delivered" and r.forward["attempts"] >= 2


def test_past_the_retention_an_object_is_marked_failed_with_the_reason(predictor, store):
    node = _node(predictor, store, forward=ForwardTarget(PACS_AET, "127.0.0.1", free_port()),
                 forward_retry_seconds=0.05, forward_retry_max_seconds=0.1, forward_retention_hours=0.5 / 3600)
    try:
        assert store_to(node.address[1], dx_dataset(301)) == [Status.SUCCESS]
        assert wait_for(lambda: store.outbox.counts()["failed"] == 2, 15), store.outbox.counts()
    finally:
        node.stop()
    (r,) = rows(store)
    assert r.forward["state"] == "failed"
    assert "within" in r.forward["last_error"] and "could not be reached" in r.forward["last_error"]
    assert node.stats.forward_failed == 2
    (failed, _) = store.outbox.items("failed")
    assert failed["state"] == "failed" and failed["next_attempt"] is None


# ---------------------------------------------------------------------------------------------- own output


def test_own_output_is_known_by_its_uid_never_by_free_text(predictor, store):
    node = _node(predictor, store)
    try:
        # A real film whose text names pneumoscan (a routing rule's description, a vendor's tag) is a film.
        film = dx_dataset(400)
        film.SeriesDescription = "CHEST PA - send to PneumoScan"
        film.Manufacturer = "pneumoscan"
        film.SoftwareVersions = "pneumoscan-router 2"
        assert store_to(node.address[1], film) == [Status.SUCCESS]
        assert [r.sop_uid for r in rows(store)] == [film.SOPInstanceUID]
        # A Secondary Capture under pneumoscan's UID root is its own, whatever its text says.
        own = dx_dataset(401)
        own.SOPClassUID = own.file_meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
        own.SOPInstanceUID = own.file_meta.MediaStorageSOPInstanceUID = new_uid()
        own.Modality, own.Manufacturer, own.SeriesDescription = "OT", "ACME", "chest"
        # A film under the root but of an image class pneumoscan never writes is a film.
        dx_rooted = dx_dataset(402)
        dx_rooted.SOPInstanceUID = dx_rooted.file_meta.MediaStorageSOPInstanceUID = new_uid()
        # An object whose UID the outbox holds is its own (an SC made under another root, say).
        from pneumoscan.result import ModelIdentity, Result
        from pneumoscan.store import OutgoingObject

        known = dx_dataset(403)
        known.SOPClassUID = known.file_meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
        known.Modality = "OT"
        store.add(Result.scored("x", 0.2, ModelIdentity("m", "v", 0.5)), input_sha256="0" * 64, source="dicom",
                  outbox=[OutgoingObject("SC", b"DICM", uid.SecondaryCaptureImageStorage, known.SOPInstanceUID,
                                         uid.ExplicitVRLittleEndian)])
        assert store_to(node.address[1], own, dx_rooted, known) == [Status.SUCCESS] * 3
    finally:
        node.stop()
    assert sorted(r.sop_uid for r in rows(store) if r.sop_uid) == sorted(
        [film.SOPInstanceUID, dx_rooted.SOPInstanceUID])
    assert node.stats.ignored == 2


# ---------------------------------------------------------------------------------------------- resending


def test_a_resent_image_is_answered_from_its_row_and_other_pixels_under_its_uid_are_a_conflict(predictor, store,
                                                                                                caplog):
    pacs = RecordingPACS()
    node = _node(predictor, store, forward=ForwardTarget(PACS_AET, "127.0.0.1", pacs.port),
                 forward_retry_seconds=0.05, forward_retry_max_seconds=0.2)
    try:
        ds = dx_dataset(500)
        assert store_to(node.address[1], ds) == [Status.SUCCESS]
        assert wait_for(lambda: len(pacs.received) >= 2, 20)
        with caplog.at_level(logging.INFO, logger="pneumoscan.dicom_node"):
            assert store_to(node.address[1], ds) == [Status.SUCCESS]  # the same UID and bytes: nothing new
            time.sleep(0.5)
            assert len(rows(store)) == 1 and len(pacs.received) == 2
            assert store.outbox.counts()["delivered"] == 2
            # The same UID, other pixels: scored as a new row marked as a conflict, with a warning.
            other = copy.deepcopy(ds)
            pixels = other.pixel_array.copy()
            pixels[:8, :8] = np.iinfo(pixels.dtype).max - pixels[:8, :8]
            other.PixelData = pixels.tobytes()
            assert store_to(node.address[1], other) == [Status.SUCCESS]
            assert wait_for(lambda: len(pacs.received) >= 4, 20)
        assert len([x for x in caplog.records if "already scored as row" in x.getMessage()]) == 1
        conflict = [x for x in caplog.records if "uid_conflict" in x.getMessage()]
        assert len(conflict) == 1 and conflict[0].levelno == logging.WARNING
        assert "Doe" not in caplog.text
    finally:
        node.stop()
        pacs.close()
    first, second = sorted(rows(store), key=lambda r: r.id)
    assert first.sop_uid == second.sop_uid == ds.SOPInstanceUID and first.input_sha256 != second.input_sha256
    assert (first.uid_conflict, second.uid_conflict) == (False, True)
    assert len({str(d.SOPInstanceUID) for d in pacs.received}) == 4
    assert node.stats.duplicates == 1 and node.stats.scored == 2
    events = [e for e in store.audit(event="result") if e["result_id"] == second.id]
    assert "other pixels" in events[0]["detail"]


def test_status_prints_the_backlog_and_makes_no_database(tmp_path, capsys):
    from pneumoscan.cli import main
    from pneumoscan.result import ModelIdentity, Result
    from pneumoscan.store import OutgoingObject, WorklistStore

    assert main(["dicom-listen", "--status", "--db", str(tmp_path / "none.db")]) == 1
    assert "no worklist database" in capsys.readouterr().err and not (tmp_path / "none.db").exists()
    with WorklistStore(tmp_path / "w.db") as store:
        store.add(Result.scored("x", 0.2, ModelIdentity("m", "v", 0.5)), input_sha256="0" * 64, source="dicom",
                  outbox=[OutgoingObject("SR", b"DICM", uid.Comprehensive3DSRStorage, new_uid(), uid.ExplicitVRLittleEndian),
                          OutgoingObject("SC", error="the source image has no StudyInstanceUID")])
    assert main(["dicom-listen", "--status", "--db", str(tmp_path / "w.db")]) == 0
    out = capsys.readouterr().out
    assert "1 pending, 0 delivered, 1 failed" in out and "oldest pending (1 of 1)" in out
    assert "not made: the source image has no StudyInstanceUID" in out
