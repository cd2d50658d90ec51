"""The reading room knows who reads (issue 26, item 7) and the worklist is per study (item 11): per-reader tokens
from a token file (one shared token still works), the reader's name on every result, review and audit row (never
the token), the same input sent twice as one result with a count, and a study's films listed together, the study
placed by its riskiest film."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import warnings

import pytest
from imagefactory import png_bytes, synthetic_xray
from resultfactory import scored
from sqlalchemy import text

from pneumoscan.config import ConfigError
from pneumoscan.io import ImageContext
from pneumoscan.serve import ServeSettings, create_app
from pneumoscan.serve.security import TOKEN_ENV_VAR, Readers, load_access, parse_readers
from pneumoscan.store import SCHEMA_VERSION, WorklistStore
from pneumoscan.store import engine as engine_mod
from pneumoscan.store import schema as schema_mod

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ALICE, BOB, SHARED = "alice-token-0123456789abcdef", "bob-token-0123456789abcdefgh", "shared-token-0123456789abc"
READERS_FILE = f"""# pneumoscan readers: NAME TOKEN
Dr Alice Lee   {ALICE}

bob\t{BOB}
"""


def _sha(seed: object) -> str:
    return hashlib.sha256(str(seed).encode()).hexdigest()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- the token file


def test_a_readers_file_names_each_token(tmp_path):
    f = tmp_path / "readers"
    f.write_text(READERS_FILE)
    f.chmod(0o600)
    token, readers = load_access(f)
    assert token is None and readers is not None
    assert readers.names == ("Dr Alice Lee", "bob")  # spaces inside a name are kept (collapsed), a tab separates
    assert readers.match(ALICE.encode()) == "Dr Alice Lee" and readers.match(BOB.encode()) == "bob"
    assert readers.match(b"alice-token-0123456789abcdeX") is None
    assert ALICE not in repr(readers) and BOB not in repr(readers)
    assert ALICE not in repr(ServeSettings(readers=readers))


def test_a_file_with_one_token_on_its_first_line_is_still_one_shared_token(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    f = tmp_path / "token"
    f.write_text(SHARED + "\nignored second line\n")
    f.chmod(0o600)
    assert load_access(f) == (SHARED, None)
    assert load_access(None) == (None, None)
    assert load_access(None, environ={TOKEN_ENV_VAR: SHARED}) == (SHARED, None)


@pytest.mark.parametrize(("content", "message"), [
    (f"alice {ALICE}\nAlice {BOB}\n", r"line 2: the reader 'Alice' is already on line 1"),
    (f"alice {ALICE}\nbob {ALICE}\n", r"line 2: this token is already on line 1"),
    (f"alice {ALICE}\nbob short\n", r"line 2: the token of 'bob' is shorter than 16"),
    (f"alice {ALICE}\n{BOB}\n", r"line 2: expected 'NAME TOKEN'"),
    (f"local {ALICE}\n", r"line 1: 'local' cannot be a reader's name"),
    (f"token-abc {ALICE}\n", r"line 1: 'token-abc' cannot be a reader's name"),
    (f"{'x' * 65} {ALICE}\n", r"line 1: a reader's name is at most 64"),
    ("# only a comment\n\n", r"no reader found"),
])
def test_a_bad_readers_file_is_refused_naming_the_line_and_never_the_token(tmp_path, content, message):
    f = tmp_path / "readers"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        load_access(f)
    assert str(f) in str(err.value)
    assert ALICE not in str(err.value) and BOB not in str(err.value)


def test_an_unreadable_token_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"--token-file .*missing: cannot read it"):
        load_access(tmp_path / "missing")
    f = tmp_path / "binary"
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_access(f)


def test_a_readers_file_others_can_read_is_warned_about(tmp_path, caplog):
    f = tmp_path / "readers"
    f.write_text(READERS_FILE)
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.serve.security"):
        load_access(f)
    assert "chmod 600" in caplog.text and ALICE not in caplog.text


def test_serve_refuses_a_bad_token_file_before_loading_the_model(tmp_path, capsys):
    from pneumoscan.cli import main

    f = tmp_path / "readers"
    f.write_text(f"alice {ALICE}\nbob {ALICE}\n")
    assert main(["serve", "--token-file", str(f), "--model", "/nonexistent.safetensors"]) == 1
    err = capsys.readouterr().err
    assert "this token is already on line 1" in err and "Traceback" not in err and ALICE not in err


def test_parse_readers_needs_a_source_in_its_messages():
    with pytest.raises(ConfigError, match="^the-source, line 1"):
        parse_readers("onlyonefield-0123456789", "the-source")
    assert isinstance(parse_readers(f"a {ALICE}", "x"), Readers)


# --------------------------------------------------------------------------- the reader on every row


@pytest.fixture
def reading_room(predictor, tmp_path):
    db = tmp_path / "w.db"
    readers = parse_readers(READERS_FILE, "test")
    client = TestClient(create_app(predictor, ServeSettings(readers=readers, db=str(db))))
    yield client, db


def test_each_reader_is_named_on_their_results_reviews_and_audit_rows(reading_room):
    client, db = reading_room
    assert client.get("/api/v1/worklist").status_code == 401
    assert client.get("/api/v1/worklist", headers=_bearer(SHARED)).status_code == 401
    assert client.get("/api/v1/reader", headers=_bearer(BOB)).json() == {"reader": "bob", "named": True,
                                                                         "auth": True}
    film = png_bytes(synthetic_xray(300, 240, seed=3))
    r = client.post("/api/v1/predict", files=[("files", ("film.png", film, "image/png"))], headers=_bearer(ALICE))
    assert r.status_code == 200, r.text
    rid = r.json()["results"][0]["worklist_id"]
    assert client.get(f"/api/v1/worklist/{rid}", headers=_bearer(BOB)).json()["client"] == "Dr Alice Lee"
    r = client.post(f"/api/v1/worklist/{rid}/review", json={"verdict": "disagree", "note": "air bronchogram"},
                    headers=_bearer(BOB))
    assert r.status_code == 200, r.text
    assert r.json()["review"]["reviewer"] == "bob" and r.json()["review"]["verdict"] == "disagree"
    events = client.get("/api/v1/audit", headers=_bearer(ALICE)).json()["events"]
    assert [(e["event"], e["client"]) for e in events] == [("review", "bob"), ("result", "Dr Alice Lee")]
    row = client.get("/api/v1/worklist", headers=_bearer(ALICE)).json()["results"][0]
    assert row["review"]["reviewer"] == "bob" and row["client"] == "Dr Alice Lee"
    csv_text = client.get("/api/v1/worklist.csv", headers=_bearer(ALICE)).text
    assert ",bob," in csv_text
    client.close()
    stored = db.read_bytes()
    assert ALICE.encode() not in stored and BOB.encode() not in stored  # names, never tokens


def test_a_shared_token_keeps_its_short_hash_as_the_reader(predictor):
    client = TestClient(create_app(predictor, ServeSettings(token=SHARED)))
    who = client.get("/api/v1/reader", headers=_bearer(SHARED)).json()
    assert who["reader"] == "token-" + hashlib.sha256(SHARED.encode()).hexdigest()[:10] and who["named"] is False


# --------------------------------------------------------------------------- the same input twice


def test_the_same_upload_twice_is_one_result_with_a_count_and_an_audited_repeat(reading_room):
    client, _ = reading_room
    film = png_bytes(synthetic_xray(300, 240, seed=5))
    first = client.post("/api/v1/predict", files=[("files", ("a.png", film, "image/png"))],
                        headers=_bearer(ALICE)).json()["results"][0]
    again = client.post("/api/v1/predict", files=[("files", ("renamed.png", film, "image/png"))],
                        headers=_bearer(BOB)).json()["results"][0]
    assert first["times_received"] == 1 and again["times_received"] == 2
    assert again["worklist_id"] == first["worklist_id"] and again["probability"] == first["probability"]
    page = client.get("/api/v1/worklist", headers=_bearer(ALICE)).json()
    assert page["total"] == 1 and page["results"][0]["times_received"] == 2
    events = client.get("/api/v1/audit", headers=_bearer(ALICE)).json()["events"]
    repeat = [e for e in events if e["event"] == "repeat"]
    assert len(repeat) == 1 and repeat[0]["client"] == "bob" and repeat[0]["result_id"] == first["worklist_id"]
    assert "received 2 times" in repeat[0]["detail"]
    other = png_bytes(synthetic_xray(300, 240, seed=6))
    client.post("/api/v1/predict", files=[("files", ("b.png", other, "image/png"))], headers=_bearer(ALICE))
    assert client.get("/api/v1/worklist", headers=_bearer(ALICE)).json()["total"] == 2


def test_a_repeat_counts_only_the_same_answer_from_the_same_model(tmp_path):
    from resultfactory import MODEL, unread

    from pneumoscan.result import ModelIdentity

    with WorklistStore(tmp_path / "w.db") as store:
        rid, n = store.add_or_count(scored("x.png", 0.7), input_sha256=_sha("x"), source="upload", client="a")
        assert (rid, n) == (rid, 1)
        assert store.add_or_count(scored("x.png", 0.7), input_sha256=_sha("x"), source="upload") == (rid, 2)
        newer = scored("x.png", 0.7).replace(model=ModelIdentity(MODEL.name, "another-version", 0.5))
        other, n = store.add_or_count(newer, input_sha256=_sha("x"), source="upload")
        assert other != rid and n == 1  # another model: a new result
        bad1, _ = store.add_or_count(unread("y.png"), input_sha256=_sha("y"), source="upload")
        bad2, _ = store.add_or_count(unread("y.png"), input_sha256=_sha("y"), source="upload")
        assert bad1 != bad2  # a file not read is tried afresh (its failure may have passed)
        assert store.get(rid)["times_received"] == 2 and store.count() == 4


def test_a_version_6_database_gains_the_count_and_old_rows_were_received_once(tmp_path):
    path = tmp_path / "v6.db"
    with WorklistStore(path) as s:
        old = s.add(scored("old.png", 0.4), input_sha256=_sha("old"), source="upload", client="local")
    con = sqlite3.connect(path)  # as a version 6 database had it (before alembic): no count, no repeat key
    con.execute("DROP INDEX ix_worklist_results_repeat_key")
    con.execute("ALTER TABLE worklist_results DROP COLUMN repeat_key")
    con.execute("ALTER TABLE worklist_results DROP COLUMN times_received")
    con.execute("DROP TABLE alembic_version")
    con.execute("DELETE FROM schema_version WHERE version > 6")
    con.commit()
    con.close()
    with WorklistStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.get(old)["times_received"] == 1
        assert s.add_or_count(scored("old.png", 0.4), input_sha256=_sha("old"), source="upload") == (old, 2)
    engine = engine_mod.make_engine(*engine_mod.resolve(path))
    with engine.begin() as conn:
        assert schema_mod.database_version(conn) == SCHEMA_VERSION
        assert conn.execute(text("SELECT times_received FROM worklist_results")).scalar() == 2
    engine.dispose()


# --------------------------------------------------------------------------- studies


def _study_rows(store: WorklistStore) -> dict[str, int]:
    """Films of three studies and two lone uploads (seeds name them)."""
    ids = {}
    for name, p, ctx in (
        ("s1-low", 0.30, ImageContext(study_uid="1.2.3", accession="A1", view="PA")),
        ("lone-high", 0.90, ImageContext()),
        ("s1-mid", 0.60, ImageContext(study_uid="1.2.3", accession="A1", view="LL")),
        ("acc-top", 0.95, ImageContext(accession="ACC-77", view="AP")),
        ("acc-low", 0.10, ImageContext(accession="ACC-77", view="PA")),
        ("lone-low", 0.20, ImageContext()),
        ("s1-oos", 0.99, ImageContext(study_uid="1.2.3", accession="A1", view="LATERAL")),
    ):
        result = scored(name, p, context=ctx, in_scope=name != "s1-oos",
                        scope_reason="" if name != "s1-oos" else "lateral view")
        ids[name] = store.add(result, input_sha256=_sha(name), source="upload", client="alice")
    return ids


def test_a_studys_films_are_listed_together_by_its_riskiest_film(tmp_path, predictor):
    with WorklistStore(tmp_path / "w.db") as store:
        ids = _study_rows(store)
        client = TestClient(create_app(predictor, ServeSettings(), store=store))
        page = client.get("/api/v1/worklist").json()
        order = [r["id"] for r in page["results"]]
        expected = ["acc-top", "acc-low", "lone-high", "s1-mid", "s1-low", "s1-oos", "lone-low"]
        assert order == [ids[n] for n in expected]
        keys = [(r["study_key"], r["study_size"]) for r in page["results"]]
        assert keys == [("accession:ACC-77", 2), ("accession:ACC-77", 2), ("", 1), ("uid:1.2.3", 3),
                        ("uid:1.2.3", 3), ("uid:1.2.3", 3), ("", 1)]
        ranks = [r["rank"] for r in page["results"]]
        assert ranks == [1, 6, 2, 3, 4, None, 5]  # each film's own risk rank among the listed films
        # Paging keeps the grouped order; the CSV lists the same order.
        paged = [r["id"] for o in (0, 3, 6) for r in client.get(f"/api/v1/worklist?limit=3&offset={o}").json()["results"]]
        assert paged == order
        csv_ids = [int(line.split(",")[1]) for line in client.get("/api/v1/worklist.csv").text.splitlines()[1:]]
        assert csv_ids == order
        # Filters group among the rows they keep; newest and oldest stay by time received.
        flagged = client.get("/api/v1/worklist?flagged=true").json()["results"]
        assert [r["id"] for r in flagged] == [ids["acc-top"], ids["lone-high"], ids["s1-mid"]]
        assert [r["study_size"] for r in flagged] == [1, 1, 1]
        newest = [r["id"] for r in client.get("/api/v1/worklist?order=newest").json()["results"]]
        assert newest == sorted(ids.values(), reverse=True)
