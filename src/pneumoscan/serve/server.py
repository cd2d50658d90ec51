"""Run the app under uvicorn with the server's protections: header deadline, keep-alive and concurrency limits,
and the refusal to serve patient data off localhost without a token."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pneumoscan.serve.app import create_app
from pneumoscan.serve.protocol import guarded_h11
from pneumoscan.serve.security import check_exposure
from pneumoscan.serve.settings import ServeSettings

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
    """Load the model once and serve the app with uvicorn until interrupted.

    Raises:
        ConfigError: ``host`` is not a loopback address and no token is set (unless ``insecure_no_auth``).
    """
    import uvicorn

    from pneumoscan.predict import Predictor, default_model_path

    settings = settings or ServeSettings()
    check_exposure(host, settings.token, insecure_no_auth=insecure_no_auth)  # before the slow model load
    path = Path(model_path) if model_path else default_model_path()
    predictor = Predictor.from_checkpoint(path)
    log.info("serving %s (%s, version %s) on http://%s:%d%s", path, predictor.model_name, predictor.version,
             host, port, " with bearer-token authentication" if settings.token else "")
    uvicorn.Server(uvicorn_config(create_app(predictor, settings), host, port, settings, log_level="info")).run()
