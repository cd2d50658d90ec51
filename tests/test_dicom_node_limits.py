"""What a peer may cost the DICOM node (``pneumoscan.dicom_node.guard`` and the limits in ``scp``): oversized PDUs are
dropped unread, silent sockets lock nobody out, associations are limited per peer, every rejection says which
limit refused, and decoding is admitted against the server's memory budget (0xA700 past it)."""

from __future__ import annotations

import io
import logging
import socket
import subprocess
import sys
import threading
import time

import pydicom
import pytest
from imagefactory import dicom_bytes, synthetic_xray
from pydicom import uid
from pynetdicom import AE

from pneumoscan.dicom_node import DicomNode, NodeSettings, Status
from pneumoscan.dicom_node.guard import MAX_REQUEST_PDU, _PduGuard
from pneumoscan.io.budget import BudgetExceeded, BudgetTimeout, MemoryBudget

NODE_AET, SCU_AET = "PNEUMOSCAN", "TESTSCU"
MIB = 1024 * 1024


@pytest.fixture
def store(tmp_path):
    from pneumoscan.store import WorklistStore

    s = WorklistStore(str(tmp_path / "worklist.sqlite"))
    yield s
    s.close()


@pytest.fixture
def start_node(predictor, store):
    nodes = []

    def start(**kwargs) -> DicomNode:
        node = DicomNode(predictor, store, NodeSettings(ae_title=NODE_AET, port=0, allow=(SCU_AET, "OTHERSCU"),
                                                        grace_seconds=5, **kwargs))
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def film(seed: int = 0, side: int = 256) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(side, side, seed=seed))))


def associate(port: int, calling: str = SCU_AET, called: str = NODE_AET):
    ae = AE(ae_title=calling)
    ae.add_requested_context(uid.DigitalXRayImageStorageForPresentation, [uid.ExplicitVRLittleEndian])
    ae.acse_timeout = ae.network_timeout = 5
    return ae.associate("127.0.0.1", port, ae_title=called)


def store_one(port: int, ds: pydicom.Dataset) -> pydicom.Dataset | None:
    assoc = associate(port)
    assert assoc.is_established, "the association was not established"
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def vm(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the peer closed ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


# ---------------------------------------------------------------------------------------------- oversized PDUs


def test_a_pdu_header_declaring_gigabytes_is_dropped_unread(start_node, caplog):
    node = start_node()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = vm("VmHWM")
    with caplog.at_level(logging.WARNING, logger="pneumoscan.dicom_node"):
        sock = socket.create_connection(node.address, timeout=5)
        sock.sendall(bytes([0x01, 0]) + (1536 * MIB).to_bytes(4, "big"))  # an A-ASSOCIATE-RQ of 1.5 GiB
        sent, t0, chunk = 0, time.monotonic(), bytes(MIB)
        try:
            while sent < 256 * MIB and time.monotonic() - t0 < 10:
                sent += sock.send(chunk)
        except OSError:
            pass
        dropped_after = time.monotonic() - t0
        sock.close()
    assert sent < 32 * MIB and dropped_after < 3, (sent, dropped_after)  # what the kernel's buffers took, at most
    assert vm("VmHWM") - base < 64, "the node's memory grew with the PDU"
    assert "A-ASSOCIATE-RQ PDU declares 1,610,612,736 bytes" in caplog.text
    assert store_one(node.address[1], film()).Status == Status.SUCCESS  # and it goes on serving


def test_the_pdu_guard_limits_each_pdu_type():
    class Sock:
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def recv(self, n: int) -> bytearray:
            return bytearray(self.data.read(n))

    def read(pdu_type: int, length: int, established: bool) -> bool:
        assoc = type("Assoc", (), {"is_established": established, "requestor": None,
                                   "dul": type("Dul", (), {"to_user_queue": __import__("queue").Queue()})()})()
        guard = _PduGuard(assoc, Sock(bytes([pdu_type, 0]) + length.to_bytes(4, "big") + bytes(8)), 16382)
        try:
            guard(6)
            guard(min(length, 8))
            return True
        except OSError:
            return False

    assert read(0x01, MAX_REQUEST_PDU, False) and not read(0x01, MAX_REQUEST_PDU + 1, False)
    assert read(0x04, 16382, True) and not read(0x04, 1 << 20, True)
    assert read(0x04, 16382 + 64, True) and not read(0x04, 16382 + 65, True)  # the advertised maximum, plus slack
    assert not read(0x04, MAX_REQUEST_PDU + 1, False)  # before an association: the request's limit
    assert not read(0x07, 1 << 30, True)


# ---------------------------------------------------------------------------------------------- silent sockets


def test_silent_sockets_lock_nobody_out(start_node, caplog):
    node = start_node(association_timeout=1.0)
    silent = [socket.create_connection(node.address, timeout=5) for _ in range(20)]
    try:
        time.sleep(0.2)
        with caplog.at_level(logging.WARNING, logger="pneumoscan.dicom_node"):
            status = store_one(node.address[1], film(1))
        assert status is not None and status.Status == Status.SUCCESS
        assert "--max-associations-per-peer" in caplog.text  # older silent sockets were closed to make room
        # The silent ones still open are closed after --association-timeout.
        assert all(closed_within(s, 3.0) for s in silent)
    finally:
        for s in silent:
            s.close()


def test_associations_are_limited_per_peer_and_each_rejection_says_why(start_node, caplog):
    node = start_node(max_associations_per_peer=2)
    port = node.address[1]
    held = []
    try:
        with caplog.at_level(logging.WARNING, logger="pneumoscan.dicom_node"):
            held = [associate(port) for _ in range(2)]
            assert all(a.is_established for a in held)
            third = associate(port)
            assert third.is_rejected
            assert "too many associations from 127.0.0.1 (2 open; --max-associations-per-peer 2)" in caplog.text
            assert "calling AE TESTSCU" in caplog.text
            assert associate(port, calling="INTRUDER").is_rejected
            assert "calling AE title 'INTRUDER' is not in --allow" in caplog.text
            assert associate(port, called="SOMEONE_ELSE").is_rejected
            assert "called AE title 'SOMEONE_ELSE' is not this node's (PNEUMOSCAN)" in caplog.text
    finally:
        for a in held:
            a.release()
    assert "not in --allow, or not addressed to" not in caplog.text


def test_the_total_association_limit_says_so(start_node, caplog):
    node = start_node(max_associations=1)
    first = associate(node.address[1])
    try:
        assert first.is_established
        with caplog.at_level(logging.WARNING, logger="pneumoscan.dicom_node"):
            assert associate(node.address[1], calling="OTHERSCU").is_rejected
        assert "too many associations open at once (--max-associations 1)" in caplog.text
    finally:
        first.release()


# ---------------------------------------------------------------------------------------------- memory budget


def test_the_node_has_the_servers_pixel_limit_and_memory_budget():
    from pneumoscan.serve import SERVER_MAX_PIXELS, ServeSettings

    settings = NodeSettings()
    assert settings.max_pixels == SERVER_MAX_PIXELS == ServeSettings().max_pixels
    assert settings.memory_budget_bytes == ServeSettings().memory_budget_bytes


def test_a_film_over_the_memory_budget_gets_0xa700_with_a_comment(start_node, store, caplog):
    node = start_node(memory_budget_bytes=24 * MIB)  # a 1000 x 1000 DICOM is estimated at 16 + 32 MB
    with caplog.at_level(logging.WARNING, logger="pneumoscan.dicom_node"):
        big = store_one(node.address[1], film(2, side=1000))
        small = store_one(node.address[1], film(3, side=200))
    assert big.Status == Status.OUT_OF_RESOURCES and "memory budget" in big.ErrorComment
    assert "0xA700" in caplog.text and "--memory-budget-mb" in caplog.text
    assert small.Status == Status.SUCCESS
    assert node._budget.used == 0  # every image gave its share back


def test_concurrent_films_wait_for_the_budget_then_are_all_scored(start_node, predictor, monkeypatch):
    node = start_node(memory_budget_bytes=40 * MIB, budget_wait_seconds=30)  # room for one 600 x 600 film at once
    peak, decoding, lock = [0], [0], threading.Lock()
    real_read = predictor.read

    def read(*args, **kwargs):
        with lock:
            decoding[0] += 1
            peak[0] = max(peak[0], decoding[0])
        try:
            time.sleep(0.3)
            return real_read(*args, **kwargs)
        finally:
            with lock:
                decoding[0] -= 1

    monkeypatch.setattr(predictor, "read", read)
    statuses = []
    threads = [threading.Thread(target=lambda i=i: statuses.append(store_one(node.address[1], film(10 + i, 600))))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(int(s.Status) for s in statuses) == [0, 0, 0]
    assert peak[0] == 1  # admitted one at a time
    assert node._budget.used == 0


def test_memory_budget_from_threads_and_an_event_loop():
    import anyio

    budget = MemoryBudget(100)
    with pytest.raises(BudgetExceeded):
        budget.acquire(101)
    with budget.hold(60):
        with pytest.raises(BudgetTimeout):
            budget.acquire(60, timeout=0.05)
        assert budget.used == 60
    released = threading.Timer(0.2, budget.release, args=(80,))
    budget.acquire(80)
    released.start()

    async def waiter() -> float:  # waits in the event loop for room a thread gives back
        t0 = time.monotonic()
        async with budget.reserve(50):
            return time.monotonic() - t0

    waited = anyio.run(waiter)
    assert 0.1 < waited < 2 and budget.used == 0


# ---------------------------------------------------------------------------------------------- the command


def test_dicom_listen_has_flags_for_its_limits():
    out = subprocess.run([sys.executable, "-m", "pneumoscan", "dicom-listen", "--help"], capture_output=True,
                         text=True, check=True, env={"COLUMNS": "200", **__import__("os").environ}).stdout
    for option in ("--max-associations-per-peer", "--association-timeout", "--max-associations", "--max-pixels",
                   "--memory-budget-mb", "--max-pdu"):
        assert option in out
