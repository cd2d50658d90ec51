"""What the routes share: one Predictor, the settings, the thread pool, the memory budget, the bytes held, the
token check, the drift window, the worklist database and the model's description (``/api/v1/model``), built once
at start-up."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio

from pneumoscan import __version__
from pneumoscan.constants import DISCLAIMER, INTENDED_USE
from pneumoscan.serve.analysis import UploadStore
from pneumoscan.serve.budget import MemoryBudget
from pneumoscan.serve.monitor import DriftWindow
from pneumoscan.serve.security import TokenAuth
from pneumoscan.serve.settings import ServeSettings
from pneumoscan.store import StoreError, WorklistStore

if TYPE_CHECKING:
    from pneumoscan.inference.protocols import ResultMaker

__all__ = ["ServerState", "model_info", "render_markdown"]

log = logging.getLogger("pneumoscan.serve")


class ServerState:
    """What the routes share: the predictor, limits, thread pool, memory budget, buffered-bytes gauge, the
    rolling drift window (``drift``; its test runs one at a time, under ``drift_limiter``) and the worklist
    database (``store``: ``store`` if given, else one opened on ``settings.db``, closed by :meth:`close`)."""

    def __init__(self, predictor: ResultMaker, settings: ServeSettings, store: WorklistStore | None = None) -> None:
        self.predictor = predictor
        self.settings = settings
        self.limiter = anyio.CapacityLimiter(settings.workers)
        self.budget = MemoryBudget(settings.memory_budget_bytes)
        self.buffered = 0
        self.uploads = (UploadStore(settings.save_uploads, settings.upload_retention_days)
                        if settings.save_uploads else None)
        self.auth = TokenAuth(settings.token, settings.readers)
        self.drift = DriftWindow(predictor.drift, settings.drift_window)
        self.drift_limiter = anyio.CapacityLimiter(1)
        self.info = model_info(predictor, _read_model_card())
        self._owns_store = store is None
        self.store = store if store is not None else WorklistStore(settings.db or ":memory:")
        self.last_purge = 0.0
        self.purge_expired()  # retention at start-up; then daily (the app's lifespan)

    def purge_expired(self) -> int:
        """Delete worklist results and audit rows past ``settings.retention_days``; return how many results went
        (0 with no retention, or when the database fails: that is logged, and the server carries on)."""
        self.last_purge = time.monotonic()
        if self.settings.retention_days is None:
            return 0
        try:
            return self.store.purge(self.settings.retention_days)
        except StoreError as exc:
            log.error("retention: could not purge the worklist database: %s", exc)
            return 0

    def close(self) -> None:
        """Close the worklist database if this state opened it."""
        if self._owns_store:
            self.store.close()

    @asynccontextmanager
    async def holding(self, nbytes: int) -> AsyncIterator[None]:
        """Count ``nbytes`` of request bodies as held in memory for the block."""
        self.buffered += nbytes
        try:
            yield
        finally:
            self.buffered -= nbytes


def model_info(predictor: ResultMaker, model_card: str | None) -> dict[str, Any]:
    """The model's description for ``/api/v1/model``: name, version, operating point, calibration, validation
    figures, preprocessing, intended use, the disclaimer, the model card (``model_card``: Markdown, or None;
    ``model_card_html``: the same rendered by :func:`render_markdown`, or None) and where the model
    was adapted or calibrated at a site (:func:`pneumoscan.inference.provenance.provenance`: ``site_state`` "shipped" | "adapted"
    | "calibrated" | "adapted and calibrated", ``adaptation``, ``site_calibration``, ``provenance`` in words)."""
    from pneumoscan.inference.provenance import provenance

    info = predictor.info
    op, vm = info.operating_point, info.val_metrics
    summary = info.val_summary or {}
    at_op = (summary.get("thresholds") or {}).get("operating") or {}
    roc = summary.get("roc_auc")  # {"value", "ci"} in a val_summary; older checkpoints only have val_metrics
    validation = {
        "auc": roc["value"] if isinstance(roc, dict) else vm.get("val_auc"),
        "auc_ci": roc.get("ci") if isinstance(roc, dict) else None,
        "sensitivity": op.get("val_sensitivity", at_op.get("sensitivity")),
        "specificity": op.get("val_specificity", at_op.get("specificity")),
    }
    return {
        "name": info.model,
        "version": predictor.version,
        "backend": predictor.backend,
        "threshold": info.threshold,
        "temperature": info.temperature,
        "operating_point": op,
        "outputs": list(info.outputs),
        "cause": info.cause,
        "calibration": info.calibration,
        "validation": {k: v for k, v in validation.items() if v is not None},
        "preprocessing": info.preprocessing.to_dict(),
        "classes": list(info.classes) or None,
        "epoch": info.epoch,
        **provenance(info.raw),
        "intended_use": INTENDED_USE,
        "disclaimer": DISCLAIMER,
        "pneumoscan_version": __version__,
        "model_card": model_card,
        "model_card_html": render_markdown(model_card) if model_card else None,
    }


def render_markdown(text: str) -> str:
    """Markdown (CommonMark plus tables) as HTML for the page, safe to insert as is: raw HTML in the source is
    escaped, never passed through; links with a ``javascript:``-like scheme are refused (markdown-it's own link
    check); images are not rendered (their syntax stays text), so the page fetches nothing from elsewhere; headings
    move one level down (``#`` becomes ``<h2>``), since the card sits inside the page under its ``<h1>``; a table
    column's alignment is a class (``align-right``), not a ``style`` attribute, which the page's
    Content-Security-Policy would refuse."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table").disable("image")
    tokens = md.parse(text)
    for tok in tokens:
        if tok.type in ("heading_open", "heading_close"):
            tok.tag = f"h{min(int(tok.tag[1]) + 1, 6)}"
        align = str(tok.attrs.pop("style", "") or "")
        if align.startswith("text-align:"):
            tok.attrSet("class", "align-" + align.split(":", 1)[1].strip())
    return md.renderer.render(tokens, md.options, {})


def _read_model_card() -> str | None:
    try:
        return resources.files("pneumoscan").joinpath("assets/MODEL_CARD.md").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None
