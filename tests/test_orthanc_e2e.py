"""End to end against a real PACS: Orthanc sends a film to ``pneumoscan dicom-listen``, which stores the SR and the
SC back into the same study; and dcmtk's ``storescu`` as a sender.

Both need Debian's packages (``orthanc``, ``dcmtk``; ``scripts/test.sh`` installs them when it can) and skip with a
message otherwise. Each test starts its own Orthanc, on free loopback ports with a temporary configuration and
storage, never the system service, and its own node as a process; fixtures stop both whatever happens.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydicom import uid
from test_dicom_node import NODE_AET, dx_dataset, echo, free_port, rows, wait_for

ORTHANC_AET = "ORTHANC"
STORESCU_AET = "STORESCU"


def _which(name: str) -> str | None:
    # Debian puts Orthanc in /usr/sbin, which a non-root PATH often lacks.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


ORTHANC = _which("Orthanc")
STORESCU = _which("storescu")
needs_orthanc = pytest.mark.skipif(
    ORTHANC is None, reason="Orthanc not installed (Debian package 'orthanc'; scripts/test.sh installs it as root)")
needs_storescu = pytest.mark.skipif(
    STORESCU is None, reason="dcmtk's storescu not installed (Debian package 'dcmtk'; scripts/test.sh installs it as root)")


# ---------------------------------------------------------------------------------------------- Orthanc


class Orthanc:
    """One Orthanc process with its own configuration, ports and storage, driven over its REST API."""

    def __init__(self, root: Path, node_port: int) -> None:
        self.root = root
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "pneumoscan-e2e",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET,
            "RemoteAccessAllowed": False,  # loopback only, so no authentication is needed
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomModalities": {"pneumoscan": [NODE_AET, "127.0.0.1", node_port]},
            "DicomScuTimeout": 15,
            "HttpTimeout": 20,
            "StableAge": 1,
        }
        (root / "logs").mkdir(parents=True, exist_ok=True)
        cfg = root / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=2))
        self.proc = subprocess.Popen([ORTHANC, f"--logdir={root / 'logs'}", str(cfg)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not wait_for(lambda: self.proc.poll() is not None or self._up(), 20, 0.2) or self.proc.poll() is not None:
            log = self.log()
            self.stop()
            raise RuntimeError(f"Orthanc did not start: {log}")

    def _up(self) -> bool:
        try:
            return self.get("/system")["DicomPort"] == self.dicom_port
        except (OSError, ValueError, KeyError):
            return False

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": content_type} if body is not None else {})
        with urllib.request.urlopen(req, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str):
        return self.request("GET", path)

    def log(self) -> str:
        logs = sorted((self.root / "logs").glob("Orthanc.log*"))
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in logs[-1:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------- the node process


class NodeProcess:
    """``pneumoscan dicom-listen`` as a process, output kept in a file."""

    def __init__(self, root: Path, checkpoint: Path, port: int, *extra: str) -> None:
        self.port = port
        self.db = root / "worklist.sqlite"
        self.out_path = root / "node.log"
        self._out = self.out_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pneumoscan", "dicom-listen", "--port", str(port), "--ae-title", NODE_AET,
             "--db", str(self.db), "--model", str(checkpoint), *extra],
            stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if not wait_for(lambda: self.proc.poll() is not None or echo(port, calling=extra_allowed(extra)), 60, 0.5) \
                or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"the DICOM node did not start: {self.output()}")

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.out_path.read_text(errors="replace")

    def rows(self) -> list:
        from pneumoscan.store import WorklistStore

        with WorklistStore(str(self.db)) as store:
            return rows(store)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


def extra_allowed(extra: tuple[str, ...]) -> str:
    """A calling AE title the node allows (the first of --allow), for the readiness C-ECHO."""
    args = list(extra)
    return args[args.index("--allow") + 1].split(",")[0] if "--allow" in args else "ECHOSCU"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from modelfactory import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _dicom_file(path: Path, seed: int) -> tuple[Path, object]:
    ds = dx_dataset(seed)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path, ds


# ---------------------------------------------------------------------------------------------- tests


@needs_orthanc
def test_orthanc_sends_a_film_and_gets_the_sr_and_sc_in_the_same_study(tmp_path, checkpoint):
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port)
    node = None
    try:
        node = NodeProcess(tmp_path, checkpoint, node_port, "--allow", ORTHANC_AET,
                           "--forward", f"{ORTHANC_AET}@127.0.0.1:{orthanc.dicom_port}")
        path, ds = _dicom_file(tmp_path / "film.dcm", 21)
        uploaded = orthanc.request("POST", "/instances", path.read_bytes(), "application/dicom")
        study = uploaded["ParentStudy"]
        sent = orthanc.request("POST", "/modalities/pneumoscan/store",
                               json.dumps({"Resources": [uploaded["ID"]], "Synchronous": True}).encode())
        assert sent.get("FailedInstancesCount", 0) == 0, sent

        def arrived() -> dict[str, dict] | None:
            tags = {i: orthanc.get(f"/instances/{i}/simplified-tags")
                    for i in (x["ID"] for x in orthanc.get(f"/studies/{study}/instances"))}
            classes = {t["SOPClassUID"] for t in tags.values()}
            has_sr = any(t.get("Modality") == "SR" for t in tags.values())
            return tags if has_sr and uid.SecondaryCaptureImageStorage in classes else None

        found = wait_for(arrived, 25, 0.5)
        assert found, f"no SR and SC in the study; node log:\n{node.output()}\nOrthanc log:\n{orthanc.log()}"
        for tags in found.values():
            assert tags["StudyInstanceUID"] == ds.StudyInstanceUID and tags["PatientID"] == ds.PatientID
        assert len({t["SeriesInstanceUID"] for t in found.values()}) == 3  # source, SR and SC: three series
        (row,) = node.rows()
        assert row.client == ORTHANC_AET and row.study_uid == ds.StudyInstanceUID
        out = node.output()
    finally:
        rc = node.stop() if node is not None else 0
        orthanc.stop()
    assert rc == 0, out
    assert "Doe" not in out


@needs_storescu
def test_dcmtk_storescu_sends_a_film_and_it_is_recorded(tmp_path, checkpoint):
    port = free_port()
    node = NodeProcess(tmp_path, checkpoint, port, "--allow", STORESCU_AET)
    try:
        path, ds = _dicom_file(tmp_path / "film.dcm", 22)
        run = subprocess.run([STORESCU, "-aet", STORESCU_AET, "-aec", NODE_AET, "127.0.0.1", str(port), str(path)],
                             capture_output=True, text=True, timeout=30, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        # A calling AE title not allowed: the association is rejected and storescu says so.
        refused = subprocess.run([STORESCU, "-aet", "INTRUDER", "-aec", NODE_AET, "127.0.0.1", str(port), str(path)],
                                 capture_output=True, text=True, timeout=30, check=False)
        assert refused.returncode != 0
        assert "reject" in (refused.stdout + refused.stderr).lower()
        (row,) = wait_for(node.rows, 10)
        assert row.client == STORESCU_AET and row.sop_uid == ds.SOPInstanceUID and row.probability is not None
    finally:
        rc = node.stop()
    out = node.output()
    assert rc == 0, out
    assert "stopped: 1 received, 1 scored" in out
