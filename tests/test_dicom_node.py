"""The DICOM node (``pneumoscan.dicom_node``): a pynetdicom Storage SCP over a tiny model and a temporary SQLite
worklist, driven by pynetdicom as the SCU; plus ``pneumoscan dicom-listen`` as a process, stopped by SIGTERM."""

from __future__ import annotations

import copy
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pydicom
import pytest
from imagefactory import dicom_bytes, synthetic_xray
from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from pneumoscan.dicom_node import (
    ACCEPTED_SOP_CLASSES,
    DicomNode,
    ForwardTarget,
    NodeSettings,
    Status,
    parse_allow,
    validate_ae_title,
)
from pneumoscan.errors import ConfigError

NODE_AET = "PNEUMOSCAN"
SCU_AET = "TESTSCU"
PACS_AET = "TESTPACS"


# ---------------------------------------------------------------------------------------------- helpers


def dx_dataset(seed: int = 0, *, study_uid: str | None = None) -> pydicom.Dataset:
    """A DX For Presentation film with the patient, study and series a PACS would hold."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(seed=seed))))
    ds.PatientName = "Doe^Jane"
    ds.PatientID = f"P-{seed:04d}"
    ds.PatientBirthDate = "20190101"
    ds.PatientSex = "F"
    ds.PatientAge = "005Y"
    ds.AccessionNumber = f"ACC{seed:04d}"
    ds.StudyInstanceUID = study_uid or uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.StudyID = "1"
    ds.StudyDate = ds.ContentDate = ds.SeriesDate = "20240315"
    ds.StudyTime = ds.ContentTime = "101500"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ReferringPhysicianName = ""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Manufacturer = "ACME"
    return ds


def damaged(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The same film with its pixel stream cut short (the header still promises the whole image)."""
    bad = copy.deepcopy(ds)
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    bad.PixelData = bytes(ds.PixelData[:1000])
    return bad


def store_to(port: int, *datasets: pydicom.Dataset, calling: str = SCU_AET, called: str = NODE_AET) -> list[int]:
    """C-STORE the data sets in one association; returns each status (-1 when none came back).

    Raises:
        AssertionError: the association was not established.
    """
    ae = AE(ae_title=calling)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, f"association from {calling} was not established"
    try:
        return [int(s.Status) if s else -1 for s in (assoc.send_c_store(ds) for ds in datasets)]
    finally:
        assoc.release()


def echo(port: int, calling: str = SCU_AET) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(uid.VerificationSOPClass if hasattr(uid, "VerificationSOPClass") else "1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def rows(store) -> list[SimpleNamespace]:
    """The worklist's results (highest risk first), with attribute access."""
    return [SimpleNamespace(**{**r, **r["context"]}) for r in store.list()]  # the context's keys at the top too


def wait_for(predicate, timeout: float = 15.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingPACS:
    """A pynetdicom Storage SCP that keeps every data set it receives (the PACS the node forwards to)."""

    def __init__(self, ae_title: str = PACS_AET) -> None:
        self.received: list[pydicom.Dataset] = []
        self.callers: list[str] = []
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]

    def _on_store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
            self.callers.append(event.assoc.requestor.ae_title)
        return 0x0000

    def close(self) -> None:
        self.ae.shutdown()


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def store(tmp_path):
    from pneumoscan.store import WorklistStore

    s = WorklistStore(str(tmp_path / "worklist.sqlite"))
    yield s
    close = getattr(s, "close", None)
    if callable(close):
        close()


@pytest.fixture
def pacs():
    p = RecordingPACS()
    try:
        yield p
    finally:
        p.close()


def _node(predictor, store, **kwargs) -> DicomNode:
    settings = NodeSettings(ae_title=NODE_AET, port=0, allow=(SCU_AET, "OTHERSCU"), grace_seconds=10, **kwargs)
    node = DicomNode(predictor, store, settings)
    node.start()
    return node


@pytest.fixture
def node(predictor, store):
    n = _node(predictor, store)
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def forwarding_node(predictor, store, pacs):
    n = _node(predictor, store, forward=ForwardTarget(PACS_AET, "127.0.0.1", pacs.port), forward_retry_seconds=0.2)
    try:
        yield n
    finally:
        n.stop()


# ---------------------------------------------------------------------------------------------- settings


def test_forward_target_and_ae_titles_are_parsed_and_checked():
    assert ForwardTarget.parse("ORTHANC@127.0.0.1:4242") == ForwardTarget("ORTHANC", "127.0.0.1", 4242)
    assert ForwardTarget.parse("PACS@[::1]:104").host == "::1"
    assert str(ForwardTarget.parse("PACS@pacs.example.org:11112")) == "PACS@pacs.example.org:11112"
    for bad in ("ORTHANC", "ORTHANC@host", "@host:1", "A@h:0", "A@h:70000", "TOO_LONG_AE_TITLE_X@h:1"):
        with pytest.raises(ConfigError):
            ForwardTarget.parse(bad)
    assert parse_allow("ORTHANC, DX_ROOM1,,") == ("ORTHANC", "DX_ROOM1")
    assert parse_allow(None) == ()
    for bad in ("", "   ", "A\\B", "X" * 17):
        with pytest.raises(ConfigError):
            validate_ae_title(bad)


def test_listening_off_loopback_needs_an_allow_list():
    with pytest.raises(ConfigError, match="--allow"):
        NodeSettings(host="0.0.0.0").check_exposure()
    NodeSettings(host="0.0.0.0", allow=("ORTHANC",)).check_exposure()
    NodeSettings(host="127.0.0.1").check_exposure()
    NodeSettings(host="localhost").check_exposure()


# ---------------------------------------------------------------------------------------------- the SCP


def test_a_dx_image_is_stored_scored_and_recorded(node, store, caplog):
    ds = dx_dataset(1)
    with caplog.at_level(logging.INFO, logger="pneumoscan.dicom_node"):
        assert store_to(node.address[1], ds) == [Status.SUCCESS]
    (row,) = rows(store)
    assert row.client == SCU_AET
    assert row.source == "dicom"
    assert 0.0 <= row.probability <= 1.0
    assert row.decision in {"PNEUMONIA", "NORMAL", "OUT_OF_SCOPE"}
    assert row.patient_id == "P-0001" and row.accession == "ACC0001" and row.sop_uid == ds.SOPInstanceUID
    assert row.model_version == node.predictor.version
    assert len(row.input_sha256) == 64
    # No patient name, nor the patient ID, in the log lines.
    assert "Doe" not in caplog.text and "P-0001" not in caplog.text
    assert f"from {SCU_AET}" in caplog.text


def test_cr_and_secondary_capture_are_accepted_too(node, store):
    cr, sc = dx_dataset(2), dx_dataset(3)
    cr.SOPClassUID = cr.file_meta.MediaStorageSOPClassUID = uid.ComputedRadiographyImageStorage
    cr.Modality = "CR"
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    sc.Modality = "OT"
    assert store_to(node.address[1], cr, sc) == [Status.SUCCESS, Status.SUCCESS]
    assert len(rows(store)) == 2


def test_the_same_image_sent_twice_is_one_row(node, store, caplog):
    """A PACS re-sending an image (same SOP Instance UID, same bytes) gets success and the result it already has:
    no second row (the resend and other-pixels cases with forwarding are in test_dicom_node_outbox.py)."""
    ds = dx_dataset(4)
    with caplog.at_level(logging.INFO, logger="pneumoscan.dicom_node"):
        assert store_to(node.address[1], ds, ds) == [Status.SUCCESS, Status.SUCCESS]
    (row,) = rows(store)
    assert row.sop_uid == ds.SOPInstanceUID and not row.uid_conflict
    assert node.stats.duplicates == 1 and node.stats.scored == 1
    assert len([line for line in caplog.text.splitlines() if "already scored as row" in line]) == 1


def test_a_calling_ae_title_not_allowed_is_rejected_at_association(node, store, caplog):
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(uid.DigitalXRayImageStorageForPresentation)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.dicom_node"):
        assoc = ae.associate("127.0.0.1", node.address[1], ae_title=NODE_AET)
        assert assoc.is_rejected
        wait_for(lambda: "INTRUDER" in caplog.text, 5)
    assert "INTRUDER" in caplog.text and "rejected" in caplog.text
    assert rows(store) == []


def test_an_association_addressed_to_another_ae_title_is_rejected(node):
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(uid.DigitalXRayImageStorageForPresentation)
    assert ae.associate("127.0.0.1", node.address[1], ae_title="SOMEONE_ELSE").is_rejected


def test_c_echo_answers(node):
    assert echo(node.address[1])


def test_a_structured_report_is_not_accepted(node, store):
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(uid.BasicTextSRStorage)
    ae.add_requested_context(uid.CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title=NODE_AET)
    try:
        assert not assoc.is_established or assoc.accepted_contexts == []
        if assoc.is_established:
            sr = pydicom.Dataset()
            sr.SOPClassUID, sr.SOPInstanceUID = uid.BasicTextSRStorage, uid.generate_uid()
            with pytest.raises(ValueError):  # no presentation context for it: pynetdicom will not send it
                assoc.send_c_store(sr)
    finally:
        if assoc.is_established:
            assoc.release()
    assert rows(store) == []


def _fake_event(node, ds: pydicom.Dataset, request_class: str):
    """A C-STORE event as pynetdicom builds it, for the checks an SCU cannot reach through negotiation."""
    from pynetdicom.dsutils import encode

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    body = encode(ds, False, True)  # Explicit VR Little Endian, as the file above

    def encoded(include_meta: bool = True) -> bytes:
        return buf.getvalue() if include_meta else body

    request = SimpleNamespace(AffectedSOPClassUID=request_class, AffectedSOPInstanceUID=ds.SOPInstanceUID)
    assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title=SCU_AET, address="127.0.0.1"))
    decoded = pydicom.dcmread(io.BytesIO(buf.getvalue()))  # what event.dataset gives: the data set, decoded once
    meta = decoded.file_meta
    del decoded.file_meta
    return SimpleNamespace(request=request, assoc=assoc, encoded_dataset=encoded, dataset=decoded, file_meta=meta)


def test_an_unexpected_sop_class_gets_its_failure_status(node, store):
    ds = dx_dataset(5)
    assert node.handle_store(_fake_event(node, ds, uid.BasicTextSRStorage)) == Status.SOP_CLASS_NOT_SUPPORTED
    # A data set that is not what its C-STORE says it is.
    status = node.handle_store(_fake_event(node, ds, uid.ComputedRadiographyImageStorage))
    assert int(getattr(status, "Status", status)) == Status.DATASET_MISMATCH
    assert rows(store) == []


def test_a_damaged_pixel_stream_fails_and_the_node_keeps_working(node, store, caplog):
    good = dx_dataset(6)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.dicom_node"):
        assert store_to(node.address[1], damaged(good)) == [Status.CANNOT_UNDERSTAND]
    refused = [line for line in caplog.text.splitlines() if "0xC000" in line]
    assert len(refused) == 1 and "Doe" not in refused[0]
    # A garbage compressed stream too (JPEG Baseline the header promises, bytes no decoder reads).
    garbage = pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(), transfer_syntax=uid.JPEGBaseline8Bit)))
    assert store_to(node.address[1], garbage) == [Status.CANNOT_UNDERSTAND]
    assert store_to(node.address[1], good) == [Status.SUCCESS]
    results = rows(store)
    scored = [r for r in results if r.probability is not None]
    assert len(scored) == 1 and scored[0].sop_uid == good.SOPInstanceUID
    assert all(r.error for r in results if r.probability is None)


def test_forward_sends_an_sr_and_an_sc_into_the_source_study(forwarding_node, store, pacs):
    ds = dx_dataset(7)
    assert store_to(forwarding_node.address[1], ds) == [Status.SUCCESS]
    assert wait_for(lambda: len(pacs.received) >= 2, 20), "the SR and SC did not arrive"
    classes = {str(r.SOPClassUID) for r in pacs.received}
    assert any(r.Modality == "SR" for r in pacs.received), classes
    assert uid.SecondaryCaptureImageStorage in classes or any(r.Modality == "OT" for r in pacs.received), classes
    for r in pacs.received:
        assert r.StudyInstanceUID == ds.StudyInstanceUID
        assert r.PatientID == ds.PatientID
        assert r.SeriesInstanceUID != ds.SeriesInstanceUID
    assert set(pacs.callers) == {NODE_AET}
    assert len(rows(store)) == 1


def test_the_nodes_own_results_sent_back_are_not_scored_again(forwarding_node, store, pacs):
    assert store_to(forwarding_node.address[1], dx_dataset(8)) == [Status.SUCCESS]
    assert wait_for(lambda: len(pacs.received) >= 2, 20)
    sc = next(r for r in pacs.received if r.Modality != "SR")
    assert store_to(forwarding_node.address[1], sc) == [Status.SUCCESS]
    time.sleep(0.5)
    assert len(rows(store)) == 1 and len(pacs.received) == 2
    assert forwarding_node.stats.ignored == 1


def test_an_unreachable_pacs_is_logged_and_never_fatal(predictor, store, caplog):
    """The PACS cannot be reached: the results wait in the outbox (pending, with the tries and the reason), the
    node keeps scoring, and nothing is given up before the retention."""
    node = _node(predictor, store, forward=ForwardTarget(PACS_AET, "127.0.0.1", free_port()),
                 forward_retry_seconds=0.1, forward_retry_max_seconds=0.2)
    try:
        with caplog.at_level(logging.WARNING, logger="pneumoscan.dicom_node"):
            assert store_to(node.address[1], dx_dataset(9)) == [Status.SUCCESS]
            assert wait_for(lambda: all((r.forward or {}).get("attempts", 0) >= 2 for r in rows(store)), 20)
        assert "could not be reached" in caplog.text
        assert store_to(node.address[1], dx_dataset(10)) == [Status.SUCCESS]
    finally:
        node.stop(grace_seconds=1)
    results = rows(store)
    assert len(results) == 2 and node.stats.forward_failed == 0
    for r in results:
        assert r.forward["state"] == "pending" and r.forward["objects"] == 2 and r.forward["delivered"] == 0
        assert "could not be reached" in r.forward["last_error"] or r.forward["attempts"] == 0
    assert store.outbox.counts() == {"pending": 4, "delivered": 0, "failed": 0}


def test_stop_lets_an_open_association_finish(node, store):
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(uid.DigitalXRayImageStorageForPresentation, [uid.ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title=NODE_AET)
    assert assoc.is_established
    stopper = threading.Thread(target=node.stop)
    stopper.start()
    time.sleep(0.3)
    try:
        status = assoc.send_c_store(dx_dataset(11))  # in flight when the stop began: still served
        assert status and status.Status == Status.SUCCESS
    finally:
        assoc.release()
    stopper.join(15)
    assert not stopper.is_alive()
    ae2 = AE(ae_title=SCU_AET)
    ae2.add_requested_context(uid.DigitalXRayImageStorageForPresentation)
    ae2.acse_timeout = ae2.network_timeout = 2
    assert not ae2.associate("127.0.0.1", node.address[1], ae_title=NODE_AET).is_established
    assert len(rows(store)) == 1


def test_every_accepted_sop_class_is_an_image_storage_class():
    assert set(ACCEPTED_SOP_CLASSES) == {uid.ComputedRadiographyImageStorage,
                                         uid.DigitalXRayImageStorageForPresentation,
                                         uid.DigitalXRayImageStorageForProcessing, uid.SecondaryCaptureImageStorage}


# ---------------------------------------------------------------------------------------------- the command


def test_dicom_listen_serves_and_stops_on_sigterm(tiny_checkpoint, tmp_path):
    port = free_port()
    db = tmp_path / "worklist.sqlite"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pneumoscan", "dicom-listen", "--port", str(port), "--ae-title", NODE_AET,
         "--allow", SCU_AET, "--db", str(db), "--model", str(tiny_checkpoint)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert wait_for(lambda: proc.poll() is not None or echo(port), 60, 0.5), "the node did not come up"
        assert proc.poll() is None
        assert store_to(port, dx_dataset(12)) == [Status.SUCCESS]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "listening on 127.0.0.1" in out and "SIGTERM" in out and "stopped: 1 received, 1 scored" in out, out
    assert "Doe" not in out
    from pneumoscan.store import WorklistStore

    with WorklistStore(str(db)) as store:
        assert len(rows(store)) == 1


def test_dicom_listen_refuses_a_bad_forward_and_an_exposed_host(capsys):
    from pneumoscan.cli import main

    assert main(["dicom-listen", "--forward", "ORTHANC"]) == 1
    assert "AET@HOST:PORT" in capsys.readouterr().err
    assert main(["dicom-listen", "--host", "0.0.0.0"]) == 1
    assert "--allow" in capsys.readouterr().err


def test_dicom_listen_help_names_its_options():
    out = subprocess.run([sys.executable, "-m", "pneumoscan", "dicom-listen", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for option in ("--port", "--ae-title", "--forward", "--db", "--allow", "--model", "--host"):
        assert option in out


def test_a_received_data_set_is_parsed_once_and_handed_on(node, store, monkeypatch):
    """The node reads ``event.dataset`` (pynetdicom's one decode) and hands it to the decoder, the store and the
    forwarder: no file-format parse of the received bytes, no second encode."""
    import pneumoscan.io.dicom as io_dicom

    ds = dx_dataset(11)
    event = _fake_event(node, ds, str(ds.SOPClassUID))
    parses, encodes = [], []
    real_dcmread, real_encoded = pydicom.dcmread, event.encoded_dataset
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: parses.append(a) or real_dcmread(*a, **k))
    monkeypatch.setattr(io_dicom, "_read_dicom_header", lambda *a, **k: parses.append(a) or None)
    event.encoded_dataset = lambda include_meta=True: encodes.append(include_meta) or real_encoded(include_meta)
    assert node.handle_store(event) == Status.SUCCESS
    assert parses == [] and encodes == [False]  # the raw bytes are hashed; nothing parses them again
    (row,) = rows(store)
    assert row.sop_uid == ds.SOPInstanceUID and row.probability is not None and row.patient_id == ds.PatientID
