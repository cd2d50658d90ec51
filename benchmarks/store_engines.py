"""The worklist database on SQLite and on PostgreSQL: what opening, upgrading, writing and listing cost, and two
processes writing one database at once (rows per second, errors, duplicates).

PostgreSQL is the tests' private server (``tests/pgserver.py``: Debian's binaries, a cluster in a temporary folder)
unless ``--pg URL`` names one (its database is emptied!). Medians of ``--repeat`` runs; the machine's load average
is recorded with them, since the figures move with it.

    .venv/bin/python benchmarks/store_engines.py --out benchmarks/results/store_engines.json
    git archive HEAD src | tar -x -C /tmp/head && .venv/bin/python benchmarks/store_engines.py --src /tmp/head/src

``same_moment``: two servers receive the same 300 uploads in lockstep (``same_moment_other_tree``: with the code of
``--src``, e.g. the schema before the repeat key, whose PostgreSQL stores many of them twice).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from resultfactory import scored  # noqa: E402

from pneumoscan.store import WorklistStore  # noqa: E402

log = logging.getLogger("store_engines")
HISTORY = ROOT / "tests" / "data" / "store_history"

#: Run by each of the two writer processes: N uploads, half of them the other process's too; prints rows/s.
WRITER = r'''
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[4])
from resultfactory import scored
from pneumoscan.store import WorklistStore
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
go = sys.argv[5]
import os
while not os.path.exists(go):
    time.sleep(0.002)
errors = 0
with WorklistStore(url) as s:
    t = time.perf_counter()
    for i in range(n):
        key = ("shared", i) if i % 2 == 0 else (name, i)
        try:
            s.add_or_count(scored("x.png", 0.4), input_sha256=hashlib.sha256(repr(key).encode()).hexdigest(),
                           source="upload", client=name)
        except Exception:
            errors += 1
    print(json.dumps({"seconds": time.perf_counter() - t, "errors": errors}))
'''


#: Two servers (two stores, two threads) receiving the same N uploads in lockstep (a barrier before each): how many
#: inputs end up stored twice. Run in its own process so that ``--src`` can name another code tree.
RACE = r'''
import collections, hashlib, json, sys, threading
sys.path.insert(0, sys.argv[3])
from resultfactory import scored
from pneumoscan.store import WorklistStore
url, n = sys.argv[1], int(sys.argv[2])
stores = [WorklistStore(url), WorklistStore(url)]
barrier = threading.Barrier(2)
errors = []
def work(k):
    for i in range(n):
        barrier.wait()
        try:
            stores[k].add_or_count(scored("x.png", 0.4), input_sha256=hashlib.sha256(str(i).encode()).hexdigest(),
                                   source="upload", client=str(k))
        except Exception as exc:
            errors.append(type(exc).__name__)
threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
rows = stores[0].list(limit=1000)
seen = collections.Counter(r["input_sha256"] for r in rows)
print(json.dumps({"inputs": n, "rows": len(rows), "inputs_stored_twice": sum(1 for v in seen.values() if v > 1),
                  "receipts_counted": sum(r["times_received"] for r in rows), "errors": len(errors)}))
'''


def race(url: str, src: Path, n: int = 300) -> dict:
    """:data:`RACE` with the code of ``src`` (a ``src`` folder) on the empty database ``url``."""
    done = subprocess.run([sys.executable, "-c", RACE, url, str(n), str(ROOT / "tests")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(src)})
    if done.returncode != 0:
        return {"failed": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2)


def _sha(i: object) -> str:
    import hashlib

    return hashlib.sha256(repr(i).encode()).hexdigest()


def measure(engine: str, new_url, repeat: int, tmp: Path, other_src: Path | None) -> dict:
    """Figures for one engine; ``new_url()`` gives an empty database's URL each time it is called."""
    out: dict = {}
    fresh = []
    for _ in range(repeat):
        target = new_url()
        t = time.perf_counter()
        WorklistStore(target).close()
        fresh.append(time.perf_counter() - t)
    out["open_new_ms"] = round(statistics.median(fresh) * 1000, 2)
    url = new_url()
    WorklistStore(url).close()
    out["open_existing_ms"] = _median_ms(lambda: WorklistStore(url).close(), repeat)

    def upgrade_v1() -> None:
        target = new_url()
        if "://" not in target:
            Path(target).touch(mode=0o600)
            con = sqlite3.connect(target)
            con.executescript((HISTORY / "sqlite_v1.sql").read_text())
            con.close()
        else:
            import psycopg
            from sqlalchemy import make_url

            libpq = make_url(target).set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(libpq, autocommit=True) as conn:
                conn.execute((HISTORY / "postgresql_v1.sql").read_text())
        t = time.perf_counter()
        WorklistStore(target).close()
        upgrade_times.append(time.perf_counter() - t)

    upgrade_times: list[float] = []
    for _ in range(repeat):
        upgrade_v1()
    out["upgrade_hand_written_v1_ms"] = round(statistics.median(upgrade_times) * 1000, 2)

    with WorklistStore(new_url()) as s:
        counter = iter(range(10**9))
        out["add_ms"] = _median_ms(lambda: s.add(scored("a.png", 0.4), input_sha256=_sha(next(counter)),
                                                 source="upload"), repeat * 20)
        s.add_or_count(scored("r.png", 0.4), input_sha256=_sha("r"), source="upload")
        out["add_or_count_repeat_ms"] = _median_ms(
            lambda: s.add_or_count(scored("r.png", 0.4), input_sha256=_sha("r"), source="upload"), repeat * 20)
        while s.count() < 1000:
            s.add(scored("b.png", (s.count() % 100) / 100), input_sha256=_sha(("b", s.count())), source="upload")
        out["list_200_of_1000_ms"] = _median_ms(lambda: s.list(limit=200), repeat * 3)
        out["count_ms"] = _median_ms(lambda: s.count(), repeat * 10)

    url = new_url()
    WorklistStore(url).close()
    go = tmp / f"go-{engine}"
    n = 200
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, name, str(n), str(ROOT / "tests"), str(go)],
                              stdout=subprocess.PIPE, text=True) for name in ("a", "b")]
    time.sleep(1.5)  # both imported and waiting
    go.touch()
    results = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    with WorklistStore(url) as s:
        rows = s.count()
        shared = [r["times_received"] for r in s.list(limit=1000) if r["client"] in ("a", "b")]
    out["same_moment"] = race(new_url(), ROOT / "src")
    if other_src is not None:
        out["same_moment_other_tree"] = race(new_url(), other_src)
    wall = max(r["seconds"] for r in results)
    out["two_writers"] = {"calls_each": n, "rows": rows, "expected_rows": n // 2 + 2 * (n // 2),
                          "times_received_2": sum(1 for t in shared if t == 2), "errors": sum(r["errors"] for r in results),
                          "calls_per_s": round(2 * n / wall, 1)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", help="a PostgreSQL URL to use (its database is emptied); default: a private server")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--src", type=Path, help="another tree's src folder (e.g. the last commit's, from git archive) "
                                                 "to run the same-moment race with too")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "store_engines.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    from pgserver import PgServer, fresh_test_database

    report: dict = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "repeat": args.repeat, "other_tree": str(args.src) if args.src else None}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        counter = iter(range(10**9))
        report["sqlite"] = measure("sqlite", lambda: str(tmp / f"w{next(counter)}.db"), args.repeat, tmp, args.src)
        log.info("sqlite: %s", report["sqlite"])
        server = None
        if args.pg:
            from sqlalchemy import create_engine, text

            def pg_url() -> str:
                engine = create_engine(args.pg)
                with engine.begin() as conn:
                    conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public"))
                engine.dispose()
                return args.pg
        else:
            server = PgServer.start()
            server.create_database("pneumoscan_test")

            def pg_url() -> str:
                return fresh_test_database(server, keep_tables=False)
        try:
            report["postgresql"] = measure("postgresql", pg_url, args.repeat, tmp, args.src)
            log.info("postgresql: %s", report["postgresql"])
        finally:
            if server is not None:
                server.stop()
    report["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
