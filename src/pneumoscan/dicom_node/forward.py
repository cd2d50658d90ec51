"""Results back to the PACS from the outbox (:mod:`pneumoscan.store.outbox`): one background thread C-STOREs each
result's SR and SC, as the node stored them (Part 10 bytes, so a retry sends the same object with the same SOP
Instance UID), and records each outcome in the database.

* An object the PACS did not store is tried again after a pause that doubles from ``retry_seconds`` up to
  ``retry_max_seconds``, for as long as ``retention_hours`` allows; then it is marked failed, with why.
* A PACS that cannot be reached is probed with the same growing pause (it is one PACS: the objects wait together);
  the first association that succeeds sends everything still pending at once.
* Nothing is held only in memory: after a crash or a restart the sender goes on with what the database holds.
  Delivery is at least once (a crash between the PACS's answer and the database's mark sends the object again).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pneumoscan.dicom_node.settings import ForwardTarget, NodeStats

if TYPE_CHECKING:
    from pneumoscan.store import WorklistStore
    from pneumoscan.store.outbox import DueItem

__all__ = ["OutboxSender", "pause_after"]

log = logging.getLogger("pneumoscan.dicom_node")

#: C-STORE statuses after which the PACS holds the object: success, and the warnings (coercion, elements
#: discarded, data set does not match the SOP class).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}
#: Longest wait between two looks at the outbox when nothing is due (another process may have added items).
_IDLE_SECONDS = 5.0


def pause_after(failures: int, first: float, longest: float) -> float:
    """Seconds to wait after ``failures`` failed tries in a row: ``first``, doubling, at most ``longest``."""
    return min(longest, first * 2.0 ** max(0, failures - 1))


class OutboxSender:
    """Sends the outbox of ``store`` to ``target`` from one background thread (``start``, ``wake``, ``close``).

    Args:
        store: the worklist database holding the outbox.
        target: the PACS.
        ae_title: the node's AE title (the calling AE title of its associations).
        stats: the node's counters (``forwarded``, ``forward_failed``).
        retention_hours: how long an object may wait; older pending ones are marked failed.
        retry_seconds, retry_max_seconds: the first pause after a failed try, and the longest.
        batch: objects sent per association at most (their bytes are read one at a time).
    """

    def __init__(self, store: WorklistStore, target: ForwardTarget, *, ae_title: str, stats: NodeStats,
                 retention_hours: float = 72.0, retry_seconds: float = 1.0, retry_max_seconds: float = 30.0,
                 batch: int = 100) -> None:
        self.store = store
        self.target = target
        self.ae_title = ae_title
        self.stats = stats
        self.retention = timedelta(hours=retention_hours)
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = max(retry_seconds, retry_max_seconds)
        self.batch = batch
        self._wake = threading.Event()
        self._stopping = False
        self._deadline = float("inf")
        self._failures = 0  # associations in a row that could not be made
        self._down_until = 0.0  # monotonic time of the next probe of a PACS that did not answer
        self._thread = threading.Thread(target=self._loop, name="pneumoscan-forward", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        try:
            pending = self.store.outbox.counts()["pending"]
        except Exception:  # noqa: BLE001 - the loop will say what is wrong with the database
            pending = 0
        if pending:
            log.info("outbox: %d result object(s) waiting from before; sending them to %s", pending, self.target)
        self._thread.start()

    def wake(self) -> None:
        """New objects are in the outbox: look now (unless the PACS is known to be down: they wait for its probe)."""
        self._wake.set()

    def close(self, timeout: float) -> None:
        """Stop: send what is due while the PACS answers and ``timeout`` seconds allow, then end the thread. What
        is left stays in the outbox for the next start."""
        self._stopping = True
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._wake.set()
        self._thread.join(max(1.0, timeout) + 5.0)
        try:
            pending = self.store.outbox.counts()["pending"]
        except Exception:  # noqa: BLE001
            return
        if pending:
            log.warning("%d result object(s) not yet stored on %s: kept in the outbox of %s, sent when the node "
                        "starts again", pending, self.target, self.store.where)

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = self._round()
            except Exception:
                log.exception("outbox: an unexpected error while sending to %s; trying again", self.target)
                delay = self.retry_max_seconds
            if self._stopping:
                if delay > 0 or time.monotonic() >= self._deadline:
                    return
                continue
            if delay > 0:
                self._wake.wait(delay)

    def _round(self) -> float:
        """Give up what is past retention, then send one batch of what is due; returns how long to wait."""
        now = datetime.now(UTC)
        self._expire(now)
        down_for = self._down_until - time.monotonic()
        if down_for > 0:
            return down_for
        due = self.store.outbox.due(self.batch, now)
        if not due:
            nxt = self.store.outbox.next_due()
            if nxt is None:
                return _IDLE_SECONDS
            return min(_IDLE_SECONDS, max(0.05, (nxt - datetime.now(UTC)).total_seconds()))
        self._send(due)
        return 0.0

    def _expire(self, now: datetime) -> None:
        hours = self.retention.total_seconds() / 3600
        gone = self.store.outbox.expire(now - self.retention, f"not stored on {self.target} within {hours:g} h")
        if gone:
            self.stats.add("forward_failed", len(gone))
            log.warning("outbox: %d result object(s) given up after %g h without reaching %s (marked failed; see "
                        "dicom-listen --status)", len(gone), hours, self.target)

    def _send(self, due: Sequence[DueItem]) -> None:
        """One association: C-STORE the due objects, recording each outcome."""
        from pydicom import dcmread, uid
        from pynetdicom import AE

        ae = AE(ae_title=self.ae_title)
        ae.connection_timeout = 10
        ae.acse_timeout = ae.dimse_timeout = 30
        ae.network_timeout = 60
        for sop_class, ts in dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in due):
            syntaxes = [ts or uid.ExplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian]
            ae.add_requested_context(sop_class, list(dict.fromkeys(str(s) for s in syntaxes)))
        assoc = ae.associate(self.target.host, self.target.port, ae_title=self.target.ae_title)
        if not assoc.is_established:
            self._unreachable(due, "association rejected by the PACS" if assoc.is_rejected
                              else "the PACS could not be reached")
            return
        if self._failures:
            woke = self.store.outbox.all_due()
            log.info("outbox: %s answers again after %d failed association(s); sending the %d object(s) waiting",
                     self.target, self._failures, len(due) + woke)
            self._failures, self._down_until = 0, 0.0
        stored = 0
        try:
            for item in due:
                if self._stopping and time.monotonic() >= self._deadline:
                    break
                if not assoc.is_established:  # the connection went: what is left stays due
                    break
                data = self.store.outbox.data(item.id)
                if not data:  # delivered or removed meanwhile
                    continue
                try:
                    ds = dcmread(io.BytesIO(data))
                    del data
                    status = assoc.send_c_store(ds)
                except Exception as exc:  # noqa: BLE001 - e.g. the PACS accepted no context for this SOP class
                    self._failed(item, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
                    continue
                code = int(getattr(status, "Status", -1)) if status else -1
                if code in _STORED:
                    self.store.outbox.delivered(item.id, str(self.target))
                    self.stats.add("forwarded")
                    stored += 1
                    log.debug("outbox item %d (%s of row %d) stored on %s", item.id, item.kind, item.result_id,
                              self.target)
                else:
                    self._failed(item, f"status 0x{code:04X}" if code >= 0
                                 else "no response (connection lost or timed out)")
        finally:
            if assoc.is_established:
                assoc.release()
        if stored:
            log.info("outbox: %d result object(s) stored on %s", stored, self.target)

    def _unreachable(self, due: Sequence[DueItem], why: str) -> None:
        """No association: every object tried waits for the next probe of the PACS (a pause that grows)."""
        self._failures += 1
        pause = pause_after(self._failures, self.retry_seconds, self.retry_max_seconds)
        self._down_until = time.monotonic() + pause
        self.store.outbox.retry([i.id for i in due], why, datetime.now(UTC) + timedelta(seconds=pause),
                                str(self.target))
        emit: Any = log.warning if self._failures == 1 else log.info
        emit("outbox: %s: %s (%d time(s) in a row); %d result object(s) wait in the database, next try in %.3g s",
             self.target, why, self._failures, len(due), pause)

    def _failed(self, item: DueItem, why: str) -> None:
        """The PACS did not store one object: it alone waits a pause that grows with its own tries."""
        pause = pause_after(item.attempts + 1, self.retry_seconds, self.retry_max_seconds)
        self.store.outbox.retry([item.id], why, datetime.now(UTC) + timedelta(seconds=pause), str(self.target))
        log.warning("outbox item %d (%s of row %d) not stored on %s: %s; try %d, next in %.3g s", item.id, item.kind,
                    item.result_id, self.target, why, item.attempts + 1, pause)
