"""The server once it leaves localhost: authentication, exposure check, timeouts, cancellation, memory budget,
owner-only uploads with retention, and no client file names in the logs."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import threading
import time
import warnings
from pathlib import Path

import httpx
import pytest
import uvicorn
from imagefactory import dicom_bytes, png_bytes, synthetic_xray, xray_jpeg

from pneumoscan.config import ConfigError
from pneumoscan.serve import ServeSettings, create_app, uvicorn_config
from pneumoscan.serve.security import (
    MIN_TOKEN_LENGTH,
    TOKEN_ENV_VAR,
    check_exposure,
    is_loopback,
    load_token,
    log_id,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token-for-tests-0123456789"


def _files(*pairs):
    return [("files", (name, data, "application/octet-stream")) for name, data in pairs]


def _damaged_dicom() -> bytes:
    """A valid explicit-VR DICOM whose Rows element has a junk VR (pydicom: NotImplementedError on access)."""
    data = bytearray(dicom_bytes(synthetic_xray(200, 180), bits=8))
    i = data.find(b"\x28\x00\x10\x00US")
    data[i + 4:i + 6] = b"ZZ"
    return bytes(data)


# --------------------------------------------------------------------------- one bad file never costs the others


def test_damaged_dicom_beside_good_jpeg_gives_200_with_one_result_and_one_error(predictor):
    client = TestClient(create_app(predictor))
    r = client.post("/api/v1/predict", files=_files(("bad.dcm", _damaged_dicom()), ("good.jpeg", xray_jpeg())))
    assert r.status_code == 200, r.text
    bad, good = r.json()["results"]
    assert bad["ok"] is False and bad["error"].startswith("bad.dcm: ") and "Value Representation" in bad["error"]
    assert good["ok"] is True and 0.0 <= good["probability"] <= 1.0 and good["rank"] == 1


class _Exploding:
    """A predictor whose model fails on one particular image size (an unexpected, non-image error)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def assess(self, film, **kwargs):
        if film.gray.shape == (301, 241):
            raise RuntimeError("model blew up")
        return self._inner.assess(film, **kwargs)


def test_an_unexpected_error_is_that_files_entry_only(predictor):
    client = TestClient(create_app(_Exploding(predictor)))
    r = client.post("/api/v1/predict", files=_files(("odd.jpeg", xray_jpeg(h=301, w=241)), ("fine.jpeg", xray_jpeg())))
    assert r.status_code == 200
    odd, fine = r.json()["results"]
    assert odd["ok"] is False and "internal error" in odd["error"] and "odd.jpeg" in odd["error"]
    assert fine["ok"] is True


# --------------------------------------------------------------------------- authentication


def test_token_guards_every_patient_data_route(predictor):
    client = TestClient(create_app(predictor, ServeSettings(token=TOKEN)))
    for method, url in (("get", "/api/v1/model"), ("post", "/api/v1/predict"), ("post", "/api/v1/explain"),
                        ("get", "/api/v1/drift"), ("get", "/api/v1/worklist"), ("get", "/api/v1/worklist/1"),
                        ("post", "/api/v1/worklist/1/review"), ("get", "/api/v1/audit")):
        r = getattr(client, method)(url)
        assert r.status_code == 401, (url, r.status_code)
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = getattr(client, method)(url, headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert r.status_code == 401
    r = client.post("/api/v1/predict", files=_files(("a.jpeg", xray_jpeg())))
    assert r.status_code == 401  # an upload without the token is refused before anything is read
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/v1/model", headers=ok).status_code == 200
    r = client.post("/api/v1/predict", files=_files(("a.jpeg", xray_jpeg())), headers=ok)
    assert r.status_code == 200 and r.json()["results"][0]["ok"]
    # The stored result names its client by the token's short hash, never by the token.
    rid = r.json()["results"][0]["worklist_id"]
    review = client.post(f"/api/v1/worklist/{rid}/review", json={"verdict": "agree"}, headers=ok)
    assert review.status_code == 200
    who = "token-" + hashlib.sha256(TOKEN.encode()).hexdigest()[:10]
    assert review.json()["client"] == who and review.json()["review"]["reviewer"] == who
    audit = client.get("/api/v1/audit", headers=ok)
    assert [e["client"] for e in audit.json()["events"]] == [who, who] and TOKEN not in audit.text
    assert client.post(f"/api/v1/worklist/{rid}/review", json={"verdict": "disagree"}).status_code == 401
    assert client.get(f"/api/v1/worklist/{rid}", headers=ok).json()["n_reviews"] == 1
    # Open: liveness, the page and its static files (they hold no patient data).
    assert client.get("/healthz").json()["auth"] is True
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200


def test_the_page_sends_the_token_it_is_given():
    js = (Path(__file__).resolve().parents[1] / "src/pneumoscan/serve/static/app.js").read_text()
    assert 'Authorization: "Bearer " + token' in js and "sessionStorage" in js
    assert "fetch(" not in js.replace("await fetch(url, { ...options", "")  # every call goes through api()


def test_public_bind_without_token_is_refused():
    with pytest.raises(ConfigError, match=TOKEN_ENV_VAR) as err:
        check_exposure("0.0.0.0", None, insecure_no_auth=False)
    assert "--token-file" in str(err.value) and "--insecure-no-auth" in str(err.value)
    for host in ("::", "192.168.1.20", "pacs-gateway.example.org"):
        with pytest.raises(ConfigError):
            check_exposure(host, None, insecure_no_auth=False)
    check_exposure("0.0.0.0", TOKEN, insecure_no_auth=False)
    check_exposure("0.0.0.0", None, insecure_no_auth=True)
    for host in ("127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"):
        assert is_loopback(host)
        check_exposure(host, None, insecure_no_auth=False)


def test_serve_command_refuses_public_bind_before_loading_the_model(monkeypatch, capsys):
    from pneumoscan.cli import main

    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--model", "/nonexistent.safetensors"]) == 1
    err = capsys.readouterr().err
    assert TOKEN_ENV_VAR in err and "Traceback" not in err


def test_load_token(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    assert load_token(None) is None
    assert load_token(None, environ={TOKEN_ENV_VAR: f"  {TOKEN}\n"}) == TOKEN
    f = tmp_path / "token"
    f.write_text(TOKEN + "\nignored second line\n")
    f.chmod(0o600)
    assert load_token(f) == TOKEN
    f.write_text("short\n")
    with pytest.raises(ConfigError, match=str(MIN_TOKEN_LENGTH)):
        load_token(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(tmp_path / "missing")


# --------------------------------------------------------------------------- memory budget and pixel limit


def test_image_over_the_memory_budget_gets_413_and_others_still_run(predictor):
    settings = ServeSettings(memory_budget_bytes=40 * 1024 * 1024)
    client = TestClient(create_app(predictor, settings))
    big = png_bytes(synthetic_xray(1600, 1600).astype("uint16") * 200)  # 16-bit: 16 B/px estimated -> 55 MiB
    r = client.post("/api/v1/predict", files=_files(("big.png", big), ("small.jpeg", xray_jpeg())))
    assert r.status_code == 200
    big_entry, small = r.json()["results"]
    assert big_entry["ok"] is False and "memory budget" in big_entry["error"] and "big.png" in big_entry["error"]
    assert small["ok"] is True
    r = client.post("/api/v1/predict", files=_files(("big.png", big)))
    assert r.status_code == 413 and "memory budget" in r.json()["detail"]


def test_server_pixel_limit_is_lower_than_the_librarys():
    from pneumoscan.io import DEFAULT_MAX_PIXELS
    from pneumoscan.serve import SERVER_MAX_PIXELS

    assert ServeSettings().max_pixels == SERVER_MAX_PIXELS < DEFAULT_MAX_PIXELS


# --------------------------------------------------------------------------- uploads on disk, logs


def test_saved_uploads_are_owner_only_and_expire(predictor, tmp_path):
    folder = tmp_path / "uploads"
    client = TestClient(create_app(predictor, ServeSettings(save_uploads=str(folder), upload_retention_days=7)))
    assert client.post("/api/v1/predict", files=_files(("a.jpeg", xray_jpeg()))).status_code == 200
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (saved,) = folder.iterdir()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    old = time.time() - 8 * 86400
    os.utime(saved, (old, old))
    create_app(predictor, ServeSettings(save_uploads=str(folder), upload_retention_days=7))  # start-up purges
    assert list(folder.iterdir()) == []


def test_client_file_names_stay_out_of_the_logs(predictor, caplog):
    client = TestClient(create_app(predictor))
    name = "Jane_Doe_1999-04-01_chest.png"
    animated = png_bytes(synthetic_xray(120, 100))  # a good file, and a damaged DICOM with the same name
    with caplog.at_level(logging.DEBUG):
        r = client.post("/api/v1/predict", files=_files((name, animated), (name.replace(".png", ".dcm"), _damaged_dicom())))
    assert r.status_code == 200
    logged = "\n".join(rec.getMessage() for rec in caplog.records if rec.levelno >= logging.INFO)
    assert "Jane" not in logged and "Doe" not in logged
    assert log_id(name) in logged


# --------------------------------------------------------------------------- a real server: timeouts, cancellation


class _Server:
    def __init__(self, app, settings):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port, settings, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes the connection; ``(closed in time, what it sent)``."""
    sock.settimeout(0.2)
    got = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


@pytest.fixture(scope="module")
def fast_timeouts():
    return ServeSettings(header_timeout=1.0, body_timeout=1.0, body_deadline=3.0, keep_alive_timeout=1.0)


def test_slow_clients_are_dropped(predictor, fast_timeouts):
    with _Server(create_app(predictor, fast_timeouts), fast_timeouts) as srv:
        silent = srv.connect()  # half-open: connects, sends nothing
        trickle = srv.connect()  # slowloris: the head a few bytes at a time
        stalled = srv.connect()  # stops mid-body
        stalled.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                        b"Content-Length: 100000\r\n\r\n--b\r\n")
        t0 = time.monotonic()
        for part in (b"GET /healthz HT", b"TP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n", b"X-C: 3\r\n"):
            try:
                trickle.sendall(part)
            except OSError:
                break
            time.sleep(0.4)
        results = {name: _closed_within(sock, 4.0) for name, sock in
                   (("silent", silent), ("trickle", trickle), ("stalled", stalled))}
        elapsed = time.monotonic() - t0
        for sock in (silent, trickle, stalled):
            sock.close()
        assert all(closed for closed, _ in results.values()), {k: v[0] for k, v in results.items()}
        assert elapsed < 8
        assert results["silent"][1].startswith(b"HTTP/1.1 408")
        assert results["trickle"][1].startswith(b"HTTP/1.1 408")
        assert b" 408 " in results["stalled"][1].split(b"\r\n", 1)[0]
        # A normal client is still served.
        assert httpx.get(f"http://127.0.0.1:{srv.port}/healthz").status_code == 200


class _CountingSlowPredictor:
    def __init__(self, inner, delay):
        self._inner, self._delay, self.calls = inner, delay, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def assess(self, film, **kwargs):
        self.calls += 1
        time.sleep(self._delay)
        return self._inner.assess(film, **kwargs)


def test_work_stops_when_the_client_disconnects(predictor):
    slow = _CountingSlowPredictor(predictor, 1.0)
    settings = ServeSettings(request_parallelism=1)
    with _Server(create_app(slow, settings), settings) as srv:
        files = _files(*[(f"f{i}.jpeg", xray_jpeg(i)) for i in range(8)])
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"http://127.0.0.1:{srv.port}/api/v1/predict", files=files, timeout=1.5)
        time.sleep(3.0)
        calls = slow.calls
    assert 1 <= calls <= 3, f"{calls} of 8 files were scored after the client left"
