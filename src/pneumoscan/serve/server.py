"""Run the app under uvicorn with the server's protections: header deadline, keep-alive and concurrency limits,
and the refusal to serve patient data off localhost without a token; results go to the worklist database."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pneumoscan.serve.app import create_app
from pneumoscan.serve.protocol import guarded_h11
from pneumoscan.serve.security import check_exposure
from pneumoscan.serve.settings import ServeSettings
from pneumoscan.store import WorklistStore

__all__ = ["run", "uvicorn_config"]

log = logging.getLogger("pneumoscan.serve")


def uvicorn_config(app: Any, host: str, port: int, settings: ServeSettings, **kwargs: Any) -> Any:
    """A ``uvicorn.Config`` for ``app`` with the settings' timeouts and limits (h11 with a header deadline)."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http=guarded_h11(settings.header_timeout),
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout)),
        limit_concurrency=settings.limit_concurrency, timeout_graceful_shutdown=30, **kwargs)


def run(model_path: str | os.PathLike[str] | None, host: str = "127.0.0.1", port: int = 8000,
        settings: ServeSettings | None = None, *, insecure_no_auth: bool = False) -> None:
    """Load the model once (``settings.backend``, ``settings.threads`` intra-op threads per request) and serve the
    app with uvicorn until interrupted.

    ``settings.db`` None means the default worklist database (``worklist.db`` in the data folder).

    Raises:
        ConfigError: ``host`` is not a loopback address and no token is set (unless ``insecure_no_auth``).
        StoreError: the worklist database cannot be opened, or was written by a newer pneumoscan.
    """
    import uvicorn

    from pneumoscan.inference.predictor import Predictor, RuntimeOptions, default_model_path

    settings = settings or ServeSettings()
    check_exposure(host, settings.token or settings.readers, insecure_no_auth=insecure_no_auth)  # before the slow model load
    with WorklistStore(settings.db) as store:  # a database it cannot use stops it here, before the model loads
        path = Path(model_path) if model_path else default_model_path()
        predictor = Predictor.from_checkpoint(path, options=RuntimeOptions(threads=settings.threads,
                                                                           backend=settings.backend))
        log.info("serving %s (%s, version %s, %s, %d worker(s) x %d thread(s)) on http://%s:%d%s; worklist database "
                 "%s (retention %s)", path, predictor.model_name, predictor.version, predictor.backend,
                 settings.workers, settings.threads, host, port,
                 (f" with bearer-token authentication ({len(settings.readers)} reader(s))" if settings.readers
                  else " with bearer-token authentication" if settings.token else ""), store.where,
                 f"{settings.retention_days:g} days" if settings.retention_days else "none: kept for ever")
        app = create_app(predictor, settings, store=store)
        uvicorn.Server(uvicorn_config(app, host, port, settings, log_level="info")).run()
