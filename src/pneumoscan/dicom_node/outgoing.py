"""What the node sends back and what it knows as its own: the SR and SC of a result as outbox objects, and the exact
test for a data set pneumoscan made (so a PACS routing everything to the node cannot make a loop)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pneumoscan.dicom_node.settings import NodeStats
    from pneumoscan.result import Result
    from pneumoscan.store import OutgoingObject, WorklistStore

__all__ = ["is_own_output", "objects_for_pacs"]

log = logging.getLogger("pneumoscan.dicom_node")


def objects_for_pacs(ds: Any, result: Result, ref: str, stats: NodeStats) -> tuple[OutgoingObject, ...]:
    """The SR and, when the result kept its film, the SC of one image's result (:mod:`pneumoscan.dicom_out`, as
    ``predict --dicom-out`` makes them: the heatmap overlay in scope, the film captioned "Not assessed" out of
    scope), as outbox objects (Part 10 bytes: a retry sends the same object, UIDs included). One that cannot be
    made (e.g. a source without its study UIDs) is an object with its reason, logged and counted; nothing raises."""
    from pneumoscan.dicom_out import make_sc, make_sr, part10_bytes
    from pneumoscan.errors import PneumoscanError
    from pneumoscan.store import OutgoingObject

    out = []
    for kind, make in (("SR", make_sr), ("SC", make_sc)):
        if kind == "SC" and result.film is None:
            continue
        try:
            made = make(ds, result)
            out.append(OutgoingObject(kind, part10_bytes(made), str(made.SOPClassUID), str(made.SOPInstanceUID),
                                      str(made.file_meta.TransferSyntaxUID)))
            continue
        except (PneumoscanError, ValueError) as exc:
            why = " ".join(str(exc).split())[:300]
            log.warning("sop %s: no %s made, so none forwarded: %s", ref, kind, why)
        except Exception as exc:
            why = f"internal error ({type(exc).__name__})"
            log.exception("sop %s: the %s could not be made; none forwarded", ref, kind)
        stats.add("forward_failed")
        out.append(OutgoingObject(kind, error=why))
    return tuple(out)


def is_own_output(ds: Any, store: WorklistStore, ref: str) -> bool:
    """True for a data set pneumoscan made (its SR or SC), judged exactly: an SR/SC class with a SOP Instance UID
    under pneumoscan's UID root (:func:`pneumoscan.dicom_out.is_own_uid`), or a SOP Instance UID the outbox holds.
    Never free text: a film whose series description names pneumoscan is a film."""
    from pneumoscan.dicom_out import is_own_uid

    try:
        sop_class, sop_uid = str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - a damaged UID: not ours
        return False
    if is_own_uid(sop_class, sop_uid):
        return True
    try:
        return store.outbox.knows(sop_uid)
    except Exception:  # noqa: BLE001 - the database is down: the image is scored (and refused if it cannot be stored)
        log.warning("sop %s: the worklist database could not say whether this is pneumoscan's own result", ref)
        return False
