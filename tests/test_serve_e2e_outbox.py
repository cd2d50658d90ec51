"""The page's worklist says where each forwarded result's SR and SC stand (sent to the PACS, pending with its tries
and last error, failed with the reason) and tags a SOP Instance UID conflict, in words, in real headless Chromium,
with axe-core finding no serious violation, light and dark (screenshots in ``test-artifacts/serve_outbox_*.png``)."""

# ruff: noqa: F811  (pytest fixtures imported from test_serve_e2e are parameters by name)
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import uid
from resultfactory import scored
from test_serve_e2e import ARTIFACTS, CHROMIUM, _browser, _serve, predictor  # noqa: F401  (fixtures)
from test_serve_e2e_page import _axe

from pneumoscan.dicom_out import new_uid
from pneumoscan.serve import ServeSettings, create_app
from pneumoscan.store import OutgoingObject, WorklistStore

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not found at {CHROMIUM}")

PACS = "ORTHANC@127.0.0.1:4242"


def _objects() -> list[OutgoingObject]:
    return [OutgoingObject("SR", b"sr", uid.Comprehensive3DSRStorage, new_uid(), uid.ExplicitVRLittleEndian),
            OutgoingObject("SC", b"sc", uid.SecondaryCaptureImageStorage, new_uid(), uid.ExplicitVRLittleEndian)]


def test_the_worklist_shows_each_results_way_to_the_pacs(predictor, tmp_path):
    from playwright.sync_api import expect

    db = tmp_path / "w.db"
    with WorklistStore(db) as store:
        gone = store.add(scored("gone.dcm", 0.95), input_sha256="1" * 64, source="dicom", outbox=_objects(),
                         forward_to=PACS)
        store.outbox.expire(datetime.now(UTC) + timedelta(seconds=1), f"not stored on {PACS} within 72 h")
        sent = store.add(scored("sent.dcm", 0.9), input_sha256="2" * 64, source="dicom", outbox=_objects(),
                         forward_to=PACS)
        waiting = store.add(scored("waiting.dcm", 0.8), input_sha256="3" * 64, source="dicom", outbox=_objects(),
                            forward_to=PACS)
        store.add(scored("upload.png", 0.7), input_sha256="4" * 64, source="upload")
        store.add(scored("again.dcm", 0.6), input_sha256="5" * 64, source="dicom", uid_conflict=True)
        items = {i["id"]: i["result_id"] for i in store.outbox.items(None, limit=100)}
        for item, rid in items.items():
            if rid == sent:
                store.outbox.delivered(item, PACS)
        for _ in range(3):
            store.outbox.retry([i for i, r in items.items() if r == waiting], "the PACS could not be reached",
                               datetime.now(UTC) + timedelta(minutes=1), PACS)
    settings = ServeSettings(db=str(db))
    serving = _serve(create_app(predictor, settings), settings)
    url = next(serving)
    problems: list[str] = []
    try:
        with _browser() as browser:
            for scheme in ("light", "dark"):
                page = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme=scheme).new_page()
                page.goto(url)
                rows = page.locator("#worklist tbody tr:not(.empty)")
                expect(rows).to_have_count(5)
                expect(rows.nth(0).locator(".forward")).to_have_text(
                    f"PACS: failed: not stored on {PACS} within 72 h")
                expect(rows.nth(1).locator(".forward")).to_have_text("Sent to PACS")
                expect(rows.nth(1).locator(".forward")).to_have_attribute("title", f"PACS {PACS}")
                expect(rows.nth(2).locator(".forward")).to_have_text(
                    "PACS: pending (3 tries, last error: the PACS could not be reached)")
                expect(rows.nth(3).locator(".forward")).to_have_count(0)  # an upload: never forwarded
                expect(rows.nth(4).locator(".tag.conflict")).to_have_text("UID conflict")
                expect(page.locator("#worklist .tag.conflict")).to_have_count(1)
                problems += _axe(page, f"worklist with forwarding states, {scheme}")
                ARTIFACTS.mkdir(exist_ok=True)
                page.locator("#worklist").screenshot(path=str(ARTIFACTS / f"serve_outbox_{scheme}.png"))
                page.close()
    finally:
        next(serving, None)
    assert not problems, "\n".join(problems)
    assert gone < sent < waiting
