"""The server under abuse: what an attacker's inputs and connections cost it, with the hardened defaults and with
the limits opened up as they were before (``--max-pixels 60000000 --memory-budget-mb 1000000``).

Each scenario starts a fresh ``python -m pneumoscan serve`` subprocess on a loopback port (the shipped model) and
measures the server process from outside:

* ``bomb``: one request with a small 16-bit PNG of 59 megapixels; the server's peak RSS growth (VmHWM), status.
* ``many_large``: one request with 16 smooth synthetic 16-bit PNGs of 20 megapixels (a few MB each); peak RSS
  growth and wall time.
* ``half_open``: 200 connections that send nothing, and 20 that trickle their headers; how many the server
  still holds open ``--header-timeout`` + 3 s later (from /proc/PID/fd socket count) and its RSS.
* ``disconnect``: a client uploads 32 full-size films with heatmaps and gives up after 0.5 s; the server's CPU
  seconds over the next 20 s (work for nobody), beside the CPU seconds of the same request served in full.

Writes JSON with the numbers, the settings and the load average before and after. Run on an idle machine:

    python benchmarks/serve_abuse.py --out benchmarks/results/serve_abuse.json
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("serve_load", HERE / "serve_load.py")
serve_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_load)  # type: ignore[union-attr]

LEGACY = ["--max-pixels", "60000000", "--memory-budget-mb", "1000000"]


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def _film(side: int) -> np.ndarray:
    """A smooth 16-bit film-like gradient (no noise, so that 16 of them fit in one 64 MiB request)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = 20000 + 15000 * np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) * 6)
    return np.round(img / 64).astype(np.uint16) * 64


def _server(model: str, extra: list[str], tmp: Path, name: str) -> Any:
    srv = serve_load.Server(model, workers=None, threads=None, log_path=tmp / f"{name}.log", startup_timeout=120)
    srv.cmd += extra
    return srv


def _peak_growth(srv: Any, action: Any) -> tuple[Any, float | None, float]:
    pid = srv.proc.pid
    before = serve_load._proc_status(pid, "VmRSS")
    serve_load._reset_peak_rss(pid)
    t0 = time.perf_counter()
    result = action()
    wall = time.perf_counter() - t0
    peak = serve_load._proc_status(pid, "VmHWM")
    return result, (None if peak is None or before is None else round(peak - before, 1)), round(wall, 2)


def _post(url: str, files: list[tuple[str, bytes]], **params: Any) -> tuple[int, list[str]]:
    import httpx

    r = httpx.post(url + "/api/v1/predict", params=params, timeout=600,
                   files=[("files", (n, d, "application/octet-stream")) for n, d in files])
    body = r.json()
    return r.status_code, [("ok" if x["ok"] else x["error"][:120]) for x in body.get("results", [])]


def _open_sockets(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return n


def bomb(model: str, tmp: Path, extra: list[str]) -> dict[str, Any]:
    data = _png(np.full((7680, 7680), 30000, np.uint16))
    with _server(model, extra, tmp, "bomb") as srv:
        (status, results), growth, wall = _peak_growth(srv, lambda: _post(srv.url, [("bomb.png", data)]))
    return {"file_bytes": len(data), "pixels": 7680 * 7680, "status": status, "results": results,
            "peak_rss_growth_mib": growth, "wall_s": wall}


def many_large(model: str, tmp: Path, extra: list[str], count: int = 16) -> dict[str, Any]:
    one = _png(_film(4472))  # 20.0 megapixels, 16-bit
    files = [(f"film{i}.png", one) for i in range(count)]
    with _server(model, extra, tmp, "many") as srv:
        (status, results), growth, wall = _peak_growth(srv, lambda: _post(srv.url, files))
    return {"files": count, "pixels_each": 4472 * 4472, "request_mib": round(len(one) * count / 2**20, 1),
            "status": status, "ok": results.count("ok"), "errors": sorted(set(r for r in results if r != "ok")),
            "peak_rss_growth_mib": growth, "wall_s": wall}


def half_open(model: str, tmp: Path, header_timeout: float) -> dict[str, Any]:
    with _server(model, ["--header-timeout", str(header_timeout)], tmp, "halfopen") as srv:
        pid = srv.proc.pid
        base = _open_sockets(pid)
        socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(200)]
        trickle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(20)]
        t0 = time.monotonic()
        held_at_start = _open_sockets(pid) - base
        while time.monotonic() - t0 < header_timeout + 3:
            for s in trickle:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass
            time.sleep(0.5)
        held_after = max(0, _open_sockets(pid) - base)
        rss = serve_load._proc_status(pid, "VmRSS")
        for s in socks + trickle:
            s.close()
    return {"connections": 220, "header_timeout_s": header_timeout, "held_right_after_connecting": held_at_start,
            f"held_after_{header_timeout + 3:g}_s": held_after, "server_rss_mib": rss}


def disconnect(model: str, tmp: Path, samples: list[tuple[str, bytes]], give_up_s: float = 0.5) -> dict[str, Any]:
    import httpx

    files = [("files", (n, d, "image/jpeg")) for n, d in samples]
    params = {"heatmap": "true", "preview": "true"}
    with _server(model, [], tmp, "disconnect") as srv:
        pid = srv.proc.pid
        cpu0 = serve_load._cpu_seconds(pid)
        t0 = time.perf_counter()
        httpx.post(srv.url + "/api/v1/predict", params=params, timeout=600, files=files).raise_for_status()
        full_wall = time.perf_counter() - t0
        cpu1 = serve_load._cpu_seconds(pid)
        try:
            httpx.post(srv.url + "/api/v1/predict", params=params, timeout=give_up_s, files=files)
            gave_up = False
        except httpx.TimeoutException:
            gave_up = True
        time.sleep(20)
        cpu2 = serve_load._cpu_seconds(pid)
    return {"files": len(samples), "full_request_wall_s": round(full_wall, 2),
            "full_request_server_cpu_s": round(cpu1 - cpu0, 2), "client_gave_up_after_s": give_up_s,
            "gave_up": gave_up, "server_cpu_s_after_the_client_gave_up": round(cpu2 - cpu1, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=serve_load._default_model())
    parser.add_argument("--header-timeout", type=float, default=5.0,
                        help="the half-open scenario's server --header-timeout (the default server's is 30 s)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_abuse.json")
    args = parser.parse_args(argv)
    import tempfile

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        samples, source = serve_load.load_samples(tmp, count=16)
        samples = (samples * 32)[:32]
        results = {
            "bomb": {"hardened": bomb(args.model, tmp, []), "limits_opened": bomb(args.model, tmp, LEGACY)},
            "many_large": {"hardened": many_large(args.model, tmp, []),
                           "budget_400_mib": many_large(args.model, tmp, ["--memory-budget-mb", "400"]),
                           "limits_opened": many_large(args.model, tmp, LEGACY)},
            "half_open": half_open(args.model, tmp, args.header_timeout),
            "disconnect": disconnect(args.model, tmp, samples) | {"images": source},
        }
    doc = {"benchmark": "serve_abuse", "model": args.model, "results": results,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
