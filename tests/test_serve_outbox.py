"""What the web API says of the DICOM node's forwarding: each stored result's ``forward`` state and ``uid_conflict``
(``GET /api/v1/worklist``, ``/api/v1/worklist/{id}``), and the backlog (``GET /api/v1/outbox``), behind the token."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import pytest
from pydicom import uid
from resultfactory import scored

from pneumoscan.dicom_out import new_uid
from pneumoscan.serve import ServeSettings, create_app
from pneumoscan.store import OutgoingObject, WorklistStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token-for-tests-0123456789"
PACS = "PACS@127.0.0.1:104"


def _objects() -> list[OutgoingObject]:
    return [OutgoingObject("SR", b"DICM-sr", uid.Comprehensive3DSRStorage, new_uid(), uid.ExplicitVRLittleEndian),
            OutgoingObject("SC", b"DICM-sc", uid.SecondaryCaptureImageStorage, new_uid(), uid.ExplicitVRLittleEndian)]


@pytest.fixture
def seeded(tmp_path, predictor):
    """A database with a result given up, one delivered, one pending after failed tries, one never forwarded,
    one whose SR could not be made, and one marked as a UID conflict."""
    store = WorklistStore(tmp_path / "w.db")
    ids = {"failed": store.add(scored("failed.dcm", 0.7), input_sha256="a" * 64, source="dicom", outbox=_objects(),
                               forward_to=PACS)}
    later = datetime.now(UTC) + timedelta(seconds=30)
    (first, _) = [i["id"] for i in store.outbox.items("pending")]
    store.outbox.retry([first], "status 0xA700", later, PACS)
    store.outbox.expire(datetime.now(UTC) + timedelta(seconds=1), "not stored on PACS within 72 h")
    for name, p in (("delivered", 0.9), ("pending", 0.8), ("plain", 0.6), ("unmade", 0.5)):
        objects = [OutgoingObject("SR", error="the source image has no StudyInstanceUID")] if name == "unmade" \
            else [] if name == "plain" else _objects()
        ids[name] = store.add(scored(f"{name}.dcm", p), input_sha256=f"{len(ids):064x}", source="dicom",
                              outbox=objects, forward_to=PACS)
    ids["conflict"] = store.add(scored("c.dcm", 0.4), input_sha256="f" * 64, source="dicom", uid_conflict=True)
    items: dict[int, list[int]] = {}
    for i in store.outbox.items(None, limit=100):
        items.setdefault(i["result_id"], []).append(i["id"])
    for item in items[ids["delivered"]]:
        store.outbox.delivered(item, PACS)
    for _ in range(2):
        store.outbox.retry(items[ids["pending"]], "the PACS could not be reached", later, PACS)
    yield store, ids
    store.close()


def test_worklist_entries_say_where_their_sr_and_sc_stand(seeded, predictor):
    store, ids = seeded
    client = TestClient(create_app(predictor, ServeSettings(token=TOKEN), store=store))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/v1/worklist").status_code == 401
    assert client.get("/api/v1/outbox").status_code == 401
    by_id = {r["id"]: r for r in client.get("/api/v1/worklist", headers=auth).json()["results"]}
    delivered = by_id[ids["delivered"]]["forward"]
    assert delivered["state"] == "delivered" and delivered["objects"] == delivered["delivered"] == 2
    assert delivered["target"] == PACS and delivered["delivered_at"] and delivered["last_error"] == ""
    pending = by_id[ids["pending"]]["forward"]
    assert pending["state"] == "pending" and pending["attempts"] == 2 and pending["delivered"] == 0
    assert pending["last_error"] == "the PACS could not be reached" and pending["last_attempt"]
    failed = by_id[ids["failed"]]["forward"]  # given up past the retention: the reason, and the last error
    assert failed["state"] == "failed" and failed["attempts"] == 1
    assert failed["last_error"] == "not stored on PACS within 72 h; last error: status 0xA700"
    assert by_id[ids["plain"]]["forward"] is None and by_id[ids["conflict"]]["forward"] is None
    unmade = by_id[ids["unmade"]]["forward"]
    assert unmade["state"] == "failed" and "no StudyInstanceUID" in unmade["last_error"]
    assert [r["uid_conflict"] for r in by_id.values()].count(True) == 1 and by_id[ids["conflict"]]["uid_conflict"]
    one = client.get(f"/api/v1/worklist/{ids['delivered']}", headers=auth).json()
    assert one["forward"]["state"] == "delivered" and one["uid_conflict"] is False
    spec = client.get("/openapi.json").json()
    assert "/api/v1/outbox" in spec["paths"]
    assert "forward" in spec["components"]["schemas"]["StoredResult"]["properties"]


def test_the_outbox_route_lists_the_backlog(seeded, predictor):
    store, ids = seeded
    store.add(scored("new.dcm", 0.3), input_sha256="e" * 64, source="dicom", outbox=_objects(), forward_to=PACS)
    client = TestClient(create_app(predictor, ServeSettings(token=TOKEN), store=store))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    page = client.get("/api/v1/outbox", headers=auth).json()
    assert page["counts"] == {"pending": 4, "delivered": 2, "failed": 3}
    assert page["state"] == "pending" and [i["kind"] for i in page["items"]] == ["SR", "SC", "SR", "SC"]
    item = page["items"][0]  # the oldest first: the head of the backlog
    assert item["attempts"] == 2 and item["next_attempt"] and item["sop_instance_uid"].startswith("2.25.")
    assert page["items"][-1]["attempts"] == 0
    assert "data" not in item and "patient_id" not in item
    failed = client.get("/api/v1/outbox?state=failed&limit=2", headers=auth).json()
    assert len(failed["items"]) == 2 and all(i["state"] == "failed" for i in failed["items"])
    assert failed["items"][0]["id"] > failed["items"][1]["id"]  # newest first
    assert client.get("/api/v1/outbox?state=lost", headers=auth).status_code == 422
    assert client.get("/api/v1/outbox?limit=0", headers=auth).status_code == 422
