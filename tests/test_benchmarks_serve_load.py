"""The pure helpers of ``benchmarks/serve_load.py`` on known inputs (no server is started)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the module imports only the standard library at the top
    return module


def test_percentile_interpolates_like_numpy(bench):
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert bench.percentile(values, 0) == 1
    assert bench.percentile(values, 100) == 100
    assert bench.percentile(values, 50) == pytest.approx(50.5)
    assert bench.percentile(values, 95) == pytest.approx(95.05)
    assert bench.percentile(values, 99) == pytest.approx(99.01)
    assert bench.percentile([3.0, 1.0, 2.0], 50) == 2  # unsorted input
    assert bench.percentile([7.0], 99) == 7
    assert bench.percentile([0.0, 10.0], 25) == pytest.approx(2.5)


def test_percentile_rejects_bad_input(bench):
    with pytest.raises(ValueError):
        bench.percentile([], 50)
    with pytest.raises(ValueError):
        bench.percentile([1.0], 101)


def test_latency_summary_in_ms(bench):
    out = bench.latency_summary([0.010, 0.020, 0.030, 0.040])  # seconds
    assert out == {"p50": 25.0, "p95": 38.5, "p99": 39.7, "mean": 25.0, "min": 10.0, "max": 40.0}
    assert bench.latency_summary([]) == dict.fromkeys(("p50", "p95", "p99", "mean", "min", "max"))


def test_level_summary_counts_errors_and_throughput(bench):
    errors = [f"HTTP 500: boom {i}" for i in range(7)]
    out = bench.level_summary(4, 10, [0.1, 0.2, 0.3], errors, wall_s=2.0)
    assert out["concurrency"] == 4 and out["warmup_requests"] == 10
    assert (out["requests"], out["ok"], out["errors"]) == (10, 3, 7)
    assert out["error_messages"] == errors[: bench.MAX_ERROR_MESSAGES]
    assert out["throughput_rps"] == 5.0
    assert out["latency_ms"]["p50"] == 200.0
    json.dumps(out)  # JSON-ready


def test_check_response(bench):
    good = json.dumps({"results": [{"ok": True, "probability": 0.3}]}).encode()
    assert bench.check_response(200, good) is None
    assert bench.check_response(415, json.dumps({"detail": "not an image"}).encode()) == "HTTP 415: not an image"
    assert bench.check_response(502, b"bad gateway") == "HTTP 502: bad gateway"
    assert "not a predict response" in bench.check_response(200, b"<html>")
    assert "not ok" in bench.check_response(200, json.dumps({"results": [{"ok": False}]}).encode())


def test_query_string(bench):
    assert bench.query_string() == ""
    assert bench.query_string(heatmap=True) == "?heatmap=true"
    assert bench.query_string(heatmap=True, preview=True) == "?heatmap=true&preview=true"
