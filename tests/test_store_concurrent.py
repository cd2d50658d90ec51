"""Two servers on one worklist database, on SQLite and on PostgreSQL: two processes that open a new database at the
same moment (the schema is made once) and then write the same uploads, the same DICOM images, reviews and the
outbox at once lose no row, make no duplicate and meet no deadlock; and the same upload (or DICOM image) stored by
two servers at the very same moment is one row, received twice.

Run as a script, this file is one of those processes (``python tests/test_store_concurrent.py URL NAME N GO OUT``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from resultfactory import scored

from pneumoscan.io import ImageContext
from pneumoscan.store import SCHEMA_VERSION, OutgoingObject, WorklistStore

#: Rounds of writing per process.
ROUNDS = 12
SR, EXPLICIT = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.1.2.1"


def _sha(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _objects(tag: str) -> list[OutgoingObject]:
    return [OutgoingObject("SR", f"sr-{tag}".encode(), SR, f"2.25.{int(_sha(tag, 'sr')[:20], 16)}", EXPLICIT),
            OutgoingObject("SC", f"sc-{tag}".encode(), SR, f"2.25.{int(_sha(tag, 'sc')[:20], 16)}", EXPLICIT)]


def worker(url: str, name: str, rounds: int, go: Path) -> dict:
    """One server's writes (see the module); returns the ids it got and any error, by kind."""
    deadline = time.monotonic() + 120
    while not go.exists():  # both processes start together, the database not yet made
        if time.monotonic() > deadline:
            raise TimeoutError("never told to go")
        time.sleep(0.005)
    out: dict = {"shared": [], "own": [], "dicom": [], "errors": []}
    started = time.perf_counter()
    with WorklistStore(url) as store:
        out["schema_version"] = store.schema_version
        for i in range(rounds):
            try:
                rid, _ = store.add_or_count(scored(f"shared-{i}.png", 0.3 + i / 100), input_sha256=_sha("shared", i),
                                            source="upload", client=name)
                out["shared"].append(rid)
                store.review(rid, verdict="agree", reviewer=name)
                own = store.add(scored(f"{name}-{i}.png", 0.5), input_sha256=_sha(name, i), source="upload",
                                client=name, outbox=_objects(f"{name}-{i}"), forward_to="P@h:104")
                out["own"].append(own)
                dicom, _ = store.add_received(scored(f"sop {i}", 0.7, context=ImageContext(sop_uid=f"1.2.3.{i}")),
                                              input_sha256=_sha("dicom", i), client=name,
                                              outbox=_objects(f"dicom-{i}-{name}"), forward_to="P@h:104")
                out["dicom"].append(dicom)
                due = store.outbox.due(20)
                store.outbox.retry([d.id for d in due], "the PACS could not be reached",
                                   datetime.now(UTC) - timedelta(seconds=1), "P@h:104")
                store.outbox.all_due()
                if i % 5 == 0:
                    store.outbox.expire(datetime.now(UTC) - timedelta(days=3), "not stored within 72 h")
                    store.purge(365)
                store.list(limit=20)
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on any
                out["errors"].append(f"round {i}: {type(exc).__name__}: {exc}")
    out["seconds"] = time.perf_counter() - started
    return out


def _run_processes(url: str, tmp_path: Path, names: tuple[str, ...] = ("serve", "node")) -> list[dict]:
    go = tmp_path / "go"
    procs = []
    for name in names:
        procs.append((subprocess.Popen([sys.executable, __file__, url, name, str(ROUNDS), str(go),
                                        str(tmp_path / f"{name}.json")], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True), name))
    time.sleep(0.2)
    go.touch()
    outs = []
    for proc, name in procs:
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{log[-3000:]}"
        outs.append(json.loads((tmp_path / f"{name}.json").read_text()))
    return outs


def test_two_processes_write_one_database_at_once(empty_db_url, tmp_path):
    serve, node = _run_processes(empty_db_url, tmp_path)
    assert serve["errors"] == [] and node["errors"] == []
    with WorklistStore(empty_db_url) as store:
        assert serve["schema_version"] == node["schema_version"] == store.schema_version
        # The same uploads: one row each, received twice, reviewed by both.
        assert serve["shared"] == node["shared"] and len(set(serve["shared"])) == ROUNDS
        for rid in serve["shared"]:
            row = store.get(rid)
            assert row["times_received"] == 2 and row["n_reviews"] == 2
        # Each server's own uploads: all kept, with their objects.
        assert len(set(serve["own"] + node["own"])) == 2 * ROUNDS
        # The same DICOM images: one row each, with the objects of the server that stored it (never both's).
        assert serve["dicom"] == node["dicom"] and len(set(serve["dicom"])) == ROUNDS
        for rid in serve["dicom"]:
            assert store.get(rid)["forward"]["objects"] == 2
        assert store.count() == 4 * ROUNDS
        assert sum(store.outbox.counts().values()) == 2 * (2 * ROUNDS) + 2 * ROUNDS
        events = store.audit(limit=1000)
        assert sum(e["event"] == "result" for e in events) == 4 * ROUNDS
        assert sum(e["event"] == "repeat" for e in events) == ROUNDS
        assert sum(e["event"] == "review" for e in events) == 2 * ROUNDS
    from sqlalchemy import text

    from pneumoscan.store.engine import make_engine, resolve

    engine = make_engine(*resolve(empty_db_url))
    with engine.connect() as conn:  # the schema was made once, by one of them
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        versions = [v for (v,) in conn.execute(text("SELECT version FROM schema_version ORDER BY version"))]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
    engine.dispose()


def _waiting_on_a_lock(url: str) -> bool:
    """PostgreSQL: a session of this database is waiting for another's lock."""
    from sqlalchemy import text

    from pneumoscan.store.engine import make_engine, resolve

    engine = make_engine(*resolve(url))
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND wait_event_type = 'Lock'")).scalar())
    finally:
        engine.dispose()


def _at_the_same_moment(store_url, monkeypatch, write):
    """Server A inserts its row and stops before committing; server B then stores the same input (on PostgreSQL it
    waits on the unique key, on SQLite on the write lock); A commits, B goes on. Returns (A's answer, B's answer,
    the lookups B made by name, the rows stored)."""
    import pneumoscan.store.worklist_store as ws
    import pneumoscan.store.writes as writes

    a, b = WorklistStore(store_url), WorklistStore(store_url)
    inserted, release = threading.Event(), threading.Event()
    real_insert = writes.insert_unless_key_taken
    lookups: list[str] = []

    def insert_then_pause(s, row):
        done = real_insert(s, row)
        if threading.current_thread().name == "A":
            inserted.set()
            release.wait(30)
        return done

    def spy(name, real):
        def lookup(*args):
            if threading.current_thread().name == "B":
                lookups.append(name)
            return real(*args)
        monkeypatch.setattr(ws, name, lookup)

    monkeypatch.setattr(writes, "insert_unless_key_taken", insert_then_pause)
    for name in ("find_repeat", "find_by_key", "find_received"):
        spy(name, getattr(ws, name))
    answers: dict = {}
    ta = threading.Thread(name="A", target=lambda: answers.__setitem__("A", write(a, "A")))
    tb = threading.Thread(name="B", target=lambda: answers.__setitem__("B", write(b, "B")))
    ta.start()
    assert inserted.wait(30)
    tb.start()
    deadline = time.monotonic() + 20
    if "://" in store_url:
        while not _waiting_on_a_lock(store_url) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _waiting_on_a_lock(store_url), "B never waited for A's row"
    else:
        time.sleep(0.3)
    release.set()
    ta.join(30)
    tb.join(30)
    try:
        return answers["A"], answers["B"], lookups, a.count()
    finally:
        a.close()
        b.close()


def test_the_same_upload_stored_by_two_servers_at_once_is_one_row(store_url, monkeypatch):
    def upload(store, who):
        return store.add_or_count(scored("same.png", 0.8), input_sha256=_sha("same"), source="upload", client=who)

    (rid_a, n_a), (rid_b, n_b), lookups, rows = _at_the_same_moment(store_url, monkeypatch, upload)
    assert (rid_a, n_a) == (rid_b, n_b - 1) == (rid_a, 1) and rows == 1
    # PostgreSQL: B looked before A committed and found nothing; its insert met A's key, which led it to A's row.
    # SQLite: B's transaction began only once A's had ended, and its lookup found A's row.
    assert lookups == (["find_repeat", "find_by_key"] if "://" in store_url else ["find_repeat"])


def test_the_same_dicom_image_stored_by_two_nodes_at_once_is_one_row(store_url, monkeypatch):
    film = scored("sop x", 0.8, context=ImageContext(sop_uid="1.2.840.99"))

    def receive(store, who):
        return store.add_received(film, input_sha256=_sha("dicom"), client=who, outbox=_objects(who),
                                  forward_to="P@h:104")

    (rid_a, known_a), (rid_b, known_b), lookups, rows = _at_the_same_moment(store_url, monkeypatch, receive)
    assert known_a.duplicate_of is None and rid_b == known_b.duplicate_of == rid_a and rows == 1
    with WorklistStore(store_url) as s:
        assert s.get(rid_a)["forward"]["objects"] == 2 and sum(s.outbox.counts().values()) == 2  # only A's objects
        assert s.outbox.knows(_objects("A")[0].sop_instance_uid) and not s.outbox.knows(_objects("B")[0].sop_instance_uid)
    assert lookups == (["find_received"] * 2 if "://" in store_url else ["find_received"])  # as for uploads


if __name__ == "__main__":
    db, who, n, go_file, out_file = sys.argv[1:6]
    result = worker(db, who, int(n), Path(go_file))
    Path(out_file).write_text(json.dumps(result))
