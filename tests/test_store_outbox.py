"""The outbox of the worklist database (``pneumoscan.store.outbox``): objects written with their result in one
transaction, what the sender reads and marks, a received SOP Instance UID recognised (same bytes, other bytes),
and retention taking a result's objects with it; on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from resultfactory import scored

from pneumoscan.io import ImageContext
from pneumoscan.result import ModelIdentity, Result
from pneumoscan.store import OutgoingObject, StoreError, WorklistStore

SR_CLASS, SC_CLASS, EXPLICIT = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1"
PACS = "PACS@127.0.0.1:104"


def _sha(seed: object) -> str:
    return hashlib.sha256(str(seed).encode()).hexdigest()


def _film(sop_uid: str, p: float = 0.6) -> Result:
    return Result.scored("sop x", p, ModelIdentity("m", "v", 0.5), context=ImageContext(sop_uid=sop_uid))


def _objects(tag: str) -> list[OutgoingObject]:
    return [OutgoingObject("SR", b"sr-" + tag.encode(), SR_CLASS, f"2.25.{tag}1", EXPLICIT),
            OutgoingObject("SC", b"sc-" + tag.encode(), SC_CLASS, f"2.25.{tag}2", EXPLICIT)]


@pytest.fixture
def store(store_url):
    """A new worklist database, on SQLite and on PostgreSQL (``store_url``)."""
    with WorklistStore(store_url) as s:
        yield s


def test_a_received_uid_is_new_a_duplicate_or_a_conflict(store):
    rid, known = store.add_received(_film("1.2.3"), input_sha256=_sha("a"), outbox=_objects("1"), forward_to=PACS)
    assert known.duplicate_of is None and not known.conflicts_with
    # The same UID and bytes: nothing is written, the existing row is named.
    again, known = store.add_received(_film("1.2.3"), input_sha256=_sha("a"), outbox=_objects("9"), forward_to=PACS)
    assert (again, known.duplicate_of) == (rid, rid)
    assert store.count() == 1 and store.outbox.counts()["pending"] == 2 and not store.outbox.knows("2.25.91")
    # Other bytes under the UID: a new row, marked.
    other, known = store.add_received(_film("1.2.3"), input_sha256=_sha("b"), outbox=_objects("2"), forward_to=PACS)
    assert other != rid and known.conflicts_with == (rid,) and store.get(other)["uid_conflict"] is True
    assert store.received("1.2.3", _sha("b")).duplicate_of == other
    # Another source's row (an upload of the same file) is neither; nor is a file that could not be read.
    store.add(_film("7.7.7"), input_sha256=_sha("u"), source="upload")
    assert store.received("7.7.7", _sha("u")).duplicate_of is None
    store.add(Result.unread("sop y", "cannot decode", ModelIdentity("m", "v", 0.5),
                            context=ImageContext(sop_uid="8.8.8")), input_sha256=_sha("e"), source="dicom")
    assert store.received("8.8.8", _sha("e")).duplicate_of is None
    assert store.received("", _sha("a")).duplicate_of is None


def test_the_sender_reads_due_items_and_marks_them(store):
    rid = store.add(scored("a.dcm", 0.4), input_sha256=_sha("a"), source="dicom", outbox=_objects("1"),
                    forward_to=PACS)
    now = datetime.now(UTC)
    sr, sc = store.outbox.due(10)
    assert (sr.kind, sc.kind, sr.result_id) == ("SR", "SC", rid) and store.outbox.data(sr.id) == b"sr-1"
    store.outbox.retry([sr.id, sc.id], "the PACS could not be reached", now + timedelta(hours=1), PACS)
    assert store.outbox.due(10) == [] and store.outbox.next_due() >= now + timedelta(minutes=59)
    assert store.outbox.all_due() == 2 and len(store.outbox.due(10)) == 2
    store.outbox.delivered(sr.id, PACS)
    assert store.outbox.data(sr.id) == b""  # the bytes go once delivered; the UID stays known
    assert store.outbox.knows("2.25.11") and store.outbox.counts() == {"pending": 1, "delivered": 1, "failed": 0}
    (only,) = store.outbox.due(10)
    assert only.id == sc.id and only.attempts == 1
    assert store.outbox.expire(now - timedelta(hours=1), "too old") == []
    assert store.outbox.expire(now + timedelta(seconds=5), "not stored within 72 h") == [sc.id]
    (failed,) = store.outbox.items("failed")
    assert failed["last_error"] == "not stored within 72 h; last error: the PACS could not be reached"
    assert store.outbox.data(sc.id) == b"sc-1"  # kept, for a person to send by hand
    assert store.outbox.next_due() is None
    with pytest.raises(ValueError, match="state must be"):
        store.outbox.items("lost")


def test_objects_are_written_with_their_result_or_not_at_all(store):
    store.add(scored("a.dcm", 0.4), input_sha256=_sha("a"), source="dicom", outbox=_objects("1"))
    with pytest.raises(StoreError):  # the same SOP Instance UID twice: the whole write is refused
        store.add(scored("b.dcm", 0.4), input_sha256=_sha("b"), source="dicom", outbox=_objects("1"))
    assert store.count() == 1 and store.outbox.counts()["pending"] == 2


def test_retention_takes_a_results_objects_with_it(store):
    old = store.add(scored("a.dcm", 0.4), input_sha256=_sha("a"), source="dicom", outbox=_objects("1"),
                    created=datetime.now(UTC) - timedelta(days=400))
    store.add(scored("b.dcm", 0.4), input_sha256=_sha("b"), source="dicom", outbox=_objects("2"))
    assert store.purge(365) == 1
    assert old not in {i["result_id"] for i in store.outbox.items(None)} and store.outbox.counts()["pending"] == 2


def test_nodes_sharing_a_database_send_only_their_own_pacss_objects(store):
    """Two DICOM nodes on one database, forwarding to different PACSs: each sender asks for its own target's
    objects (an object made for one PACS is never sent to another)."""
    store.add(scored("a.dcm", 0.4), input_sha256=_sha("a"), source="dicom", outbox=_objects("1"), forward_to=PACS)
    store.add(scored("b.dcm", 0.4), input_sha256=_sha("b"), source="dicom", outbox=_objects("2"),
              forward_to="OTHER@10.0.0.9:11112")
    assert len(store.outbox.due(10)) == 4
    mine = store.outbox.due(10, target=PACS)
    assert [d.sop_instance_uid for d in mine] == ["2.25.11", "2.25.12"]
    assert [d.sop_instance_uid for d in store.outbox.due(10, target="OTHER@10.0.0.9:11112")] == ["2.25.21", "2.25.22"]
    store.outbox.retry([d.id for d in mine], "down", datetime.now(UTC) + timedelta(hours=1), PACS)
    assert store.outbox.due(10, target=PACS) == [] and store.outbox.next_due(target=PACS) > datetime.now(UTC)
    assert store.outbox.next_due(target="OTHER@10.0.0.9:11112") <= datetime.now(UTC)
