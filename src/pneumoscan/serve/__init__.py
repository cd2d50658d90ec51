"""The web app and REST API: upload X-rays, get the risk, the decision, a heatmap and a worklist.

One :class:`~pneumoscan.predict.Predictor` is built at start-up. Routes only
check the input and call it, in a bounded thread pool, so the event loop (and
``/healthz``) stays responsive while predictions run.

Safety rules:

- the request body is read into memory with a hard size limit (413 past it);
  uploads never touch the disk unless ``save_uploads`` names a folder, and then
  under a server-made name, never the client's;
- the content is sniffed, the file name and extension are never trusted;
- every bad input gets a 4xx JSON error naming the file and the problem.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from pneumoscan import __version__
from pneumoscan.io import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedDicomError,
    read_image,
    sniff_format,
)

log = logging.getLogger(__name__)

__all__ = ["ServeSettings", "create_app"]

DISCLAIMER = (
    "Decision support, not a diagnosis: pneumoscan is a second reader that corroborates a clinician. "
    "Every result must be reviewed by a qualified clinician."
)
INTENDED_USE = (
    "Second reader for pneumonia on pediatric (about 1 to 5 years) frontal chest X-rays, alongside a clinician. "
    "Not tested on adults, lateral views, other hospitals or other vendors' DICOM."
)
PREVIEW_SIDE = 512
_STATUS_FOR = {ImageTooLargeError: 413, NotAnImageError: 415, UnsupportedDicomError: 415}


@dataclass(frozen=True)
class ServeSettings:
    """Limits and options of the web app."""

    #: Largest request body accepted, in bytes (all files of one request together).
    max_request_bytes: int = 64 * 1024 * 1024
    #: Largest image accepted, in pixels (decompression-bomb guard).
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Most files in one request.
    max_files: int = 32
    #: Threads running inference; more requests wait their turn.
    workers: int = 2
    #: Folder to keep a copy of each upload in (server-made names). None: uploads stay in memory only.
    save_uploads: str | None = None


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _png_data_uri(rgb_or_gray: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb_or_gray).save(buf, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _preview(gray: np.ndarray) -> np.ndarray:
    """The film scaled down to at most PREVIEW_SIDE on its long side, keeping the aspect ratio."""
    h, w = gray.shape
    scale = min(1.0, PREVIEW_SIDE / max(h, w))
    if scale >= 1.0:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS))


def _display_name(name: str | None, index: int) -> str:
    """A safe label for messages and cards: the client's base name, printable, at most 120 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return (base or f"upload-{index + 1}")[:120]


def _model_info(predictor: Any, model_card: str | None) -> dict[str, Any]:
    meta = predictor.meta
    op = meta.get("operating_point") or {}
    summary = meta.get("val_summary") or {}
    at_op = (summary.get("thresholds") or {}).get("operating") or {}
    vm = meta.get("val_metrics") or {}
    roc = summary.get("roc_auc")  # {"value", "ci"} in a val_summary; older checkpoints only have val_metrics
    validation = {
        "auc": roc["value"] if isinstance(roc, dict) else vm.get("val_auc"),
        "auc_ci": roc.get("ci") if isinstance(roc, dict) else None,
        "sensitivity": op.get("val_sensitivity", at_op.get("sensitivity")),
        "specificity": op.get("val_specificity", at_op.get("specificity")),
    }
    return {
        "name": predictor.model_name,
        "version": predictor.version,
        "backend": predictor.backend,
        "threshold": predictor.threshold,
        "temperature": predictor.temperature,
        "operating_point": op,
        "calibration": meta.get("calibration") or {},
        "validation": {k: v for k, v in validation.items() if v is not None},
        "preprocessing": predictor.preprocessing.to_dict(),
        "classes": meta.get("classes"),
        "epoch": meta.get("epoch"),
        "intended_use": INTENDED_USE,
        "disclaimer": DISCLAIMER,
        "pneumoscan_version": __version__,
        "model_card": model_card,
    }


def _read_model_card() -> str | None:
    try:
        return resources.files("pneumoscan").joinpath("assets/MODEL_CARD.md").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BadRequest(413, f"request is {int(declared):,} bytes; the limit is {limit:,} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BadRequest(413, f"request is larger than the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_files(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise _BadRequest(415, "send the images as multipart/form-data with one or more 'files' fields")
    body = await _read_body(request, settings.max_request_bytes)

    async def stream():
        yield body
        yield b""

    parser = MultiPartParser(request.headers, stream(), max_files=settings.max_files, max_fields=100)
    # Keep every part in memory: the body is already bounded by max_request_bytes.
    parser.spool_max_size = settings.max_request_bytes + 1
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise _BadRequest(400, f"malformed multipart upload: {exc.message}") from exc
    files: list[tuple[str, bytes]] = []
    try:
        for i, (_key, value) in enumerate(form.multi_items()):
            if isinstance(value, UploadFile):
                files.append((_display_name(value.filename, i), await value.read()))
    finally:
        await form.close()
    if not files:
        raise _BadRequest(400, "no files in the upload; send one or more files in the 'files' field")
    return files


def create_app(predictor: Any, settings: ServeSettings | None = None) -> FastAPI:
    """Build the FastAPI app around one loaded Predictor."""
    settings = settings or ServeSettings()
    model_card = _read_model_card()
    info = _model_info(predictor, model_card)
    limiter = anyio.CapacityLimiter(max(1, settings.workers))
    app = FastAPI(
        title="pneumoscan",
        version=__version__,
        description="Pneumonia risk on pediatric chest X-rays, with Grad-CAM heatmaps. " + DISCLAIMER,
    )
    static_dir = resources.files("pneumoscan").joinpath("serve/static")
    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    def analyse(name: str, data: bytes, heatmap: bool, preview: bool) -> dict[str, Any]:
        fmt = sniff_format(data[:132])  # the content decides; read_image refuses what is not an image
        if settings.save_uploads and fmt is not None:
            folder = Path(settings.save_uploads)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.{fmt.lower()}").write_bytes(data)
        gray = read_image(data, name=name, max_pixels=settings.max_pixels)
        if heatmap and predictor.backend == "torch":
            probability, heat = predictor.explain(gray)
        else:
            probability, heat = float(predictor.predict_proba([gray])[0]), None
        positive = bool(probability >= predictor.threshold)
        out: dict[str, Any] = {
            "filename": name,
            "ok": True,
            "format": fmt,
            "width": int(gray.shape[1]),
            "height": int(gray.shape[0]),
            "probability": probability,
            "positive": positive,
            "decision": "PNEUMONIA" if positive else "NORMAL",
            "threshold": predictor.threshold,
            "model_version": predictor.version,
        }
        if preview:
            out["image_png"] = _png_data_uri(_preview(gray))
        if heat is not None:
            from pneumoscan.explain import render_overlay

            out["heatmap_png"] = _png_data_uri(render_overlay(gray, heat, max_side=PREVIEW_SIDE,
                                                              caption=f"pneumonia {probability:.1%}"))
        elif heatmap:
            out["heatmap_error"] = "heatmaps need the .safetensors checkpoint; this server runs an ONNX export"
        return out

    @app.exception_handler(_BadRequest)
    async def _bad_request(_request: Request, exc: _BadRequest) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(static_dir.joinpath("index.html")), media_type="text/html")

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.model_name, "model_version": predictor.version}

    @app.get("/api/v1/model", summary="The model card's metadata")
    async def model() -> dict[str, Any]:
        return info

    @app.post(
        "/api/v1/predict",
        summary="Pneumonia probability and decision for one or many uploaded images",
        description="multipart/form-data with one or more `files` parts (JPEG, PNG or DICOM; the content is "
        "sniffed, the name is not trusted). With `heatmap=true` each result carries a Grad-CAM overlay as a PNG "
        "data URI; with `preview=true` a downscaled grayscale preview. A mix of good and bad files returns 200 "
        "with an error in each bad file's entry; when every file is bad the status is 4xx. " + DISCLAIMER,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["files"],
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }}},
            }
        },
    )
    async def predict(request: Request, heatmap: bool = False, preview: bool = False) -> JSONResponse:
        files = await _parse_files(request, settings)
        results: list[dict[str, Any]] = []
        statuses: list[int] = []
        for name, data in files:
            try:
                results.append(await anyio.to_thread.run_sync(analyse, name, data, heatmap, preview, limiter=limiter))
            except ImageError as exc:
                statuses.append(_STATUS_FOR.get(type(exc), 422))
                results.append({"filename": name, "ok": False, "error": str(exc)})
        ok = [r for r in results if r["ok"]]
        ranked = sorted(ok, key=lambda r: -r["probability"])
        for rank, r in enumerate(ranked, start=1):
            r["rank"] = rank
        body = {"model": {"name": predictor.model_name, "version": predictor.version,
                          "threshold": predictor.threshold},
                "disclaimer": DISCLAIMER, "results": results}
        if not ok:
            body["detail"] = results[0]["error"] if len(results) == 1 else f"none of the {len(results)} files could be read"
            return JSONResponse(body, status_code=statuses[0] if len(set(statuses)) == 1 else 422)
        return JSONResponse(body)

    return app


def run(model_path: str | os.PathLike[str] | None, host: str = "127.0.0.1", port: int = 8000,
        settings: ServeSettings | None = None) -> None:
    """Load the model once and serve the app with uvicorn until interrupted."""
    import uvicorn

    from pneumoscan.predict import Predictor, default_model_path

    path = Path(model_path) if model_path else default_model_path()
    predictor = Predictor.from_checkpoint(path)
    log.info("serving %s (%s, version %s) on http://%s:%d", path, predictor.model_name, predictor.version, host, port)
    uvicorn.run(create_app(predictor, settings), host=host, port=port, log_level="info")
