"""The Storage SCP: associations, C-STORE handling, scoring and recording (see :mod:`pneumoscan.dicom_node`)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Self

from pneumoscan.dicom_node.forward import OutboxSender
from pneumoscan.dicom_node.outgoing import is_own_output, objects_for_pacs
from pneumoscan.dicom_node.settings import (
    ACCEPTED_SOP_CLASSES,
    VERIFICATION,
    NodeSettings,
    NodeStats,
    Status,
    decodable_transfer_syntaxes,
)
from pneumoscan.errors import ConfigError, ImageError
from pneumoscan.io.budget import MemoryBudget

if TYPE_CHECKING:
    from pneumoscan.inference.protocols import ResultMaker
    from pneumoscan.store import Received, WorklistStore

__all__ = ["DicomNode"]

log = logging.getLogger("pneumoscan.dicom_node")


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
        self._budget = MemoryBudget(self.settings.memory_budget_bytes)  # the server's, for the images being decoded
        self._held = threading.local()  # what this association's thread holds of it for its current image
        self._ae: Any = None
        self._server: Any = None
        self._sender: OutboxSender | None = None
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
        from pynetdicom import evt

        from pneumoscan.dicom_node.guard import Door, NodeAE

        s = self.settings
        s.check_exposure()
        ae = NodeAE(ae_title=s.ae_title)
        # A connection waits at the door until its first byte (so silent sockets count toward no limit), then has
        # association_timeout to send its whole A-ASSOCIATE-RQ (the ACSE timeout); see .guard.
        ae.door = Door(per_peer=s.max_associations_per_peer, total=s.max_associations, timeout=s.association_timeout)
        ae.acse_timeout = s.association_timeout
        ae.require_called_aet = True
        ae.require_calling_aet = list(s.allow)
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu_bytes
        syntaxes = decodable_transfer_syntaxes()
        for sop in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop, syntaxes)
        ae.add_supported_context(VERIFICATION)
        handlers = [(evt.EVT_C_STORE, self._on_c_store), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_CONN_OPEN, self._on_connection),
                    (evt.EVT_REQUESTED, self._on_requested)]
        try:
            self._server = ae.start_server((s.host, s.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {s.host}:{s.port} ({exc.strerror or exc}); is another DICOM node "
                              "using that port? choose another with --port") from exc
        self._ae = ae
        self._start_sender()
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
        if self._sender is not None:
            self._sender.close(deadline - time.monotonic())
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
        """One log line per association pynetdicom rejected, with the reason it gave (the A-ASSOCIATE-RJ's)."""
        assoc, s = event.assoc, self.settings
        rj = getattr(assoc.acceptor, "primitive", None)
        code = (getattr(rj, "result", None), getattr(rj, "result_source", None), getattr(rj, "diagnostic", None))
        if code == (0x01, 0x01, 0x03):
            why = f"calling AE title {_calling(assoc)!r} is not in --allow"
        elif code == (0x01, 0x01, 0x07):
            why = f"called AE title {_called(assoc)!r} is not this node's ({s.ae_title})"
        elif code == (0x02, 0x03, 0x02):
            why = f"too many associations open at once (--max-associations {s.max_associations})"
        elif code == (0x02, 0x02, 0x01):
            why = "its user identity was not accepted"
        else:
            why = "result {}, source {}, reason {}".format(*code)
        _log_rejection(assoc, why)

    def _on_connection(self, event: Any) -> None:
        """A connection passed the door: check every PDU's declared length before it is read (:mod:`.guard`)."""
        from pneumoscan.dicom_node.guard import guard_pdus

        guard_pdus(event.assoc, self.settings.max_pdu_bytes)

    def _on_requested(self, event: Any) -> None:
        """An A-ASSOCIATE-RQ arrived: reject it (transient, local limit exceeded) when its peer (IP address) already
        has ``max_associations_per_peer`` associations; pynetdicom checks the rest (AE titles, the total), and a
        request it will refuse for its AE titles is left to it, so that the log says that reason."""
        assoc, s = event.assoc, self.settings
        limit, peer = s.max_associations_per_peer, str(assoc.requestor.address)
        try:
            rq = assoc.requestor.primitive
            calling, called = str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip()
        except Exception:  # noqa: BLE001 - pynetdicom's negotiation refuses a request it cannot read
            return
        if (s.allow and calling not in s.allow) or called != s.ae_title:
            return
        mine = [a for a in (self._ae.active_associations if self._ae is not None else ())
                if a is not assoc and a.is_acceptor and str(a.requestor.address) == peer
                and not (a.is_rejected or a.is_aborted or a.is_released)]
        if len(mine) < limit:
            return
        assoc.acse.send_reject(0x02, 0x03, 0x02)
        _log_rejection(assoc, f"too many associations from {peer} ({len(mine)} open; --max-associations-per-peer "
                              f"{limit})")
        assoc.kill()  # as pynetdicom does after its own rejections: the A-ASSOCIATE-RJ goes out first

    def _on_c_store(self, event: Any) -> Any:
        """pynetdicom's C-STORE handler: a deflated data set is parsed here with a bound (:func:`pneumoscan.io.
        read_dicom_dataset`; pynetdicom's ``event.dataset`` would inflate it whole, whatever its size), then
        :meth:`_on_store`. The memory budget this image held (:meth:`_decode`) is given back once it is answered."""
        from pneumoscan.io import read_dicom_dataset
        from pneumoscan.io.deflated import is_deflated

        try:
            syntax = getattr(getattr(event, "context", None), "transfer_syntax", None)
            if not is_deflated(syntax):
                return self._on_store(event)
            ref = _ref(str(event.request.AffectedSOPInstanceUID or ""))
            try:
                ds = read_dicom_dataset(event.encoded_dataset(include_meta=False), syntax, name=f"sop {ref}",
                                        max_pixels=self.settings.max_pixels)
            except (ImageError, MemoryError) as exc:
                n = self.stats.add("received")
                self.stats.add("failed")
                reason = exc.reason if isinstance(exc, ImageError) else "not enough memory to inflate it"
                log.warning("image %d from %s (sop %s) refused with 0xC000: its deflated data set cannot be used: %s",
                            n, _calling(event.assoc), ref, reason)
                return _status(Status.CANNOT_UNDERSTAND, "deflated data set refused: " + (
                    "inflates past its bound" if "deflate" in reason else reason))
            return self._on_store(_Received(event, ds))
        finally:
            self._release_budget()

    def _decode(self, ds: Any, *, source: str, n: int, calling: str, ref: str, digest: str) -> tuple[Any, Any]:
        """Decode one received film within the node's memory budget (the server's, :mod:`pneumoscan.io.budget`): the
        header is checked (pixel limit, frames, encoding) and the decoding memory estimated before any pixel is
        decoded; that estimate is held until the image is answered (:meth:`_on_c_store`), scoring and heatmap
        included.

        Returns:
            ``(film, None)``; or ``(None, status)`` for a refused film: 0xC000 for one that cannot be read (recorded
            in the worklist), 0xA700 (out of resources) for one that does not fit the memory budget, or when memory
            ran out. Each refusal is one log line.
        """
        from pneumoscan.io import ImageMemoryError, read_image_info
        from pneumoscan.io.budget import BudgetExceeded, BudgetTimeout, estimate_decode_bytes

        s, mib = self.settings, 1024 * 1024
        self._release_budget()  # what this thread may still hold for an earlier image (handle_store called directly)
        need = 0
        try:
            info = read_image_info(ds, name=source, max_pixels=s.max_pixels)
            need = estimate_decode_bytes(info, heatmap=self._explain)
            self._budget.acquire(need, timeout=s.budget_wait_seconds)
            self._held.nbytes = need
            return self.predictor.read(ds, full=self._explain, name=source, max_pixels=s.max_pixels), None
        except BudgetExceeded:
            why = (f"it needs about {need // mib:,} MiB to decode; the node's memory budget is "
                   f"{s.memory_budget_bytes // mib:,} MiB (--memory-budget-mb)")
            return None, self._out_of_resources(n, calling, ref, why, "image too large for the memory budget")
        except BudgetTimeout:
            why = (f"no room in the memory budget ({s.memory_budget_bytes // mib:,} MiB) within "
                   f"{s.budget_wait_seconds:g} s, other images are being decoded")
            return None, self._out_of_resources(n, calling, ref, why, "busy: memory budget full, send it again later")
        except (ImageMemoryError, MemoryError):
            self._release_budget()
            return None, self._out_of_resources(n, calling, ref, "not enough memory to decode it",
                                                "not enough memory to decode the image")
        except ImageError as exc:
            self._release_budget()
            self._record_error(ds, digest, ref, calling, exc.reason)
            return None, self._refuse(n, calling, ref, exc.reason, exc)

    def _release_budget(self) -> None:
        nbytes = getattr(self._held, "nbytes", 0)
        if nbytes:
            self._held.nbytes = 0
            self._budget.release(nbytes)

    def _out_of_resources(self, n: int, calling: str, ref: str, why: str, comment: str) -> Any:
        self.stats.add("failed")
        log.warning("image %d from %s (sop %s): answered 0xA700 (out of resources): %s", n, calling, ref, why)
        return _status(Status.OUT_OF_RESOURCES, comment)

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
        if is_own_output(ds, self.store, ref):
            self.stats.add("ignored")
            log.info("image %d from %s (sop %s): pneumoscan's own result, not scored", n, calling, ref)
            return Status.SUCCESS
        digest = hashlib.sha256(body).hexdigest()
        known = self._known(ds, digest, ref)
        if known.duplicate_of is not None:
            return self._duplicate(n, calling, ref, known.duplicate_of)
        source = f"sop {ref}"
        film, refusal = self._decode(ds, source=source, n=n, calling=calling, ref=ref, digest=digest)
        if film is None:
            return refusal
        with self._slots:
            result = self.predictor.assess(film, source=source, explain=self._explain, keep_film=self._explain)
        # The SR and SC are made now and stored with the result, in its transaction, before the sender is answered:
        # once it hears success, the database holds everything the PACS is to receive (the outbox).
        outgoing = objects_for_pacs(ds, result, ref, self.stats) if self.settings.forward is not None else ()
        try:
            row, known = self.store.add_received(result, input_sha256=digest, filename_hash=ref, client=calling,
                                                 outbox=outgoing, forward_to=str(self.settings.forward or ""))
        except Exception:
            self.stats.add("failed")
            log.exception("image %d from %s (sop %s): scored but the worklist database refused it; answered 0xA700",
                          n, calling, ref)
            return _status(Status.OUT_OF_RESOURCES, "pneumoscan: the worklist database is unavailable")
        if known.duplicate_of is not None:  # the same bytes were stored meanwhile, from another association
            return self._duplicate(n, calling, ref, known.duplicate_of)
        self.stats.add("scored")
        outcome = (f"{result.decision} p={result.probability:.3f} (threshold {result.threshold:.3f})"
                   + ("; unfamiliar film, scored with a caution" if result.scope_caution else "")
                   if result.assessed else f"OUT_OF_SCOPE ({result.scope_reason})")
        log.info("image %d from %s (sop %s, %s): %s, row %s, %.2f s", n, calling, ref,
                 ACCEPTED_SOP_CLASSES[sop_class], outcome, row, time.perf_counter() - t0)
        if known.conflicts_with:
            log.warning("image %d from %s (sop %s): this SOP Instance UID came before with other pixels (row(s) %s); "
                        "scored again as row %s, marked uid_conflict for a person to sort out", n, calling, ref,
                        ", ".join(map(str, known.conflicts_with[:5])), row)
        if outgoing and self._sender is not None:
            self._sender.wake()
        return Status.SUCCESS

    def _start_sender(self) -> None:
        """With a forward target, start the outbox's sender (it goes on with what an earlier run left pending);
        without one, say what waits in the outbox unsent."""
        s = self.settings
        if s.forward is not None:
            self._sender = OutboxSender(self.store, s.forward, ae_title=s.ae_title, stats=self.stats,
                                        retention_hours=s.forward_retention_hours,
                                        retry_seconds=s.forward_retry_seconds,
                                        retry_max_seconds=s.forward_retry_max_seconds)
            self._sender.start()
            return
        try:
            pending = self.store.outbox.counts()["pending"]
        except Exception:  # noqa: BLE001 - a store without an outbox, or a database that fails: said elsewhere
            return
        if pending:
            log.warning("%d result object(s) wait in the outbox for a PACS, but this node has no --forward: they "
                        "are sent when it runs with one", pending)

    def _known(self, ds: Any, digest: str, ref: str) -> Received:
        """What the database knows of this image's SOP Instance UID: scored before from the same bytes, or from
        others (see :meth:`pneumoscan.store.WorklistStore.received`)."""
        from pneumoscan.store import Received

        try:
            return self.store.received(str(ds.get("SOPInstanceUID", "") or ""), digest)
        except Exception:  # noqa: BLE001 - checked again when the result is stored
            log.warning("sop %s: the worklist database could not say whether this image came before", ref)
            return Received()

    def _duplicate(self, n: int, calling: str, ref: str, row: int) -> Any:
        self.stats.add("duplicates")
        log.info("image %d from %s (sop %s): already scored as row %s from the same SOP Instance UID and bytes; "
                 "answered success, nothing new stored or forwarded", n, calling, ref, row)
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


def _status(code: int, comment: str = "") -> Any:
    """A C-STORE response status, with an Error Comment (64 characters at most) for a failure."""
    if not comment:
        return code
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = "".join(ch for ch in comment if 32 <= ord(ch) < 127 and ch != "\\")[:64]
    return ds


class _Received:
    """A C-STORE event whose data set the node parsed itself (a deflated one, inflated with a bound): ``dataset`` is
    that parse; everything else is pynetdicom's event."""

    def __init__(self, event: Any, dataset: Any) -> None:
        self._event = event
        self.dataset = dataset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._event, name)


def _log_rejection(assoc: Any, why: str) -> None:
    calling = _calling(assoc)
    if calling == "?":  # before pynetdicom's negotiation, the title is only in the request
        try:
            calling = str(assoc.requestor.primitive.calling_ae_title).strip() or "?"
        except Exception:  # noqa: BLE001
            pass
    log.warning("association from calling AE %s at %s rejected: %s", calling, assoc.requestor.address, why)


def _called(assoc: Any) -> str:
    try:
        title = assoc.requestor.primitive.called_ae_title
        return (title.decode("ascii", "replace") if isinstance(title, bytes) else str(title)).strip()
    except Exception:  # noqa: BLE001
        return "?"


def _calling(assoc: Any) -> str:
    try:
        title = assoc.requestor.ae_title
        return (title.decode("ascii", "replace") if isinstance(title, bytes) else str(title)).strip() or "?"
    except Exception:  # noqa: BLE001
        return "?"
