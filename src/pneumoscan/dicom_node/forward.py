"""Results back to the PACS: each image's Structured Report and Secondary Capture (:mod:`pneumoscan.dicom_out`),
C-STOREd from one background thread so that the sender never waits for them; a failure is retried, then logged,
never fatal."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pneumoscan.dicom_node.settings import ForwardTarget, NodeStats

if TYPE_CHECKING:
    from pneumoscan.result import Result

__all__ = ["Forwarder"]

log = logging.getLogger("pneumoscan.dicom_node")

#: C-STORE statuses after which the PACS holds the object: success, and the warnings (coercion, elements
#: discarded, data set does not match the SOP class).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class _Job:
    ref: str
    datasets: tuple[Any, ...]


class Forwarder:
    """Makes and sends the SR and SC of each scored image to ``target``, in the order they were scored.

    ``with_sc`` False sends the SR only. The queue holds at most ``max_queued``
    images' results; :meth:`submit` waits for room beyond that, slowing the sender rather than growing memory.
    """

    def __init__(self, target: ForwardTarget, *, ae_title: str, with_sc: bool, stats: NodeStats, attempts: int = 3,
                 retry_seconds: float = 2.0, max_queued: int = 64) -> None:
        self.target = target
        self.ae_title = ae_title
        self.with_sc = with_sc
        self.stats = stats
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._loop, name="pneumoscan-forward", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then stop the thread."""
        self._queue.put(None)
        self._thread.join(max(1.0, timeout))
        if self._thread.is_alive():
            log.warning("%d image(s)' results not forwarded to %s before shutdown", self._queue.qsize(), self.target)

    def submit(self, ref: str, header: Any, result: Result) -> None:
        """Make the SR and, when the result kept its film (the model could explain it), the SC of one image's
        :class:`~pneumoscan.result.Result` now, in the caller's thread, and queue them: the queue then holds two
        small data sets, not the film. As ``predict --dicom-out`` does, the SC shows the heatmap overlay in scope,
        and the film alone, captioned "Not assessed", out of scope. A result that cannot be made (e.g. a source
        without its study UIDs) is logged and counted; it never raises."""
        from pneumoscan.dicom_out import make_sc, make_sr
        from pneumoscan.errors import PneumoscanError

        try:
            datasets = [make_sr(header, result)]
            if self.with_sc and result.film is not None:
                datasets.append(make_sc(header, result))
        except (PneumoscanError, ValueError) as exc:
            self.stats.add("forward_failed")
            log.warning("sop %s: no SR/SC made, nothing forwarded for it: %s", ref, " ".join(str(exc).split())[:300])
            return
        except Exception:
            self.stats.add("forward_failed")
            log.exception("sop %s: the SR/SC could not be made; nothing forwarded for it", ref)
            return
        self._queue.put(_Job(ref, tuple(datasets)))

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._send(job)
            except Exception:
                self.stats.add("forward_failed", len(job.datasets))
                log.exception("sop %s: forwarding failed unexpectedly", job.ref)

    def _send(self, job: _Job) -> None:
        """C-STORE one job's data sets in one association; retry the ones not yet stored."""
        pending, why = list(job.datasets), ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                time.sleep(self.retry_seconds)
            pending, why = self._store(pending)
            if not pending:
                self.stats.add("forwarded", len(job.datasets))
                log.info("sop %s: %d result(s) stored on %s", job.ref, len(job.datasets), self.target)
                return
        self.stats.add("forward_failed", len(pending))
        log.warning("sop %s: %d result(s) not stored on %s after %d attempt(s): %s", job.ref, len(pending),
                    self.target, self.attempts, why)

    def _store(self, datasets: list[Any]) -> tuple[list[Any], str]:
        """One association to the target; returns the data sets not stored and why."""
        from pydicom import uid
        from pynetdicom import AE

        ae = AE(ae_title=self.ae_title)
        for ds in datasets:
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) or uid.ExplicitVRLittleEndian
            ae.add_requested_context(ds.SOPClassUID, list(dict.fromkeys([str(ts), uid.ExplicitVRLittleEndian])))
        assoc = ae.associate(self.target.host, self.target.port, ae_title=self.target.ae_title)
        if not assoc.is_established:
            return datasets, "association rejected, or the PACS could not be reached"
        left, why = [], ""
        try:
            for ds in datasets:
                try:
                    status = assoc.send_c_store(ds)
                except Exception as exc:  # noqa: BLE001 - e.g. the PACS accepted no context for this SOP class
                    left.append(ds)
                    why = f"{type(exc).__name__}: {exc}"
                    continue
                code = int(getattr(status, "Status", -1)) if status else -1
                if code not in _STORED:
                    left.append(ds)
                    why = f"status 0x{code:04X}" if code >= 0 else "no response (connection lost or timed out)"
        finally:
            if assoc.is_established:
                assoc.release()
        return left, why
