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
    max_associations: Annotated[int, typer.Option(min=1, help="Associations open at once, all peers together; more "
                                                  "are rejected (transient).")] = 10,
    max_associations_per_peer: Annotated[int, typer.Option(min=1, help="Associations one IP address may have open "
                                                           "at once (more are rejected, transient), and connections "
                                                           "it may have waiting silent (a newer one closes the "
                                                           "oldest).")] = 4,
    association_timeout: Annotated[float, typer.Option(min=0.1, metavar="SECONDS", help="Time a connection has to "
                                                       "send its whole association request; then it is "
                                                       "closed.")] = 10.0,
    max_pixels: Annotated[int, typer.Option(min=1, help="Largest image decoded, in pixels, checked from the header "
                                            "(the server's limit, below the library's 60 million).")] = 25_000_000,
    memory_budget_mb: Annotated[float, typer.Option(min=1.0, help="Estimated decoding memory allowed at once, all "
                                                    "images together, in MiB; an image that does not fit waits, "
                                                    "then gets 0xA700 (out of resources).")] = 1024.0,
    max_pdu: Annotated[int, typer.Option(min=4096, metavar="BYTES", help="Largest PDU the node advertises and "
                                         "accepts; a peer that declares a larger one is disconnected "
                                         "unread.")] = 16382,
    forward_retention: Annotated[float, typer.Option(min=0.001, metavar="HOURS", help="How long a result's SR and "
                                                     "SC wait in the outbox for the PACS (tried again with a "
                                                     "growing pause, across restarts) before they are marked "
                                                     "failed.")] = 72.0,
    forward_retry_max: Annotated[float, typer.Option(min=0.01, metavar="SECONDS", hidden=True, help="Longest pause "
                                                     "between two tries to reach the PACS.")] = 30.0,
    status: Annotated[bool, typer.Option("--status", help="Print the outbox's backlog (objects pending, delivered "
                                                          "and failed; the oldest pending) from --db and exit; "
                                                          "starts no node.")] = False,
) -> int:
    """Listen for DICOM images (C-STORE of CR, DX and Secondary Capture): score each one with the scope gate,
    record it in the worklist database and, with --forward, send the SR and SC back to the PACS (through an outbox
    in the database: nothing is lost when the PACS is down or the node restarts).
    Stop with Ctrl+C or SIGTERM (open associations finish first). Decision support, not a diagnosis."""
    from pneumoscan.dicom_node import ForwardTarget, NodeSettings, outbox_status, run

    if status:
        typer.echo(outbox_status(db))
        return 0

    # A node is a service: its progress lines show without --verbose.
    node_log = logging.getLogger("pneumoscan.dicom_node")
    if node_log.getEffectiveLevel() > logging.INFO:
        node_log.setLevel(logging.INFO)
    limits = {"max_associations": max_associations, "max_associations_per_peer": max_associations_per_peer,
              "association_timeout": association_timeout, "max_pixels": max_pixels,
              "memory_budget_bytes": int(memory_budget_mb * 1024 * 1024), "max_pdu_bytes": max_pdu}
    settings = NodeSettings(ae_title=ae_title, host=host, port=port, allow=tuple((allow or "").split(",")),
                            forward=ForwardTarget.parse(forward) if forward else None, workers=workers,
                            forward_retention_hours=forward_retention, forward_retry_max_seconds=forward_retry_max,
                            forward_retry_seconds=min(1.0, forward_retry_max), **limits)
    return run(str(model) if model else None, settings=settings, db=db, backend=backend.value, threads=threads)
