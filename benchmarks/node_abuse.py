"""The DICOM node under abuse: what an attacker's data sets and connections cost ``pneumoscan dicom-listen``.

Each run of a scenario starts a fresh ``python -m pneumoscan dicom-listen`` subprocess on a loopback port (the shipped
model, a temporary worklist database) and measures the node process from outside (VmRSS, and VmHWM after resetting
it through /proc/PID/clear_refs):

* ``bomb``: one C-STORE of a Deflated Explicit VR Little Endian data set that is 1 MB on the wire and 1 GiB inflated
  (a 2048 x 2048 DX header, 1 GiB of Pixel Data); the status, its Error Comment, the node's peak RSS growth.
* ``oversized_pdu``: two connections whose first PDU header declares 1.5 GiB (an A-ASSOCIATE-RQ), each then sending
  zeros as fast as the node takes them (at most 1.5 GiB); the bytes the node took, how long until it dropped them,
  its peak RSS growth.
* ``silent_sockets``: an attacker keeps 20 silent TCP connections open, opening them again every ``--reopen`` s
  (sooner than any timeout), while a real sender tries one C-STORE each second for ``--duration`` s; how many were
  answered with success, and the node's threads and RSS.
* ``huge_films``: three C-STOREs at once of 7483 x 7483 16-bit films (56 MP, 112 MB each; under the library's 60 MP
  limit); their statuses, the peak RSS growth, the wall time.
* ``large_films``: three at once of 4472 x 4472 16-bit films (20 MP, 40 MB each; under every limit): the same.

``--src PATH`` runs the node from another source tree (PYTHONPATH), e.g. the last commit's, to measure the code before
a change: ``git archive HEAD | tar -x -C /tmp/old`` then ``--src /tmp/old/src --label before``. Writes JSON with each
run, the medians, the settings and the load average before and after (under ``runs.LABEL``; a run of some scenarios
replaces only theirs):

    python benchmarks/node_abuse.py --out benchmarks/results/node_abuse.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("serve_load", HERE / "serve_load.py")
serve_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_load)  # type: ignore[union-attr]
sys.path.insert(0, str(HERE.parent / "tests"))

NODE_AET, SCU_AET = "PNEUMOSCAN", "BENCH"
MIB = 1024 * 1024


class Node:
    """``python -m pneumoscan dicom-listen`` on a free loopback port, from ``src`` when given."""

    def __init__(self, tmp: Path, name: str, src: str | None, extra: list[str]) -> None:
        self.port = serve_load._free_port()
        self.log_path = tmp / f"{name}.log"
        self.cmd = [sys.executable, "-m", "pneumoscan", "dicom-listen", "--port", str(self.port), "--ae-title",
                    NODE_AET, "--allow", SCU_AET, "--db", str(tmp / f"{name}.sqlite"), *extra]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if src:
            self.env["PYTHONPATH"] = src
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Node:
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited: {serve_load._log_tail(self.log_path)}")
            if "listening on" in self.log_path.read_text(errors="replace") and _echo(self.port):
                return self
            time.sleep(0.3)
        raise RuntimeError(f"the node did not come up: {serve_load._log_tail(self.log_path)}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self, key: str) -> float | None:
        return serve_load._proc_status(self.pid, key)


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


def _store(port: int, path: Path, syntax: str) -> tuple[int | None, str]:
    """C-STORE the file at ``path`` as it is on disk (pynetdicom streams it, nothing decoded); ``(status, comment)``,
    status None when no association or no answer."""
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are: the sender never inflates the bomb
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", [syntax])
    ae.acse_timeout = ae.network_timeout = 10
    ae.dimse_timeout = 300
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return None, "association " + ("rejected" if assoc.is_rejected else "failed")
    try:
        answer = assoc.send_c_store(path)
        if not answer:
            return None, "no answer"
        return int(answer.Status), str(answer.get("ErrorComment", ""))
    finally:
        if assoc.is_established:
            assoc.release()


def _threads(pid: int) -> int:
    """The process's thread count (/proc/PID/status ``Threads``), 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _peak(node: Node, action: Any) -> tuple[Any, dict[str, Any]]:
    before = node.status("VmRSS")
    serve_load._reset_peak_rss(node.pid)
    t0 = time.perf_counter()
    result = action()
    wall = time.perf_counter() - t0
    peak = node.status("VmHWM")
    return result, {"rss_before_mib": before, "peak_rss_mib": peak,
                    "peak_rss_growth_mib": None if peak is None or before is None else round(peak - before, 1),
                    "wall_s": round(wall, 2)}


def _film_file(path: Path, side: int) -> Path:
    """An uncompressed 16-bit DX film of ``side`` x ``side`` (a smooth gradient), written without a copy in memory."""
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.Modality, ds.PatientID, ds.BodyPartExamined, ds.ViewPosition = "DX", "BENCH-0001", "CHEST", "PA"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    row = (np.arange(side, dtype=np.uint32) * 4095 // side).astype(np.uint16)
    ds.PixelData = np.broadcast_to(row, (side, side)).tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


def bomb(tmp: Path, src: str | None, extra: list[str]) -> dict[str, Any]:
    from imagefactory import deflate_bomb_bytes
    from pydicom import uid

    path = tmp / "bomb.dcm"
    if not path.exists():
        path.write_bytes(deflate_bomb_bytes(1 << 30))
    with Node(tmp, "bomb", src, extra) as node:
        (status, comment), peak = _peak(node, lambda: _store(node.port, path, uid.DeflatedExplicitVRLittleEndian))
    return {"file_bytes": path.stat().st_size, "inflated_bytes": 1 << 30,
            "status": None if status is None else f"0x{status:04X}", "comment": comment, **peak}


def oversized_pdu(tmp: Path, src: str | None, extra: list[str], connections: int = 2,
                  declared: int = 1536 * MIB) -> dict[str, Any]:
    sent = [0] * connections
    dropped_after: list[float | None] = [None] * connections

    def attack(i: int, port: int) -> None:
        chunk = bytes(4 * MIB)
        t0 = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(bytes([0x01, 0]) + declared.to_bytes(4, "big"))
                while sent[i] < declared:
                    sent[i] += sock.send(chunk[: declared - sent[i]])
                sock.settimeout(5)  # the whole PDU went in: does the node answer, or drop it?
                sock.recv(1)
        except OSError:
            pass
        dropped_after[i] = round(time.monotonic() - t0, 2)

    with Node(tmp, "pdu", src, extra) as node:
        def run() -> None:
            threads = [threading.Thread(target=attack, args=(i, node.port)) for i in range(connections)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)

        _, peak = _peak(node, run)
        still_serving = _echo(node.port)
    return {"connections": connections, "declared_bytes_each": declared,
            "bytes_taken_mib": [round(s / MIB, 1) for s in sent], "connection_ended_after_s": dropped_after,
            "echo_after": still_serving, **peak}


def silent_sockets(tmp: Path, src: str | None, extra: list[str], sockets: int = 20, reopen_s: float = 8.0,
                   duration_s: float = 30.0) -> dict[str, Any]:
    from pydicom import uid

    film = _film_file(tmp / "small.dcm", 512)
    stop = threading.Event()
    threads_seen: list[float] = []

    def attacker(port: int) -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            for s in held:
                s.close()
            held = []
            for _ in range(sockets):
                try:
                    held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                except OSError:
                    pass
            stop.wait(reopen_s)
        for s in held:
            s.close()

    with Node(tmp, "silent", src, extra) as node:
        attack = threading.Thread(target=attacker, args=(node.port,), daemon=True)
        attack.start()
        time.sleep(1.0)
        answered, tried, outcomes = 0, 0, {}
        t_end = time.monotonic() + duration_s
        while time.monotonic() < t_end:
            tried += 1
            status, comment = _store(node.port, film, uid.ExplicitVRLittleEndian)
            answered += status == 0
            key = "success" if status == 0 else comment or f"0x{status:04X}"
            outcomes[key] = outcomes.get(key, 0) + 1
            threads_seen.append(_threads(node.pid))
            time.sleep(1.0)
        rss = node.status("VmRSS")
        stop.set()
        attack.join(30)
    return {"silent_sockets": sockets, "reopened_every_s": reopen_s, "duration_s": duration_s,
            "real_senders_tried": tried, "real_senders_answered": answered, "outcomes": outcomes,
            "node_threads_max": max(threads_seen or [0]), "node_rss_mib": rss}


def films_at_once(tmp: Path, src: str | None, extra: list[str], side: int, count: int = 3) -> dict[str, Any]:
    from pydicom import uid

    files = [_film_file(tmp / f"film{side}_{i}.dcm", side) for i in range(count)]
    results: list[tuple[int | None, str]] = [(None, "")] * count
    with Node(tmp, f"films{side}", src, extra) as node:
        def run() -> None:
            def one(i: int) -> None:
                results[i] = _store(node.port, files[i], uid.ExplicitVRLittleEndian)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)

        _, peak = _peak(node, run)
    for f in files:
        f.unlink()
    return {"films": count, "pixels_each": side * side, "file_mib_each": round(side * side * 2 / MIB, 1),
            "statuses": [None if s is None else f"0x{s:04X}" for s, _ in results],
            "comments": sorted({c for _, c in results if c}), **peak}


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return round(statistics.median(values), 2) if values else None


SCENARIOS = {
    "bomb": bomb,
    "oversized_pdu": oversized_pdu,
    "silent_sockets": silent_sockets,
    "huge_films": lambda tmp, src, extra: films_at_once(tmp, src, extra, 7483),
    "large_films": lambda tmp, src, extra: films_at_once(tmp, src, extra, 4472),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", help="run the node from this source tree (PYTHONPATH), e.g. the last commit's")
    parser.add_argument("--label", default="after", help="the name of this run in the JSON (e.g. before, after)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each scenario (silent_sockets: one)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--node-args", default="", help="extra dicom-listen flags, e.g. '--max-pixels 60000000'")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "node_abuse.json",
                        help="JSON file; runs under another --label already in it are kept")
    args = parser.parse_args(argv)
    import tempfile

    extra = args.node_args.split()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.scenarios:
            runs = [SCENARIOS[name](tmp, args.src, extra) for _ in range(1 if name == "silent_sockets" else
                                                                       args.repeats)]
            results[name] = {"median_peak_rss_growth_mib": _median(runs, "peak_rss_growth_mib"),
                             "median_peak_rss_mib": _median(runs, "peak_rss_mib"),
                             "median_wall_s": _median(runs, "wall_s"), "runs": runs}
            print(name, json.dumps(results[name]["runs"][-1]), flush=True)
    doc: dict[str, Any] = {}
    if args.out.exists():
        try:
            doc = json.loads(args.out.read_text())
        except ValueError:
            doc = {}
    doc.setdefault("benchmark", "node_abuse")
    entry = doc.setdefault("runs", {}).setdefault(args.label, {"results": {}})
    entry.update({"src": args.src or "this tree", "node_args": extra})
    entry["results"].update(results)  # a rerun of some scenarios keeps the others
    entry.setdefault("machine", {}).update({
        "python": platform.python_version(), "cpus": os.cpu_count(),
        f"loadavg_1_5_15_before_{'_'.join(args.scenarios)}": load_before,
        f"loadavg_1_5_15_after_{'_'.join(args.scenarios)}": os.getloadavg()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
