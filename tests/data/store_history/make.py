"""Make the worklist databases of every hand-written schema version (1..7) with the project's own code of that
time, and dump them as SQL for ``tests/test_store_migrations.py``: ``sqlite_vN.sql`` (Python's ``iterdump``) and
``postgresql_vN.sql`` (``pg_dump --inserts``).

Each version's code is taken from git (``git archive``; nothing in the working tree changes) and run in its own
Python process against a fresh database; it stores a few results (scored, not assessed, not read; with DICOM
context), a review, and, from version 5, outbox objects; from version 7 a repeat. Version 6 only ever existed
between commits: it is version 5's database migrated by the hand-written migration of version 6 (the code of the
commit that added versions 6 and 7, stopped at 6). ``*_v1_to_v7.sql`` is a version 1 database migrated to version
7 by the code of version 7, as a server that went through every release has it.

    .venv/bin/python tests/data/store_history/make.py           # needs git and the PostgreSQL test server
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parents[1]))  # tests/: pgserver

#: version -> the commit whose code created databases at that version.
COMMITS = {1: "f7d5e55", 2: "6f74a36", 3: "5756776", 4: "a46b848", 5: "44ada22", 7: "e7ee1ae"}

#: Run by each version's code (in its own process, with that code first on sys.path).
CHILD = r'''
import sys
from datetime import UTC, datetime, timedelta
from pneumoscan.store import WorklistStore
from pneumoscan.store import schema as schema_mod

version, url, stop_at, migrate = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
SHA = lambda n: f"{n:064x}"
JPEG = "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8U+/="
T0 = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)

if migrate == "yes":  # migrate an existing database with this code's hand-written migrations, up to stop_at
    from pneumoscan.store.engine import make_engine, resolve
    engine = make_engine(*resolve(url))
    target = int(stop_at)
    with engine.begin() as conn:
        schema_mod.ensure_schema(conn, version=target,
                                 migrations=[m for m in schema_mod.MIGRATIONS if m.version <= target])
    engine.dispose()
    sys.exit(0)

store = WorklistStore(url)
assert store.schema_version == version, (store.schema_version, version)
ctx = dict(patient_id="P-1", accession="ACC-1", study_date="20260105", age="004Y", sex="F", view="PA",
           study_uid="1.2.826.0.1.3680043.2.1", series_uid="1.2.826.0.1.3680043.2.1.1",
           sop_uid="1.2.826.0.1.3680043.2.1.1.1")
if version <= 2:
    extra = {"thumbnail": JPEG} if version == 2 else {}
    common = dict(source="upload", filename_hash="f" * 16, model_name="seed-cnn", model_version="abc123def456",
                  client="local")
    a = store.add_result(input_sha256=SHA(1), probability=0.83, decision="PNEUMONIA", threshold=0.5, in_scope=True,
                         scope_reason="", error="", context=ctx, created=T0, **common, **extra)
    store.add_result(input_sha256=SHA(2), probability=0.12, decision="NORMAL", threshold=0.5, in_scope=False,
                     scope_reason="blank or uniform image", error="", created=T0 + timedelta(minutes=1), **common)
    store.add_result(input_sha256=SHA(3), probability=None, decision="ERROR", threshold=None, in_scope=None,
                     scope_reason="", error="not an image: truncated JPEG", created=T0 + timedelta(minutes=2),
                     **common)
else:
    from pneumoscan.io import ImageContext
    from pneumoscan.result import ModelIdentity, Result
    ident = dict(cause_threshold=0.4)
    if version >= 4:
        ident["calibration"] = "calibrated on the training hospital's validation films"
    model = ModelIdentity("seed-cnn", "abc123def456", 0.5, **ident)
    flagged = Result.scored("a.dcm", 0.83, model, cause_probability=0.7, context=ImageContext(**ctx))
    kwargs = {}
    if version >= 5:
        from pneumoscan.store import OutgoingObject
        kwargs = dict(forward_to="PACS@127.0.0.1:104", outbox=[
            OutgoingObject("SR", b"DICM-sr", "1.2.840.10008.5.1.4.1.1.88.34", "2.25.1001", "1.2.840.10008.1.2.1"),
            OutgoingObject("SC", b"DICM-sc", "1.2.840.10008.5.1.4.1.1.7", "2.25.1002", "1.2.840.10008.1.2.1")])
    a = store.add(flagged, input_sha256=SHA(1), source="dicom" if version >= 5 else "upload", client="PACS_AE",
                  created=T0, thumbnail=JPEG, **kwargs)
    store.add(Result.scored("b.png", 0.12, model, in_scope=False, scope_reason="blank or uniform image"),
              input_sha256=SHA(2), source="upload", client="local", created=T0 + timedelta(minutes=1))
    store.add(Result.unread("c.png", "not an image: truncated JPEG", model), input_sha256=SHA(3),
              source="upload", client="local", created=T0 + timedelta(minutes=2))
    if version >= 7:
        rid, n = store.add_or_count(Result.scored("d.png", 0.3, model), input_sha256=SHA(4), source="upload",
                                    client="local")
        assert store.add_or_count(Result.scored("d.png", 0.3, model), input_sha256=SHA(4), source="upload",
                                  client="Dr B") == (rid, 2)
store.review(a, verdict="agree", note="consolidation right lower lobe", reviewer="Dr A")
store.close()
'''


def extract(commit: str, into: Path) -> Path:
    """The ``src`` folder of ``commit``, unpacked under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def run_child(src: Path, version: int, url: str, *, stop_at: int = 0, migrate: bool = False) -> None:
    subprocess.run([sys.executable, "-c", CHILD, str(version), url, str(stop_at), "yes" if migrate else "no"],
                   env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "HOME": str(src.parent)}, check=True)


def dump_sqlite(path: Path, out: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    lines = list(con.iterdump())
    con.close()
    out.write_text("\n".join(lines) + "\n")


def dump_postgresql(server, database: str, out: Path) -> None:
    from pgserver import find_bin_dir

    done = subprocess.run([str(find_bin_dir() / "pg_dump"), "--inserts", "--no-owner", "--no-privileges",
                           "--no-comments", "-d", server.dsn(database)], capture_output=True, text=True, check=True)
    # psql's meta-commands (\restrict ...) are not SQL; the loader runs the rest as one script.
    text = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("\\"))
    out.write_text(re.sub(r"\n{3,}", "\n\n", text) + "\n")


def main() -> None:
    from pgserver import PgServer

    server = PgServer.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            srcs = {v: extract(c, root / f"code-v{v}") for v, c in COMMITS.items()}
            plan: list[tuple[str, list[tuple[int, int, bool]]]] = [
                (f"v{v}", [(v, v, False)]) for v in (1, 2, 3, 4, 5, 7)]
            plan += [("v6", [(5, 5, False), (7, 6, True)]), ("v1_to_v7", [(1, 1, False), (7, 7, True)])]
            for label, steps in plan:
                db = root / f"{label}.db"
                pg = server.create_database(f"hist_{label}")
                for code, version, migrate in steps:
                    for url in (str(db), pg):
                        run_child(srcs[code], version, url, stop_at=version, migrate=migrate)
                dump_sqlite(db, HERE / f"sqlite_{label}.sql")
                dump_postgresql(server, f"hist_{label}", HERE / f"postgresql_{label}.sql")
                print(f"{label}: done")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
