"""Load on the web app: latency and throughput of POST /api/v1/predict at several concurrency levels.

A real server is started in a subprocess (``python -m pneumoscan serve`` on a free loopback port) with the
shipped model (``$PNEUMOSCAN_MODEL`` or ``src/pneumoscan/assets/model.safetensors``) or ``--model``. Once
``/healthz`` answers, for each concurrency level C (``--concurrency 1 4 8``) the client keeps exactly C
requests in flight (closed loop, C asyncio workers sharing one httpx connection pool) and sends

* ``--warmup`` requests first, not timed (connections, threads and allocator warm up);
* then ``--requests`` timed requests, each a multipart upload of ONE image in the ``files`` field
  (by default no heatmap and no preview, the plain API call; ``--heatmap`` / ``--preview`` add them
  as the web page does).

Per level it records the requests sent, the errors (a status other than 200, a body without an ``ok`` result,
or an exception; the first few messages are kept), latency p50/p95/p99/mean/min/max in ms (client side, from
sending the request to reading the whole response), throughput (timed requests / wall time of the level), the
server's peak RSS during the level (``VmHWM`` of the server process, reset through ``/proc/PID/clear_refs``
before each level where the kernel allows it, otherwise the peak since start) and the server's CPU seconds.

Images: full-resolution JPEGs from ``$PNEUMOSCAN_SAMPLES`` or ``<repo>/../shared/data/fullres_samples`` when
present (request i sends image i mod n, so every level sends the same mix), else synthetic 1500 x 1200 grayscale
JPEGs. They are read into memory once; the client never touches the disk while timing. The client runs on the
same machine as the server, so it takes some CPU from it: compare levels within one run, not across machines.
Medians (p50) are the numbers to quote; this machine is shared and noisy. The exit status is 1 if any request
(warm-up included) failed; the JSON is written either way.

Needs httpx (the ``test`` extra: ``pip install -e '.[test]'``).

    python benchmarks/serve_load.py --requests 200 --concurrency 1 4 8 --out benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MAX_ERROR_MESSAGES = 5


# --- pure helpers (tested in tests/test_benchmarks_serve_load.py) ---------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolated linearly between the closest ranks
    (numpy's default method). Raises ValueError on an empty list or q outside [0, 100]."""
    if not values:
        raise ValueError("percentile of an empty list")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], not {q}")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_summary(seconds: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/mean/min/max in milliseconds (rounded to 0.01 ms) of latencies given in seconds;
    all None when there are none."""
    keys = ("p50", "p95", "p99", "mean", "min", "max")
    if not seconds:
        return dict.fromkeys(keys)
    ms = [1e3 * s for s in seconds]
    values = {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99),
              "mean": sum(ms) / len(ms), "min": min(ms), "max": max(ms)}
    return {k: round(values[k], 2) for k in keys}


def level_summary(concurrency: int, warmup: int, latencies_s: list[float], errors: list[str],
                  wall_s: float) -> dict[str, Any]:
    """One concurrency level's record. ``latencies_s`` holds the successful timed requests only; ``errors``
    one message per failed timed request (the first MAX_ERROR_MESSAGES are kept). Throughput counts every
    timed request, failed or not, over the level's wall time."""
    n = len(latencies_s) + len(errors)
    return {
        "concurrency": concurrency,
        "warmup_requests": warmup,
        "requests": n,
        "ok": len(latencies_s),
        "errors": len(errors),
        "error_messages": errors[:MAX_ERROR_MESSAGES],
        "latency_ms": latency_summary(latencies_s),
        "throughput_rps": round(n / wall_s, 3) if wall_s > 0 else None,
        "wall_s": round(wall_s, 3),
    }


def query_string(heatmap: bool = False, preview: bool = False) -> str:
    """The predict URL's query: '' for the plain API call, else e.g. '?heatmap=true&preview=true'."""
    params = [k for k, on in (("heatmap", heatmap), ("preview", preview)) if on]
    return "?" + "&".join(f"{k}=true" for k in params) if params else ""


def check_response(status: int, body: bytes) -> str | None:
    """None when a one-image predict response is good, else a short message saying what is wrong."""
    if status != 200:
        try:
            detail = str(json.loads(body)["detail"])
        except (ValueError, KeyError, TypeError):
            detail = body.decode("utf-8", "replace")
        return f"HTTP {status}: {detail[:200]}"
    try:
        results = json.loads(body)["results"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"HTTP 200 but not a predict response ({type(exc).__name__}: {exc})"
    if len(results) != 1 or not results[0].get("ok"):
        return f"HTTP 200 but the result is not ok: {json.dumps(results)[:200]}"
    return None


# --- images, server, client -----------------------------------------------------------------------------------

def load_samples(tmp: Path, count: int = 8) -> tuple[list[tuple[str, bytes]], str]:
    """(name, JPEG bytes) of the full-resolution samples, or of ``count`` synthetic 1500 x 1200 grayscale JPEGs
    written under ``tmp`` when there are none; and where they came from."""
    env = os.environ.get("PNEUMOSCAN_SAMPLES", "").strip()
    root = Path(env) if env else REPO.parent / "shared" / "data" / "fullres_samples"
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in (".jpg", ".jpeg"))
        if files:
            return [(p.name, p.read_bytes()) for p in files], str(root)
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        img = np.clip(rng.normal(110, 40, (1200, 1500)), 0, 255).astype(np.uint8)
        path = tmp / f"synthetic_{i}.jpeg"
        Image.fromarray(img).save(path, quality=90)
        out.append((path.name, path.read_bytes()))
    return out, "synthetic 1500x1200 grayscale JPEGs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_status(pid: int, key: str) -> float | None:
    """A ``kB`` field of /proc/PID/status in MiB, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0, same user); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of the process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Server:
    """``python -m pneumoscan serve`` in a subprocess; a context manager that always stops it."""

    def __init__(self, model: str, workers: int | None, threads: int | None, log_path: Path,
                 startup_timeout: float, backend: str | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.cmd = [sys.executable, "-m", "pneumoscan", "serve", "--model", model, "--host", "127.0.0.1",
                    "--port", str(self.port)]
        if workers is not None:
            self.cmd += ["--workers", str(workers)]
        if threads is not None:  # the model's intra-op threads per request, for either backend
            self.cmd += ["--threads", str(threads)]
        if backend is not None:
            self.cmd += ["--backend", backend]
        self.env = dict(os.environ)
        self.proc: subprocess.Popen[bytes] | None = None
        self.health: dict[str, Any] = {}

    def __enter__(self) -> "Server":
        import httpx

        log = open(self.log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=REPO)
        finally:
            log.close()
        try:
            deadline = time.monotonic() + self.startup_timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited with status {self.proc.returncode} before answering "
                                       f"/healthz; its log:\n{_log_tail(self.log_path)}")
                try:
                    r = httpx.get(self.url + "/healthz", timeout=2)
                    if r.status_code == 200:
                        self.health = r.json()
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"/healthz did not answer within {self.startup_timeout:.0f} s; the server's "
                                       f"log:\n{_log_tail(self.log_path)}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGINT (uvicorn's graceful shutdown), then SIGTERM, then SIGKILL; only the process this started."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                proc.send_signal(sig)
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return


async def _send(client: Any, url: str, image: tuple[str, bytes]) -> tuple[float, str | None]:
    """One request; (seconds, None) on success, (seconds, message) on failure."""
    name, data = image
    t0 = time.perf_counter()
    try:
        r = await client.post(url, files=[("files", (name, data, "image/jpeg"))])
        body = r.content
        elapsed = time.perf_counter() - t0
        return elapsed, check_response(r.status_code, body)
    except Exception as exc:  # noqa: BLE001 - every failure is a counted error, never a crash
        return time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"


async def _burst(client: Any, url: str, images: list[tuple[str, bytes]], n: int,
                 concurrency: int) -> tuple[list[float], list[str], float]:
    """n requests with ``concurrency`` in flight; (latencies of the good ones, error messages, wall seconds)."""
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        while (i := next(counter)) < n:
            seconds, error = await _send(client, url, images[i % len(images)])
            if error is None:
                latencies.append(seconds)
            else:
                errors.append(error)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return latencies, errors, time.perf_counter() - t0


async def run_level(server: Server, images: list[tuple[str, bytes]], concurrency: int, requests: int,
                    warmup: int, query: str, timeout: float) -> dict[str, Any]:
    import httpx

    url = server.url + "/api/v1/predict" + query
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        _, warm_errors, _ = await _burst(client, url, images, warmup, concurrency)
        pid = server.proc.pid if server.proc else 0
        reset = _reset_peak_rss(pid)
        cpu0 = _cpu_seconds(pid)
        latencies, errors, wall = await _burst(client, url, images, requests, concurrency)
        cpu1 = _cpu_seconds(pid)
    out = level_summary(concurrency, warmup, latencies, errors, wall)
    out["warmup_errors"] = len(warm_errors)
    out["warmup_error_messages"] = warm_errors[:MAX_ERROR_MESSAGES]
    out["server_peak_rss_mib"] = _proc_status(pid, "VmHWM")
    out["server_peak_rss_scope"] = "this level (VmHWM reset before it)" if reset else "since server start"
    out["server_rss_after_mib"] = _proc_status(pid, "VmRSS")
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_s"] = round(cpu1 - cpu0, 2)
        out["server_cpu_ms_per_request"] = round(1e3 * (cpu1 - cpu0) / max(1, out["requests"]), 1)
    return out


def _default_model() -> str:
    from pneumoscan.inference.predictor import default_model_path

    return str(default_model_path())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4], help="requests in flight; several "
                        "values measure several levels, in the order given (default: 4)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests before each level")
    parser.add_argument("--model", help="checkpoint (.safetensors) or ONNX export (default: $PNEUMOSCAN_MODEL, "
                        "else the shipped model)")
    parser.add_argument("--workers", type=int, help="requests the server scores at once (`pneumoscan serve "
                        "--workers`; default: the CLI's, one per core, at least 2)")
    parser.add_argument("--backend", choices=("onnx", "torch"), help="the server's inference backend "
                        "(`pneumoscan serve --backend`; default: the CLI's, onnx)")
    parser.add_argument("--threads", type=int, help="the model's intra-op threads per request in the server "
                        "(`pneumoscan serve --threads`, ONNX Runtime's or torch's; default: the CLI's, 1)")
    parser.add_argument("--heatmap", action="store_true", help="ask for Grad-CAM heatmaps (?heatmap=true)")
    parser.add_argument("--preview", action="store_true", help="ask for previews (?preview=true)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request before it is an error")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for /healthz")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or any(c < 1 for c in args.concurrency):
        parser.error("--requests and --concurrency must be >= 1 and --warmup >= 0")
    try:
        import httpx
    except ImportError:
        parser.error("this benchmark needs httpx: pip install -e '.[test]'")

    from pneumoscan.utils import atomic_write_text

    # A plain `kill` of this script must still stop the server: turn SIGTERM into SystemExit, which unwinds the
    # `with Server(...)` block.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    model = str(Path(args.model).resolve()) if args.model else _default_model()
    query = query_string(heatmap=args.heatmap, preview=args.preview)
    started = time.time()
    load_before = os.getloadavg()
    levels: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pneumoscan-bench-") as tmpdir:
        tmp = Path(tmpdir)
        images, source = load_samples(tmp)
        with Server(model, args.workers, args.threads, tmp / "server.log", args.startup_timeout,
                    args.backend) as server:
            pid = server.proc.pid if server.proc else 0
            rss_loaded = _proc_status(pid, "VmRSS")
            print(f"server pid {pid} at {server.url}: {server.health}; rss after start {rss_loaded} MiB; "
                  f"{len(images)} images from {source}", flush=True)
            for c in args.concurrency:
                res = asyncio.run(run_level(server, images, c, args.requests, args.warmup, query, args.timeout))
                levels.append(res)
                lat = res["latency_ms"]
                print(f"concurrency {c:3d}: {res['requests']} requests, {res['errors']} errors "
                      f"(+{res['warmup_errors']} in warm-up); latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
                      f"p99 {lat['p99']} ms; {res['throughput_rps']} req/s; server peak rss "
                      f"{res['server_peak_rss_mib']} MiB, cpu {res.get('server_cpu_ms_per_request')} ms/request",
                      flush=True)
            rss_peak_total = _proc_status(pid, "VmHWM")
    sizes = [len(d) for _, d in images]
    doc = {
        "benchmark": "serve_load",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "httpx": httpx.__version__, "loadavg_1_5_15_before": load_before,
                    "loadavg_1_5_15_after": os.getloadavg()},
        "settings": {"requests": args.requests, "concurrency": args.concurrency, "warmup": args.warmup,
                     "model": model, "workers": args.workers, "threads": args.threads, "backend": args.backend,
                     "endpoint": "POST /api/v1/predict" + query, "files_per_request": 1,
                     "timeout_s": args.timeout, "samples": source, "n_samples": len(images),
                     "sample_bytes_mean": round(sum(sizes) / len(sizes)), "server_cmd": server.cmd[1:]},
        "server": {"healthz": server.health, "rss_after_start_mib": rss_loaded,
                   "peak_rss_mib_whole_run": rss_peak_total},
        "note": "closed loop: each level keeps `concurrency` requests in flight; latency is client-side (send to "
                "whole response) over the timed requests that succeeded; throughput = timed requests / the level's "
                "wall time; warm-up requests are excluded. Client and server share the machine's CPUs. Quote p50.",
        "levels": levels,
    }
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    failed = sum(lv["errors"] + lv["warmup_errors"] for lv in levels)
    if failed:
        print(f"{failed} request(s) failed; see error_messages in {args.out}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
