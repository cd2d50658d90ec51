"""``pneumoscan serve``: the web page and the REST API over one model (registered on the app by the package)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pneumoscan.cli.common import BACKEND_HELP, Backend


def serve_cmd(
    model: Annotated[Optional[Path], typer.Option(help="Checkpoint (.safetensors) or ONNX export. Default: the shipped model.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but a loopback address needs a token (or --insecure-no-auth).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token_file: Annotated[Optional[Path], typer.Option(help="The API token(s): a file whose first line is one shared token, or one 'NAME TOKEN' line per "
                                                       "reader (each reader's name is then recorded on their results, reviews and audit rows; '#' starts "
                                                       "a comment). Else $PNEUMOSCAN_API_TOKEN. With a token, API calls need 'Authorization: Bearer <token>'.")] = None,
    insecure_no_auth: Annotated[bool, typer.Option("--insecure-no-auth", help="Serve off localhost without a token (not recommended: the API handles patient data).")] = False,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body accepted, in MiB.")] = 64.0,
    max_pixels: Annotated[int, typer.Option(help="Largest image accepted, in pixels (the server's own limit, below the library's 60 million).")] = 25_000_000,
    max_files: Annotated[int, typer.Option(help="Most files in one request.")] = 32,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Requests decoded and scored at once, all clients together (default: one per CPU core, at least 2).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Model threads per request in flight (ONNX Runtime intra-op threads, or torch's). One per request keeps requests from competing for cores.")] = 1,
    backend: Annotated[Backend, typer.Option("--backend", help=BACKEND_HELP)] = Backend.onnx,
    memory_budget_mb: Annotated[float, typer.Option(help="Estimated decoding memory allowed at once, all images together, in MiB; "
                                                    "a larger image is refused with 413.")] = 1024.0,
    header_timeout: Annotated[float, typer.Option(help="Seconds a client has to send its request headers.")] = 30.0,
    body_timeout: Annotated[float, typer.Option(help="Longest pause, in seconds, while a client sends a request body.")] = 30.0,
    save_uploads: Annotated[Optional[Path], typer.Option(help="Keep a copy of each upload in this folder (off by default; owner-only files).")] = None,
    upload_retention_days: Annotated[float, typer.Option(help="With --save-uploads: delete saved uploads older than this many days.")] = 30.0,
    db: Annotated[Optional[str], typer.Option("--db", metavar="PATH|URL", help="The worklist database: a SQLite file (created owner-only) or a SQLAlchemy URL "
                                             "such as postgresql+psycopg://user@host/pneumoscan. Default: worklist.db in $PNEUMOSCAN_DATA_DIR, "
                                             "else ~/.local/share/pneumoscan. Share it with 'pneumoscan dicom-listen --db'.")] = None,
    retention_days: Annotated[float, typer.Option(help="Delete worklist results, their reviews and audit rows older than this many days "
                                                  "(at start-up, then daily); 0 keeps them for ever.")] = 365.0,
) -> None:
    """Serve the web page and the REST API (FastAPI under uvicorn) with one model loaded at start-up.
    Open http://HOST:PORT/ in a browser; API documentation is at /docs. Decision support, not a diagnosis."""
    from pneumoscan.serve import ServeSettings, run
    from pneumoscan.serve.security import load_access
    from pneumoscan.store import default_db_path

    for name, value in (("--max-request-mb", max_request_mb), ("--memory-budget-mb", memory_budget_mb),
                        ("--header-timeout", header_timeout), ("--body-timeout", body_timeout),
                        ("--upload-retention-days", upload_retention_days)):
        if not value > 0:
            raise typer.BadParameter(f"must be positive, got {value:g}", param_hint=name)
    if not retention_days >= 0:
        raise typer.BadParameter(f"must be 0 (keep for ever) or a positive number of days, got {retention_days:g}",
                                 param_hint="--retention-days")
    import os

    token, readers = load_access(token_file)
    settings = ServeSettings(
        max_request_bytes=int(max_request_mb * 1024 * 1024), max_pixels=max_pixels, max_files=max_files,
        workers=workers or max(2, os.cpu_count() or 1), threads=threads, backend=backend.value, memory_budget_bytes=int(memory_budget_mb * 1024 * 1024),
        header_timeout=header_timeout, body_timeout=body_timeout,
        save_uploads=str(save_uploads) if save_uploads else None, upload_retention_days=upload_retention_days,
        token=token, readers=readers,
        db=db if db else str(default_db_path()), retention_days=retention_days or None,
    )
    run(model, host=host, port=port, settings=settings, insecure_no_auth=insecure_no_auth)
