"""The worklist database's schema under alembic (``pneumoscan.store.schema``, ``store/migrations``), on SQLite and
on PostgreSQL: databases written by every hand-written schema version (1..7, made by the project's own code of that
time: ``tests/data/store_history``) are upgraded with their rows; a new database is made by the revisions and has
exactly the models' tables; a newer or a foreign database is refused and left untouched; later revisions run once,
in order, all or nothing; downgrades are refused; ``pneumoscan db current`` and ``db upgrade``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pgserver import fresh_test_database
from resultfactory import scored
from sqlalchemy import inspect, make_url, text

from pneumoscan.cli import main
from pneumoscan.io import ImageContext
from pneumoscan.result import ModelIdentity, Result
from pneumoscan.store import SCHEMA_VERSION, OutgoingObject, SchemaTooNewError, StoreError, WorklistStore
from pneumoscan.store import schema as schema_mod
from pneumoscan.store.engine import make_engine, resolve
from pneumoscan.store.models import Base

HISTORY = Path(__file__).resolve().parent / "data" / "store_history"
#: Databases as the project's code left them: created at each version, and one created at 1 and migrated to 7.
LABELS = ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v1_to_v7"]
#: The version whose code made each database (and stored its rows): v6 is v5's database migrated to 6 (version 6
#: existed only between two commits).
CREATED_AT = {"v1": 1, "v2": 2, "v3": 3, "v4": 4, "v5": 5, "v6": 5, "v7": 7, "v1_to_v7": 1}
JPEG = "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8U+/="
SHA = [f"{n:064x}" for n in range(6)]  # the dumps' inputs are 1..4
SOP = "1.2.826.0.1.3680043.2.1.1.1"


def load_history(url: str, label: str) -> None:
    """Put the dump of ``label`` into the empty database ``url`` (a SQLite file or a PostgreSQL URL)."""
    if "://" not in url:
        Path(url).touch(mode=0o600)  # as pneumoscan makes its files
        con = sqlite3.connect(url)
        con.executescript((HISTORY / f"sqlite_{label}.sql").read_text())
        con.close()
        return
    import psycopg

    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:  # its own session: the dump sets search_path
        conn.execute((HISTORY / f"postgresql_{label}.sql").read_text())  # type: ignore[arg-type]


def _sql(url: str, query: str) -> list[tuple]:
    engine = make_engine(*resolve(url))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query))]
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(*resolve(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _schema_diff(url: str) -> list:
    """What alembic's comparison finds between the database and the models (nothing, when they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(*resolve(url))
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


@pytest.mark.parametrize("label", LABELS)
def test_every_hand_written_version_is_upgraded_with_its_rows(empty_db_url, label):
    created_at = CREATED_AT[label]
    load_history(empty_db_url, label)
    with WorklistStore(empty_db_url) as s:
        assert s.schema_version == SCHEMA_VERSION
        rows = {r["input_sha256"]: r for r in s.list(order="oldest")}
        assert len(rows) == (4 if created_at == 7 else 3)
        flagged, refused, unread = rows[SHA[1]], rows[SHA[2]], rows[SHA[3]]
        # What the old code stored is read back as it was...
        assert (flagged["probability"], flagged["decision"], flagged["threshold"]) == (0.83, "PNEUMONIA", 0.5)
        assert flagged["created"] == "2026-01-05T09:30:00+00:00" and flagged["context"]["patient_id"] == "P-1"
        assert flagged["context"]["sop_uid"] == SOP and flagged["review"]["verdict"] == "agree"
        assert flagged["review"]["note"] == "consolidation right lower lobe"
        assert refused["in_scope"] is False and refused["scope_reason"] == "blank or uniform image"
        assert unread["ok"] is False and unread["decision"] == "" and unread["error"].startswith("not an image")
        # ...and what it did not store has the value a row from before means.
        assert flagged["thumbnail"] == (None if created_at == 1 else JPEG)
        assert flagged["cause"] == ("" if created_at < 3 else "VIRAL")
        assert bool(flagged["score_calibration"]) == (created_at >= 4)
        assert flagged["uid_conflict"] is False and flagged["scope_caution"] == ""
        if created_at >= 5:
            assert flagged["forward"]["state"] == "pending" and flagged["forward"]["objects"] == 2
            assert s.outbox.knows("2.25.1001") and s.outbox.data(s.outbox.due(10)[0].id) == b"DICM-sr"
        else:
            assert flagged["forward"] is None and s.outbox.counts()["pending"] == 0
        assert [r["times_received"] for r in rows.values()] == ([1, 1, 1, 2] if created_at == 7 else [1, 1, 1])
        assert len(s.audit(limit=100)) >= 4
        # The upgraded database takes today's writes, old rows included.
        if created_at == 7:
            again = Result.scored("d.png", 0.3, ModelIdentity("seed-cnn", "abc123def456", 0.5))
            assert s.add_or_count(again, input_sha256=SHA[4], source="upload")[1] == 3  # a row without a key
        new = s.add(scored("new.dcm", 0.7, context=ImageContext(sop_uid="9.9.9")), input_sha256=SHA[5],
                    source="dicom", thumbnail=JPEG, forward_to="P@h:104",
                    outbox=[OutgoingObject("SR", b"DICM", "1.2.840.10008.5.1.4.1.1.88.34", "2.25.77", "1.2.840.10008.1.2.1")])
        assert s.get(new)["thumbnail"] == JPEG and s.get(new)["forward"]["state"] == "pending"
        assert s.add_or_count(scored("x.png", 0.2), input_sha256=SHA[0], source="upload")[1] == 1
        assert s.add_or_count(scored("x.png", 0.2), input_sha256=SHA[0], source="upload")[1] == 2
    assert _sql(empty_db_url, "SELECT version_num FROM alembic_version") == [(schema_mod.revision_of(SCHEMA_VERSION),)]
    versions = [v for (v,) in _sql(empty_db_url, "SELECT version FROM schema_version ORDER BY version")]
    assert versions[-(SCHEMA_VERSION - 6):] == list(range(7, SCHEMA_VERSION + 1)) and versions[0] == created_at
    assert _schema_diff(empty_db_url) == []


def test_a_new_database_is_made_by_the_revisions_and_matches_the_models(empty_db_url):
    with WorklistStore(empty_db_url) as s:
        assert s.schema_version == SCHEMA_VERSION == schema_mod.head_version()
    assert _sql(empty_db_url, "SELECT version_num FROM alembic_version") == [(f"v{SCHEMA_VERSION}",)]
    # Each revision is recorded in the hand-written table too: a pneumoscan from before alembic refuses it as newer.
    assert [v for (v,) in _sql(empty_db_url, "SELECT version FROM schema_version ORDER BY version")] == list(
        range(1, SCHEMA_VERSION + 1))
    assert _schema_diff(empty_db_url) == []


def test_one_revision_per_version_each_refusing_to_go_down():
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(schema_mod._alembic_config())
    chain = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert chain == [f"v{n}" for n in range(1, SCHEMA_VERSION + 1)]
    assert [schema_mod.version_of(r) for r in chain] == list(range(1, SCHEMA_VERSION + 1))
    for rev in chain:
        with pytest.raises(StoreError, match="refused"):
            script.get_revision(rev).module.downgrade()


def test_a_downgrade_is_refused_and_changes_nothing(tmp_path):
    from alembic import command

    path = tmp_path / "w.db"
    with WorklistStore(path) as s:
        rid, _ = s.add_or_count(scored("a.png", 0.6), input_sha256=SHA[1], source="upload")
    engine = make_engine(*resolve(path))
    with pytest.raises(StoreError, match="downgrading the worklist database .* is refused"), engine.begin() as conn:
        command.downgrade(schema_mod._alembic_config(conn), "v7")
    engine.dispose()
    with WorklistStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION and s.get(rid)["times_received"] == 1


def test_a_database_newer_than_this_code_is_refused_and_left_untouched(store_url):
    with WorklistStore(store_url) as s:
        s.add(scored("a.png", 0.4), input_sha256=SHA[1], source="upload")
    newer = f"v{SCHEMA_VERSION + 1}"
    engine = make_engine(*resolve(store_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": newer})
    engine.dispose()
    with pytest.raises(SchemaTooNewError, match=f"schema version {SCHEMA_VERSION + 1}, written by a newer pneumoscan"):
        WorklistStore(store_url)
    assert _sql(store_url, "SELECT version_num FROM alembic_version") == [(newer,)]
    assert _sql(store_url, "SELECT count(*) FROM worklist_results") == [(1,)]


def _make_tables(url: str, statements: list[str]) -> None:
    engine = make_engine(*resolve(url))
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


@pytest.mark.parametrize("case, statements, message", [
    ("unversioned", ["CREATE TABLE worklist_results (id INTEGER PRIMARY KEY)"], "no schema_version table"),
    ("empty version table", ["CREATE TABLE schema_version (version INTEGER PRIMARY KEY)"],
     "empty schema_version table"),
    ("another alembic project", ["CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
                                 "INSERT INTO alembic_version VALUES ('3f2a9c1d')"], "not one of pneumoscan's"),
    ("hand-written, newer", ["CREATE TABLE schema_version (version INTEGER PRIMARY KEY)",
                             f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION + 3})"], "newer pneumoscan"),
])
def test_a_database_that_is_not_ours_or_not_known_is_refused(empty_db_url, case, statements, message):
    _make_tables(empty_db_url, statements)
    with pytest.raises(StoreError, match=message):
        WorklistStore(empty_db_url)
    assert "worklist_reviews" not in _tables(empty_db_url)  # nothing was made beside it


def _revision(folder: Path, version: int, body: str) -> None:
    (folder / f"v{version}_test.py").write_text(
        f'"""A made-up revision {version}."""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision = "v{version}"\ndown_revision = "v{version - 1}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        f"def upgrade():\n{body}\n\n\ndef downgrade():\n    raise NotImplementedError\n")
    schema_mod.forget_revisions()  # the code's revisions are read once; these came after


@pytest.fixture
def later_revisions(tmp_path, monkeypatch):
    """A folder of made-up revisions after this code's, that the store then knows."""
    folder = tmp_path / "later"
    folder.mkdir()
    monkeypatch.setattr(schema_mod, "VERSION_DIRS", (*schema_mod.VERSION_DIRS, folder))
    return folder


def test_later_revisions_run_in_order_once_when_the_store_opens(store_url, later_revisions):
    v = SCHEMA_VERSION
    with WorklistStore(store_url) as s:
        rid = s.add(scored("a.png", 0.4), input_sha256=SHA[1], source="upload")
    _revision(later_revisions, v + 1, '    op.create_table("extra_two", sa.Column("x", sa.Integer()))')
    _revision(later_revisions, v + 2, '    op.add_column("extra_two", sa.Column("y", sa.Integer()))')
    with WorklistStore(store_url) as s:
        assert s.schema_version == v + 2 and [r["id"] for r in s.list()] == [rid]
    with WorklistStore(store_url) as s:  # and only once
        assert s.schema_version == v + 2
    assert _sql(store_url, "SELECT x, y FROM extra_two") == []
    assert [r for (r,) in _sql(store_url, "SELECT version FROM schema_version ORDER BY version")][-3:] == [v, v + 1, v + 2]


def test_a_failed_revision_leaves_the_database_as_it_was(store_url, later_revisions):
    WorklistStore(store_url).close()
    _revision(later_revisions, SCHEMA_VERSION + 1,
              '    op.create_table("half_done", sa.Column("x", sa.Integer()))\n    raise RuntimeError("migration bug")')
    with pytest.raises(RuntimeError, match="migration bug"):
        WorklistStore(store_url)
    assert _sql(store_url, "SELECT version_num FROM alembic_version") == [(f"v{SCHEMA_VERSION}",)]
    assert max(v for (v,) in _sql(store_url, "SELECT version FROM schema_version")) == SCHEMA_VERSION
    assert "half_done" not in _tables(store_url)


def test_a_read_only_database_at_this_version_opens_without_writing(tmp_path):
    path = tmp_path / "w.db"
    WorklistStore(path).close()
    with WorklistStore(f"sqlite:///file:{path}?mode=ro&uri=true") as s:
        assert s.schema_version == SCHEMA_VERSION and s.count() == 0


def test_db_current_and_db_upgrade_for_the_administrator(tmp_path, capsys):
    path = tmp_path / "old.db"
    load_history(str(path), "v2")
    assert main(["db", "current", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"worklist database: {path}" in out and "schema version 2, from before alembic" in out
    assert f"this pneumoscan's is {SCHEMA_VERSION}: 'pneumoscan db upgrade'" in out
    assert main(["db", "upgrade", "--db", str(path)]) == 0
    assert capsys.readouterr().out.strip() == (f"upgraded {path} from schema version 2 (from before alembic) to "
                                               f"{SCHEMA_VERSION}")
    assert main(["db", "current", "--db", str(path)]) == 0
    assert f"schema version {SCHEMA_VERSION} (alembic revision v{SCHEMA_VERSION}): up to date" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", str(path)]) == 0
    assert "already at schema version" in capsys.readouterr().out
    missing = tmp_path / "nowhere" / "w.db"
    assert main(["db", "current", "--db", str(missing)]) == 0
    assert "no database there yet" in capsys.readouterr().out and not missing.parent.exists()
    assert main(["db", "upgrade", "--db", str(missing)]) == 0
    assert capsys.readouterr().out.startswith(f"created the worklist tables in {missing} at schema version")


def test_db_commands_on_postgresql_never_show_the_password(pg_server, capsys):
    plain = fresh_test_database(pg_server, keep_tables=False).replace("postgresql+psycopg://", "postgresql://")
    assert main(["db", "current", "--db", plain]) == 0
    assert "no worklist tables yet" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", plain]) == 0
    assert main(["db", "current", "--db", plain]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "***" in out and pg_server.password not in out
    with WorklistStore(plain) as s:
        assert s.schema_version == SCHEMA_VERSION


def test_a_newer_database_is_reported_by_db_current_and_refused_by_db_upgrade(tmp_path, capsys):
    path = tmp_path / "w.db"
    WorklistStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = ?", (f"v{SCHEMA_VERSION + 1}",))
    con.commit()
    con.close()
    assert main(["db", "current", "--db", str(path)]) == 0
    assert "written by a newer pneumoscan" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", str(path)]) == 1
    assert "newer pneumoscan" in capsys.readouterr().err
