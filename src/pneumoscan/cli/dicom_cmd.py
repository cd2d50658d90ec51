"""``pneumoscan dicom-listen``: a DICOM Storage SCP that scores what a PACS sends (registered on the app by the package)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pneumoscan.cli.common import BACKEND_HELP, Backend


def dicom_listen_cmd(
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port to listen on (104 and 11112 are DICOM's; "
                                      "0 picks a free one and logs it).")] = 11112,
    ae_title: Annotated[str, typer.Option(help="This node's AE title; associations must address it.")] = "PNEUMOSCAN",
    forward: Annotated[str | None, typer.Option(metavar="AET@HOST:PORT", help="C-STORE a Structured Report and a "
                                                   "heatmap Secondary Capture of each result into the source "
                                                   "study on this PACS (e.g. ORTHANC@127.0.0.1:4242).")] = None,
    db: Annotated[str | None, typer.Option(metavar="PATH|URL", help="Worklist database: a SQLite file or a "
                                              "SQLAlchemy URL. Default: the data folder's SQLite file.")] = None,
    allow: Annotated[str | None, typer.Option(metavar="AET,...", help="Accept associations only from these "
                                                 "calling AE titles (others are rejected at association time). "
                                                 "Required when --host is not a loopback address.")] = None,
    model: Annotated[Path | None, typer.Option(help="Checkpoint (.safetensors) or ONNX export. Default: the "
                                                  "shipped model.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, help="Images scored at once, all associations together.")] = 2,
    threads: Annotated[int, typer.Option(min=1, help="Model threads per image scored at once.")] = 1,
    backend: Annotated[Backend, typer.Option("--backend", help=BACKEND_HELP)] = Backend.onnx,
) -> int:
    """Listen for DICOM images (C-STORE of CR, DX and Secondary Capture): score each one with the scope gate,
    record it in the worklist database and, with --forward, send the SR and SC back to the PACS.
    Stop with Ctrl+C or SIGTERM (open associations finish first). Decision support, not a diagnosis."""
    from pneumoscan.dicom_node import ForwardTarget, NodeSettings, run

    # A node is a service: its progress lines show without --verbose.
    node_log = logging.getLogger("pneumoscan.dicom_node")
    if node_log.getEffectiveLevel() > logging.INFO:
        node_log.setLevel(logging.INFO)
    settings = NodeSettings(ae_title=ae_title, host=host, port=port, allow=tuple((allow or "").split(",")),
                            forward=ForwardTarget.parse(forward) if forward else None, workers=workers)
    return run(str(model) if model else None, settings=settings, db=db, backend=backend.value, threads=threads)
