"""The Storage SCP: associations, C-STORE handling, scoring and recording (see :mod:`pneumoscan.dicom_node`)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Self

from pneumoscan.dicom_node.forward import Forwarder
from pneumoscan.dicom_node.settings import (
    ACCEPTED_SOP_CLASSES,
    VERIFICATION,
    NodeSettings,
    NodeStats,
    Status,
    decodable_transfer_syntaxes,
)
from pneumoscan.errors import ConfigError, ImageError

if TYPE_CHECKING:
    from pneumoscan.inference.protocols import ResultMaker
    from pneumoscan.store import WorklistStore

__all__ = ["DicomNode"]

log = logging.getLogger("pneumoscan.dicom_node")

_TAG = "pneumoscan"  # in the Manufacturer / software tags of what dicom_out writes: how the node knows its own output


class DicomNode:
    """The Storage SCP over one predictor (:class:`~pneumoscan.inference.protocols.ResultMaker`: a
    :class:`~pneumoscan.inference.predictor.Predictor`) and one :class:`~pneumoscan.store.WorklistStore` (safe to
    call from many threads).

    ``start()`` listens in background threads and returns; ``stop()`` shuts down gracefully.
    """

    def __init__(self, predictor: ResultMaker, store: WorklistStore, settings: NodeSettings | None = None) -> None:
        self.predictor = predictor
        self.store = store
        self.settings = settings or NodeSettings()
        self.stats = NodeStats()
        self._slots = threading.BoundedSemaphore(self.settings.workers)
        self._ae: Any = None
        self._server: Any = None
        self._forwarder: Forwarder | None = None
        # The heatmap (for the SC) only when results go to a PACS.
        self._explain = self.settings.forward is not None
        self._stopped = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the node listens on (the real port when started on port 0)."""
        if self._server is None:
            return self.settings.host, self.settings.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        """Start listening (in background threads) and return :attr:`address`.

        Raises:
            ConfigError: off loopback without an allow list; the port is taken or cannot be bound.
        """
        from pynetdicom import AE, evt

        s = self.settings
        s.check_exposure()
        ae = AE(ae_title=s.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(s.allow)
        ae.maximum_associations = s.max_associations
        syntaxes = decodable_transfer_syntaxes()
        for sop in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop, syntaxes)
        ae.add_supported_context(VERIFICATION)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_ACCEPTED, self._on_accepted)]
        try:
            self._server = ae.start_server((s.host, s.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {s.host}:{s.port} ({exc.strerror or exc}); is another DICOM node "
                              "using that port? choose another with --port") from exc
        self._ae = ae
        if s.forward is not None:
            self._forwarder = Forwarder(s.forward, ae_title=s.ae_title, with_sc=self._explain,
                                        stats=self.stats, attempts=s.forward_attempts,
                                        retry_seconds=s.forward_retry_seconds)
            self._forwarder.start()
        host, port = self.address
        who = ", ".join(s.allow) if s.allow else "any calling AE title"
        log.info("DICOM node %s listening on %s:%d (model %s, version %s); accepting CR, DX and SC images from %s; "
                 "results to %s%s", s.ae_title, host, port, self.predictor.model_name, self.predictor.version, who,
                 getattr(self.store, "where", "the worklist database"),
                 f"; forwarding SR and SC results to {s.forward}" if s.forward else "")
        return host, port

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop accepting associations, let the open ones finish (then abort what is left), send the queued
        results, and log the counts. Safe to call twice."""
        if self._stopped.is_set() or self._server is None:
            return
        self._stopped.set()
        grace = self.settings.grace_seconds if grace_seconds is None else grace_seconds
        deadline = time.monotonic() + grace
        if self._server is not None:
            self._server.shutdown()  # no new associations from here on
        if self._ae is not None:
            open_ = [a for a in self._ae.active_associations]
            if open_:
                log.info("waiting up to %.0f s for %d open association(s) to finish", grace, len(open_))
            for assoc in open_:
                assoc.join(max(0.0, deadline - time.monotonic()))
                if assoc.is_alive():
                    log.warning("aborting an association from %s still open after %.0f s",
                                _calling(assoc), grace)
                    assoc.abort()
        if self._forwarder is not None:
            self._forwarder.close(deadline - time.monotonic())
        log.info("DICOM node %s stopped: %s", self.settings.ae_title, self.stats.line())

    def abort_open(self) -> None:
        """Abort every open association now (a second Ctrl+C: the operator does not want to wait)."""
        if self._ae is not None:
            for assoc in list(self._ae.active_associations):
                assoc.abort()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ events

    def _on_accepted(self, event: Any) -> None:
        log.debug("association accepted from %s at %s", _calling(event.assoc), event.assoc.requestor.address)

    def _on_rejected(self, event: Any) -> None:
        log.warning("association from calling AE %s at %s rejected (not in --allow, or not addressed to %s)",
                    _calling(event.assoc), event.assoc.requestor.address, self.settings.ae_title)

    def _on_store(self, event: Any) -> Any:
        """Handle one C-STORE: never raises (pynetdicom would answer 0xC211 and log a traceback)."""
        try:
            return self.handle_store(event)
        except Exception:
            log.exception("an unexpected error while storing an image; answered 0x0110 (processing failure)")
            self.stats.add("failed")
            return _status(Status.PROCESSING_FAILURE, "pneumoscan: internal error, see the node's log")

    def handle_store(self, event: Any) -> Any:
        """Score one received image and record it; returns the C-STORE status (an int, or a status data set with
        an Error Comment). The data set is decoded once (``event.dataset``, pynetdicom's cached decode) and handed
        on: to the own-output check, the decoder, the store and the forwarder; its bytes are only hashed."""
        t0 = time.perf_counter()
        n = self.stats.add("received")
        calling = _calling(event.assoc)
        sop_class = str(event.request.AffectedSOPClassUID or "")
        ref = _ref(str(event.request.AffectedSOPInstanceUID or ""))
        if sop_class not in ACCEPTED_SOP_CLASSES:  # not reachable through pynetdicom's negotiation; kept as a guard
            self.stats.add("failed")
            log.warning("image %d from %s (sop %s): SOP class %s is not supported", n, calling, ref, sop_class)
            return Status.SOP_CLASS_NOT_SUPPORTED
        try:
            body = event.encoded_dataset(include_meta=False)  # the bytes as received: hashed, never parsed
            ds = event.dataset
            ds.file_meta = event.file_meta
            received_class = str(ds.get("SOPClassUID", ""))
        except Exception as exc:  # noqa: BLE001 - a data set pydicom cannot parse
            return self._refuse(n, calling, ref, f"the DICOM data set could not be parsed ({type(exc).__name__})")
        if received_class != sop_class:
            self.stats.add("failed")
            log.warning("image %d from %s (sop %s): its SOP Class UID does not match the C-STORE's; answered "
                        "0xA900", n, calling, ref)
            return _status(Status.DATASET_MISMATCH, "SOP Class UID differs from the C-STORE request")
        if _is_own_output(ds):
            self.stats.add("ignored")
            log.info("image %d from %s (sop %s): pneumoscan's own result, not scored", n, calling, ref)
            return Status.SUCCESS
        digest = hashlib.sha256(body).hexdigest()
        source = f"sop {ref}"
        try:
            film = self.predictor.read(ds, full=self._explain, name=source, max_pixels=self.settings.max_pixels)
        except ImageError as exc:
            self._record_error(ds, digest, ref, calling, exc.reason)
            return self._refuse(n, calling, ref, exc.reason, exc)
        except MemoryError:
            self.stats.add("failed")
            log.warning("image %d from %s (sop %s): not enough memory to decode it; answered 0xA700", n, calling, ref)
            return _status(Status.OUT_OF_RESOURCES, "not enough memory to decode the image")
        with self._slots:
            result = self.predictor.assess(film, source=source, explain=self._explain, keep_film=self._explain)
        try:
            row = self.store.add(result, input_sha256=digest, source="dicom", filename_hash=ref, client=calling)
        except Exception:
            self.stats.add("failed")
            log.exception("image %d from %s (sop %s): scored but the worklist database refused it; answered 0xA700",
                          n, calling, ref)
            return _status(Status.OUT_OF_RESOURCES, "pneumoscan: the worklist database is unavailable")
        self.stats.add("scored")
        outcome = (f"{result.decision} p={result.probability:.3f} (threshold {result.threshold:.3f})"
                   if result.assessed else f"OUT_OF_SCOPE ({result.scope_reason})")
        log.info("image %d from %s (sop %s, %s): %s, row %s, %.2f s", n, calling, ref,
                 ACCEPTED_SOP_CLASSES[sop_class], outcome, row, time.perf_counter() - t0)
        if self._forwarder is not None:
            self._forwarder.submit(ref, ds, result)
        return Status.SUCCESS

    def _record_error(self, ds: Any, digest: str, ref: str, calling: str, reason: str) -> None:
        """Record a refused image in the worklist database (its header's context when readable), so the worklist
        and the audit show what a PACS sent and why it was not scored; a database failure here is only logged."""
        from pneumoscan.io import read_image_context
        from pneumoscan.result import Result

        try:
            context = read_image_context(ds)
        except Exception:  # noqa: BLE001 - a header too damaged to read: the row keeps the hash only
            context = None
        try:
            self.store.add(Result.unread(f"sop {ref}", reason, self.predictor.identity, context=context),
                           input_sha256=digest, source="dicom", filename_hash=ref, client=calling)
        except Exception:
            log.exception("sop %s: the refusal could not be recorded in the worklist database", ref)

    def _refuse(self, n: int, calling: str, ref: str, reason: str, exc: BaseException | None = None) -> Any:
        self.stats.add("failed")
        log.warning("image %d from %s (sop %s) refused with 0xC000: %s", n, calling, ref, reason)
        if exc is not None:
            log.debug("decoding sop %s failed", ref, exc_info=exc)
        return _status(Status.CANNOT_UNDERSTAND, reason)


def _ref(sop_uid: str) -> str:
    """How log lines and the database name an image: 12 hex digits of the SHA-256 of its SOP Instance UID."""
    return hashlib.sha256(sop_uid.strip().encode("ascii", "replace")).hexdigest()[:12]


def _is_own_output(ds: Any) -> bool:
    """True for a data set pneumoscan wrote (its SR or SC), judged by the tags dicom_out fills."""
    for keyword in ("Manufacturer", "ManufacturerModelName", "SoftwareVersions", "SeriesDescription"):
        try:
            value = ds.get(keyword, "")
        except Exception:  # noqa: BLE001, S112 - a damaged optional tag says nothing
            continue
        values = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
        if any(_TAG in str(v).lower() for v in values):
            return True
    return False


def _status(code: int, comment: str = "") -> Any:
    """A C-STORE response status, with an Error Comment (64 characters at most) for a failure."""
    if not comment:
        return code
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = "".join(ch for ch in comment if 32 <= ord(ch) < 127 and ch != "\\")[:64]
    return ds


def _calling(assoc: Any) -> str:
    try:
        title = assoc.requestor.ae_title
        return (title.decode("ascii", "replace") if isinstance(title, bytes) else str(title)).strip() or "?"
    except Exception:  # noqa: BLE001
        return "?"
