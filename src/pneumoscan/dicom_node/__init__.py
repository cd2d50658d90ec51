"""A DICOM node: a Storage SCP (pynetdicom) that scores every chest film a PACS or a modality sends it.

``pneumoscan dicom-listen`` runs :func:`run`. The node

* accepts associations only when they address its AE title and, with an allow list, only from the listed calling
  AE titles (others are rejected at association time: A-ASSOCIATE-RJ, "calling AE title not recognised");
* accepts presentation contexts for CR, DX (For Presentation and For Processing) and Secondary Capture image
  storage, in every transfer syntax this installation can decode, plus Verification (C-ECHO); any other SOP class
  (a Structured Report, a CT slice...) is refused as a presentation context, and a C-STORE whose data set does not
  match its SOP class gets 0xA900;
* decodes each image with :func:`pneumoscan.io.read_image_with_context` from the bytes as received, scores it
  through :meth:`pneumoscan.inference.predictor.Predictor.assess` (the scope gate included) and records the result in the
  worklist database (:class:`pneumoscan.store.WorklistStore`; ``client`` is the calling AE title,
  ``input_sha256`` the SHA-256 of the data set as encoded on the wire, file meta excluded);
* with a forward target, makes a Structured Report and a Secondary Capture (:mod:`pneumoscan.dicom_out`: the
  heatmap overlay in scope, the film captioned NOT ASSESSED out of scope, as ``predict --dicom-out``) for the
  source study and writes them to the database's outbox in the result's own transaction, before the sender is
  answered; a background thread C-STOREs them to that PACS, trying again with a growing pause (1 s to 30 s by
  default) for ``forward_retention_hours`` (72 h), then marks them failed with why. A restart goes on with what
  is pending; delivery is at least once, each object keeping its SOP Instance UID (:mod:`.forward`,
  :mod:`pneumoscan.store.outbox`);
* recognises a SOP Instance UID it has scored: the same bytes again are answered success with nothing new stored
  or forwarded (one log line); other bytes under the same UID are scored as a new row marked ``uid_conflict``,
  with a warning;
* answers a file it cannot read with 0xC000 ("cannot understand", the reason in the Error Comment) and one log
  line, and keeps going. Log lines name an image by a hash of its SOP Instance UID, never by patient;
* ignores (with success, and without scoring) the SR and SC images it wrote itself, so that a PACS routing rule
  that sends everything to the node cannot make a loop: known exactly, by an SR/SC class with a SOP Instance UID
  under pneumoscan's root (:data:`pneumoscan.dicom_out.UID_ROOT`) or a UID its outbox holds, never by free text;
* on SIGTERM or SIGINT stops accepting associations, lets those open finish (at most ``grace_seconds``), sends
  what is due in the outbox while the PACS answers and time allows (the rest waits in the database), and returns.

Where things live: :mod:`.settings` (AE titles, allow list, forward target, accepted SOP classes and transfer
syntaxes, statuses), :mod:`.scp` (:class:`DicomNode`: associations and C-STORE handling), :mod:`.outgoing` (the
SR/SC as outbox objects; own output known by UID), :mod:`.forward` (the outbox's sender), :mod:`.status`
(``dicom-listen --status``: the backlog) and :func:`run` here (model, database, signals).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from pneumoscan.dicom_node.scp import DicomNode
from pneumoscan.dicom_node.settings import (
    ACCEPTED_SOP_CLASSES,
    ForwardTarget,
    NodeSettings,
    NodeStats,
    Status,
    parse_allow,
    validate_ae_title,
)
from pneumoscan.dicom_node.status import outbox_status

__all__ = ["ACCEPTED_SOP_CLASSES", "DicomNode", "ForwardTarget", "NodeSettings", "NodeStats", "Status",
           "outbox_status", "parse_allow", "run", "validate_ae_title"]

log = logging.getLogger(__name__)


def run(model_path: str | None = None, *, settings: NodeSettings | None = None, db: str | None = None,
        backend: str = "onnx", threads: int | None = 1) -> int:
    """Load the model and the worklist database, listen until SIGTERM or SIGINT, then shut down gracefully.

    ``backend`` and ``threads`` (intra-op threads per image scored at once) are the predictor's
    (:class:`pneumoscan.inference.scoring.RuntimeOptions`): ONNX Runtime with one thread per image by default.

    Returns:
        0 after a graceful shutdown.

    Raises:
        ConfigError: bad settings, or the port cannot be bound.
        CheckpointError: the model cannot be loaded.
    """
    from pathlib import Path

    from pneumoscan.inference.predictor import Predictor, RuntimeOptions, default_model_path
    from pneumoscan.store import WorklistStore

    settings = settings or NodeSettings()
    settings.check_exposure()  # before the slow model load
    if not log.isEnabledFor(logging.DEBUG):
        # pydicom logs every failed decoder attempt with a traceback, and pynetdicom every refused connection: the
        # node's own line per event says it all (--debug shows theirs too).
        logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    path = Path(model_path) if model_path else default_model_path()
    predictor = Predictor.from_checkpoint(path, options=RuntimeOptions(threads=threads, backend=backend))
    store = WorklistStore(db)
    node = DicomNode(predictor, store, settings)
    stop = threading.Event()
    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {s: signal.getsignal(s) for s in signals}

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            log.warning("second %s: aborting open associations now", signal.Signals(signum).name)
            node.abort_open()
            return
        log.info("%s received: no new associations; finishing the open ones", signal.Signals(signum).name)
        stop.set()

    for s in signals:
        signal.signal(s, on_signal)
    try:
        node.start()
        log.info("press Ctrl+C (or send SIGTERM) to stop")
        while not stop.wait(1.0):
            pass
        node.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        node.stop(grace_seconds=0)
        close = getattr(store, "close", None)
        if callable(close):
            close()
    return 0
