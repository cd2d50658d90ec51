"""The worklist database: new rows never overwrite, ordering, filters, reviews, audit rows, retention, an owner-only
SQLite file, URLs, and several threads at once; on SQLite and on PostgreSQL (``store_url``: the session's private
server, skipped with the reason where it cannot run). The schema and its migrations: ``test_store_schema.py``;
several processes at once: ``test_store_concurrent.py``."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text

from pneumoscan.errors import PneumoscanError
from pneumoscan.io import ImageContext
from pneumoscan.result import ModelIdentity, Result
from pneumoscan.store import (
    ResultNotFoundError,
    StoreError,
    WorklistStore,
    default_db_path,
)
from pneumoscan.store import engine as engine_mod
from resultfactory import scored

NOW = datetime.now(UTC)
#: The model every result of these tests names unless told otherwise.
MODEL = ModelIdentity("seed-cnn", "v1", 0.5)


def _sha(seed: object) -> str:
    return hashlib.sha256(str(seed).encode()).hexdigest()


def _result(*, p: float | None = 0.3, in_scope: bool = True, error: str = "", seed: object = 0,
            context: ImageContext | None = None) -> Result:
    """A file not read (``error``), else a film scored by :data:`MODEL` (refused by the gate: ``in_scope=False``)."""
    source = f"film-{seed}.png"
    if error:
        assert p is None, "a file that was not read has no probability"
        return Result.unread(source, error, MODEL, context=context)
    return Result.scored(source, p, MODEL, in_scope=in_scope,
                         scope_reason="" if in_scope else "blank or uniform image", context=context or ImageContext())


def _add(store: WorklistStore, *, p: float | None = 0.3, decision: str | None = None, in_scope: bool = True,
         error: str = "", seed: object = 0, context: ImageContext | None = None, created=None,
         client: str = "local") -> int:
    """Store one result (see :func:`_result`); ``decision``, when given, is the decision the result must have."""
    result = _result(p=p, in_scope=in_scope, error=error, seed=seed, context=context)
    if decision is not None:
        assert result.decision == decision, (result.decision, decision)
    return store.add(result, input_sha256=_sha(seed), source="upload", filename_hash="upload-0123456789",
                     client=client, created=created)


@pytest.fixture
def store(store_url):
    """A new worklist database, on SQLite (``worklist.db`` in the test's folder) and on PostgreSQL."""
    with WorklistStore(store_url) as s:
        yield s


def test_a_rescored_image_is_a_new_row_never_an_overwrite(store):
    first = _add(store, p=0.2, seed="same image")
    second = _add(store, p=0.9, decision="PNEUMONIA", seed="same image")
    assert first != second
    rows = {r["id"]: r for r in store.list()}
    assert rows[first]["probability"] == pytest.approx(0.2) and rows[second]["probability"] == pytest.approx(0.9)
    assert rows[first]["input_sha256"] == rows[second]["input_sha256"] == _sha("same image")
    assert store.count() == 2


def test_highest_risk_first_then_not_assessed_then_errors(store):
    low = _add(store, p=0.1)
    err = _add(store, p=None, decision="", error="not an image")
    oos = _add(store, p=0.99, decision="OUT_OF_SCOPE", in_scope=False)  # its probability is not a risk
    high = _add(store, p=0.8, decision="PNEUMONIA")
    mid = _add(store, p=0.5, decision="PNEUMONIA")
    assert [r["id"] for r in store.list()] == [high, mid, low, oos, err]
    rows = store.list()
    assert rows[0]["positive"] and not rows[2]["positive"] and not rows[3]["positive"]
    assert rows[3]["in_scope"] is False and rows[3]["scope_reason"] == "blank or uniform image"
    assert rows[3]["decision"] == "OUT_OF_SCOPE" and rows[3]["score"] is None  # its probability is not a risk
    assert rows[4]["error"] == "not an image" and rows[4]["probability"] is None
    assert rows[4]["decision"] == "" and rows[4]["ok"] is False and rows[4]["in_scope"] is None
    assert [r["id"] for r in store.list(limit=2, offset=1)] == [mid, low]


def test_filters(store):
    old = _add(store, p=0.9, decision="PNEUMONIA", created=NOW - timedelta(days=10))
    flagged = _add(store, p=0.7, decision="PNEUMONIA")
    normal = _add(store, p=0.2)
    oos = _add(store, p=0.4, decision="OUT_OF_SCOPE", in_scope=False)
    err = _add(store, p=None, decision="", error="truncated")
    ids = lambda **kw: [r["id"] for r in store.list(**kw)]
    assert ids(flagged_only=True) == [old, flagged]
    assert ids(in_scope=True) == [old, flagged, normal]
    assert ids(in_scope=False) == [oos]  # a file not read is neither in nor out of scope
    assert ids(since=NOW - timedelta(days=1)) == [flagged, normal, oos, err]
    assert ids(until=NOW - timedelta(days=1)) == [old]
    assert ids(until=(NOW - timedelta(days=10)).date()) == [old]  # a date as "until" includes that day
    assert ids(since=date.today() + timedelta(days=2)) == []
    store.review(flagged, verdict="agree", reviewer="local")
    assert ids(unreviewed_only=True) == [old, normal, oos, err]
    assert ids(flagged_only=True, unreviewed_only=True) == [old]
    assert store.count(flagged_only=True) == 2
    with pytest.raises(ValueError, match="limit"):
        store.list(limit=0)


def test_the_borderline_band_around_each_results_threshold(store):
    """``borderline`` keeps the scored in-scope results within the band of their own threshold (0.5 here), edges
    included; never an image not assessed or a file not read, whatever its stored probability."""
    inside = [_add(store, p=p, decision="PNEUMONIA" if p >= 0.5 else "NORMAL", seed=p) for p in (0.4, 0.47, 0.5, 0.6)]
    outside = [_add(store, p=p, seed=p) for p in (0.39, 0.05)] + [_add(store, p=0.61, decision="PNEUMONIA", seed=9)]
    _add(store, p=0.5, decision="OUT_OF_SCOPE", in_scope=False, seed="oos")
    _add(store, p=None, decision="", error="truncated", seed="err")
    band = [r["id"] for r in store.list(borderline=0.10)]
    assert sorted(band) == sorted(inside) and not set(band) & set(outside)
    assert [r["probability"] for r in store.list(borderline=0.10)] == [0.6, 0.5, 0.47, 0.4]  # still by risk
    assert store.count(borderline=0.10) == 4
    assert [r["probability"] for r in store.list(borderline=0.05)] == [0.5, 0.47]
    assert [r["probability"] for r in store.list(borderline=0.10, flagged_only=True)] == [0.6, 0.5]
    for bad in (0, -0.1, 0.6, float("nan")):
        with pytest.raises(ValueError, match="borderline"):
            store.list(borderline=bad)


def test_orders_by_time_received(store):
    first = _add(store, p=0.9, decision="PNEUMONIA", created=NOW - timedelta(hours=2), seed=1)
    second = _add(store, p=0.1, created=NOW - timedelta(hours=1), seed=2)
    third = _add(store, p=None, decision="", error="truncated", seed=3)
    assert [r["id"] for r in store.list(order="newest")] == [third, second, first]
    assert [r["id"] for r in store.list(order="oldest")] == [first, second, third]
    assert [r["id"] for r in store.list()] == [first, second, third]  # risk
    with pytest.raises(ValueError, match="order"):
        store.list(order="alphabetical")


JPEG_URI = "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8U+/="


def test_a_thumbnail_is_kept_with_its_result_and_a_bad_one_dropped(store, caplog):
    rid = store.add(scored("t.png", 0.3), input_sha256=_sha("t"), source="upload", client="local",
                    thumbnail=JPEG_URI)
    plain = _add(store, seed="none")
    assert store.get(rid)["thumbnail"] == JPEG_URI
    assert store.get(plain)["thumbnail"] is None
    rows = {r["id"]: r for r in store.list()}
    assert rows[rid]["thumbnail"] == JPEG_URI and rows[plain]["thumbnail"] is None
    assert all("thumbnail" not in r for r in store.list(thumbnails=False))
    for bad in ("javascript:alert(1)", "data:text/html;base64,PGI+", "data:image/jpeg;base64,<svg>",
                "data:image/jpeg;base64," + "A" * 100_000, 42):
        bad_id = store.add(scored("bad.png", 0.3), input_sha256=_sha(bad), source="upload", client="local",
                           thumbnail=bad)
        assert store.get(bad_id)["thumbnail"] is None  # the result is kept, the thumbnail is not
    assert "thumbnail was not stored" in caplog.text


def test_context_is_kept_and_the_patient_name_never(store, tmp_path):
    ctx = ImageContext(format="DICOM", patient_id="P-17", patient_name="DOE^JANE", age="004Y",
                       sex="F", view="AP", accession="ACC9", study_date="20240501",
                       study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5")
    rid = _add(store, context=ctx)
    other = ImageContext.from_dict({"patient_id": "P-18", "view": "PA", "age": "3", "unknown_key": "x"},
                                   patient_name="ROE^RICHARD")
    unread_id = _add(store, p=None, error="truncated", seed=1, context=other)  # a file not read keeps its context
    row = store.get(rid)
    assert row["context"] == {"patient_id": "P-17", "accession": "ACC9", "study_date": "20240501", "age": "004Y",
                              "sex": "F", "view": "AP", "study_uid": "1.2.3", "series_uid": "1.2.3.4",
                              "sop_uid": "1.2.3.4.5"}
    # The context round-trips: the stored row's is the result's own, by the same names.
    assert row["context"] == ctx.to_dict() == _result(context=ctx).to_dict()["context"]
    assert ImageContext.from_dict(row["context"]) == dataclasses.replace(ctx, format="", patient_name="")
    assert store.get(unread_id)["context"] == other.to_dict() == {
        "patient_id": "P-18", "accession": "", "study_date": "", "age": "3", "sex": "", "view": "PA",
        "study_uid": "", "series_uid": "", "sop_uid": ""}
    for r in (row, store.get(unread_id)):
        assert "patient_name" not in r and "patient_name" not in r["context"]
        assert "DOE^JANE" not in str(r) and "ROE^RICHARD" not in str(r)
    store.close()
    if store.path is not None:  # SQLite: the file itself
        raw = store.path.read_bytes()
        assert b"P-17" in raw and b"P-18" in raw  # what is kept is in the file...
        assert b"DOE^JANE" not in raw and b"ROE^RICHARD" not in raw  # ...and the patient's name never


def test_bad_results_are_refused(store):
    """The store refuses an input hash that is not a SHA-256; a result with impossible values cannot be made at
    all (:class:`~pneumoscan.result.Result` refuses them), so it never reaches the store."""
    for bad_sha in ("abc", "g" * 64, _sha(0) + "0", ""):
        with pytest.raises(ValueError, match="64 hexadecimal"):
            store.add(scored("x.png", 0.5), input_sha256=bad_sha, source="upload", client="local")
    for bad_p in (float("nan"), float("inf"), -0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match="probability"):
            Result.scored("x.png", bad_p, MODEL)
    with pytest.raises(ValueError, match="without a probability needs the error"):
        Result(source="x.png", model=MODEL)
    with pytest.raises(ValueError, match="threshold"):
        ModelIdentity("m", "v", 1.5)
    with pytest.raises(ValueError, match="threshold"):
        ModelIdentity("m", "v", float("nan"))
    assert store.count() == 0
    assert store.audit() == []


def test_reviews_are_all_kept_the_latest_is_current_and_audited(store):
    rid = _add(store, p=0.8, decision="PNEUMONIA", seed="film")
    first = store.review(rid, verdict="disagree", note="  looks like atelectasis\n", reviewer="token-abc")
    assert first["review"]["verdict"] == "disagree" and first["review"]["note"] == "looks like atelectasis"
    assert first["n_reviews"] == 1
    second = store.review(rid, verdict="agree", reviewer="token-def")
    assert second["review"] == {**second["review"], "verdict": "agree", "note": "", "reviewer": "token-def"}
    assert store.list()[0]["review"]["verdict"] == "agree" and store.list()[0]["n_reviews"] == 2
    assert [r["verdict"] for r in store.reviews(rid)] == ["disagree", "agree"]
    with pytest.raises(ValueError, match="agree"):
        store.review(rid, verdict="maybe", reviewer="x")
    with pytest.raises(ValueError, match="note"):
        store.review(rid, verdict="agree", note="x" * 2001, reviewer="x")
    with pytest.raises(KeyError, match="no worklist result has id 999") as err:
        store.review(999, verdict="agree", reviewer="x")
    assert isinstance(err.value, ResultNotFoundError) and isinstance(err.value, PneumoscanError)
    events = store.audit()
    assert [e["event"] for e in events] == ["review", "review", "result"]
    review_event = events[1]
    assert review_event["result_id"] == rid and review_event["client"] == "token-abc"
    assert review_event["input_sha256"] == _sha("film") and review_event["model_version"] == "v1"
    assert review_event["detail"] == "disagree with a note"
    assert "atelectasis" not in str(events)  # the note lives with the review, not in the audit trail


def test_every_result_has_an_audit_row(store):
    a = _add(store, client="token-0123456789", seed="a")
    b = _add(store, p=None, decision="", error="bad", client="PACS_AE", seed="b")
    events = store.audit()
    assert [(e["event"], e["result_id"], e["client"], e["input_sha256"]) for e in events] == [
        ("result", b, "PACS_AE", _sha("b")), ("result", a, "token-0123456789", _sha("a"))]
    assert all(e["model_name"] == "seed-cnn" and e["model_version"] == "v1" and e["created"] for e in events)
    assert store.audit(event="review") == []


def test_retention_purge(store):
    old = _add(store, created=NOW - timedelta(days=400), seed="old")
    store.review(old, verdict="agree", reviewer="local")  # the review is new, but goes with its result
    keep = _add(store, created=NOW - timedelta(days=10), seed="keep")
    with store._transaction() as s:  # an old audit row (its result is long gone)
        s.execute(text("UPDATE audit_log SET created = :t WHERE result_id = :r AND event = 'result'"),
                  {"t": (NOW - timedelta(days=400)).replace(tzinfo=None), "r": old})
    assert store.purge(365) == 1
    assert [r["id"] for r in store.list()] == [keep]
    assert store.reviews(old) == []
    events = store.audit()
    assert events[0]["event"] == "purge" and "1 result(s), 1 review(s) and 1 audit row(s)" in events[0]["detail"]
    assert not any(e["event"] == "result" and e["result_id"] == old for e in events)
    assert store.purge(365) == 0
    with pytest.raises(ValueError, match="positive"):
        store.purge(0)


def test_sqlite_file_and_its_new_folders_are_owner_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOSCAN_DATA_DIR", str(tmp_path / "data" / "pneumoscan"))
    old_umask = os.umask(0o022)
    try:
        with WorklistStore() as s:  # the default: worklist.db in the data folder
            _add(s)
            assert s.path == default_db_path() == tmp_path / "data" / "pneumoscan" / "worklist.db"
    finally:
        os.umask(old_umask)
    for folder in (tmp_path / "data", tmp_path / "data" / "pneumoscan"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in (tmp_path / "data" / "pneumoscan").iterdir():  # the database, and SQLite's -wal/-shm beside it
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_a_folder_or_a_url_names_the_database(tmp_path):
    with WorklistStore(str(tmp_path)) as s:
        assert s.path == tmp_path / "worklist.db"
    url = f"sqlite:///{tmp_path / 'by-url.db'}"
    with WorklistStore(url) as s:
        _add(s)
        assert s.path == tmp_path / "by-url.db"
    assert stat.S_IMODE((tmp_path / "by-url.db").stat().st_mode) == 0o600
    with WorklistStore(":memory:") as s:
        _add(s)
        assert s.count() == 1 and s.path is None
    with pytest.raises(StoreError, match="driver is not installed"):
        WorklistStore("nosuchdialect+nodriver://user:secret@host/db")


def test_postgresql_urls_mean_psycopg():
    """``postgresql://`` and ``postgres://`` go to psycopg (3), the driver pneumoscan installs; a URL naming its
    driver keeps it; the password is hidden wherever the database is named."""
    for given in ("postgresql://nurse:pw@db.example/pneumoscan", "postgres://nurse:pw@db.example/pneumoscan",
                  " postgresql+psycopg://nurse:pw@db.example/pneumoscan"):
        url, path = engine_mod.resolve(given)
        assert (url.drivername, url.host, url.database, path) == ("postgresql+psycopg", "db.example", "pneumoscan",
                                                                  None)
        assert engine_mod.describe(url, path) == "postgresql+psycopg://nurse:***@db.example/pneumoscan"
    assert engine_mod.resolve("postgresql+psycopg2://u@h/d")[0].drivername == "postgresql+psycopg2"
    with pytest.raises(StoreError, match="not a database URL"):
        engine_mod.resolve("postgresql://u@h:notaport/d")


def test_a_url_password_never_shows(tmp_path):
    try:
        WorklistStore("postgresql+psycopg://nurse:hunter2secret@127.0.0.1:1/pneumoscan")
    except StoreError as exc:
        assert "hunter2secret" not in str(exc)
    else:  # pragma: no cover - nothing listens on port 1
        pytest.fail("opened a database on port 1")


def test_a_wrong_password_is_refused_without_showing_it(pg_server, caplog):
    """A real server refusing the login: the error names the database, never the password."""
    url = pg_server.url("pneumoscan_test").replace(pg_server.password, "hunter2secret")
    with pytest.raises(StoreError, match="password authentication failed") as err:
        WorklistStore(url)
    assert "hunter2secret" not in str(err.value) and "hunter2secret" not in caplog.text
    assert f"127.0.0.1:{pg_server.port}/pneumoscan_test" in str(err.value)


def test_the_password_can_stay_out_of_the_url(pg_server, monkeypatch):
    """libpq's own ways (``PGPASSWORD``, ``~/.pgpass``) keep the password off the command line and out of ``ps``."""
    from pgserver import fresh_test_database

    fresh_test_database(pg_server, keep_tables=True)
    monkeypatch.setenv("PGPASSWORD", pg_server.password)
    with WorklistStore(f"postgresql://pneumoscan@127.0.0.1:{pg_server.port}/pneumoscan_test") as s:
        assert s.where == f"postgresql+psycopg://pneumoscan@127.0.0.1:{pg_server.port}/pneumoscan_test"
        rid = _add(s)
        assert s.get(rid)["id"] == rid


def test_many_threads_at_once(store_url):
    stores = [WorklistStore(store_url), WorklistStore(store_url)]  # two stores on one database: serve, dicom-listen
    errors: list[BaseException] = []
    ids: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            s = stores[i % 2]
            for j in range(15):
                rid = _add(s, p=(i * 15 + j) / 100, seed=(i, j), client=f"thread-{i}")
                s.review(rid, verdict="agree", reviewer=f"thread-{i}")
                s.list(limit=5)
                with lock:
                    ids.append(rid)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 90 and stores[0].count() == 90 and stores[1].count(unreviewed_only=True) == 0
    assert len(stores[0].audit(limit=1000)) == 180
    probs = [r["probability"] for r in stores[0].list(limit=1000)]
    assert probs == sorted(probs, reverse=True)
    for s in stores:
        s.close()


def test_in_memory_store_is_thread_safe():
    s = WorklistStore(":memory:")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                s.review(_add(s, seed=(i, j)), verdict="disagree", reviewer="x")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and s.count() == 80
