"""A private PostgreSQL server for the tests: Debian's binaries (``initdb``, ``postgres``), a cluster in a temporary
folder, listening on 127.0.0.1 at a free port and on a Unix socket in that folder; password authentication over TCP.

As root, PostgreSQL refuses to run: the cluster then belongs to the ``postgres`` system user (else ``nobody``), and
the server runs as that user. Nothing of the system's own PostgreSQL (its service, its clusters) is touched.

    server = PgServer.start()        # raises PgUnavailable with the reason when it cannot
    url = server.url("pneumoscan")   # postgresql+psycopg://pneumoscan:<password>@127.0.0.1:<port>/pneumoscan
    server.create_database("other")
    server.stop()

``tests/conftest.py`` imports the fixtures at the end of this file: ``pg_server`` (one server per test session,
started only when a test asks for it) and ``store_url`` (a test's database on SQLite, then on PostgreSQL).
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

#: The role the tests connect as (a superuser of the private cluster).
USER = "pneumoscan"
#: Seconds to wait for the server to accept connections.
START_TIMEOUT_S = 60.0


class PgUnavailable(RuntimeError):
    """PostgreSQL cannot be run here; the message says why (for a pytest skip)."""


def find_bin_dir() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (the newest version), else of ``initdb`` on the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4])
                   if Path(p).parts[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        folder = Path(initdb).resolve().parent
        if (folder / "postgres").exists():
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(uid: int | None, gid: int | None):
    """A preexec_fn that drops root to ``uid``/``gid`` (None: run as we are)."""
    if uid is None:
        return None

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


class PgServer:
    """One running private cluster. Use :meth:`start`; :meth:`stop` ends it and removes its folder."""

    def __init__(self, root: Path, port: int, password: str, proc: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.port = port
        self.password = password
        self.proc = proc

    @classmethod
    def start(cls) -> PgServer:
        """Make a cluster and start its server.

        Raises:
            PgUnavailable: no PostgreSQL binaries, no psycopg, no unprivileged user to run as (as root), or the
                server did not start (the message quotes its log).
        """
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise PgUnavailable("psycopg is not installed (pip install 'pneumoscan[postgres]')") from None
        bindir = find_bin_dir()
        if bindir is None:
            raise PgUnavailable("PostgreSQL's server binaries (initdb, postgres) not found; Debian package "
                                "'postgresql' (scripts/test.sh installs it as root)")
        uid = gid = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                uid, gid = entry.pw_uid, entry.pw_gid
                break
            else:
                raise PgUnavailable("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
        # Not under pytest's own temporary folder: as root that is 0700 and the server's user could not enter it.
        root = Path(tempfile.mkdtemp(prefix="pneumoscan-pg-"))
        password = secrets.token_urlsafe(16)
        try:
            (root / "pw").write_text(password + "\n")
            if uid is not None:
                for path in (root, root / "pw"):
                    os.chown(path, uid, gid)
            preexec = _run_as(uid, gid)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
            init = subprocess.run(
                [str(bindir / "initdb"), "-D", str(root / "data"), "-U", USER, f"--pwfile={root / 'pw'}",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
                 "--no-instructions"],
                cwd=root, env=env, preexec_fn=preexec, capture_output=True, text=True, timeout=120, check=False)
            (root / "pw").unlink()
            if init.returncode != 0:
                raise PgUnavailable(f"initdb failed ({init.returncode}): {(init.stderr or init.stdout)[-800:]}")
            for _ in range(5):
                port = _free_port()
                logfile = open(root / "server.log", "ab")  # noqa: SIM115 - the server writes it until it stops
                proc = subprocess.Popen(
                    [str(bindir / "postgres"), "-D", str(root / "data"), "-p", str(port), "-k", str(root),
                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off", "-c", "shared_buffers=32MB", "-c", "max_connections=60",
                     "-c", "log_min_messages=warning", "-c", "deadlock_timeout=200ms"],
                    cwd=root, env=env, preexec_fn=preexec, stdout=logfile, stderr=subprocess.STDOUT)
                logfile.close()
                server = cls(root, port, password, proc)
                if server._wait_ready():
                    log.info("PostgreSQL test server on 127.0.0.1:%d (%s)", port, root)
                    return server
                proc.kill()
                proc.wait(10)
                if "could not bind" not in server.log_tail():  # another process took the port: try another
                    break
            raise PgUnavailable(f"the PostgreSQL test server did not start: {server.log_tail()}")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def _wait_ready(self) -> bool:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def log_tail(self, chars: int = 800) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def dsn(self, database: str) -> str:
        """A libpq connection string (for psycopg directly)."""
        return f"host=127.0.0.1 port={self.port} user={USER} password={self.password} dbname={database}"

    def url(self, database: str, *, driver: str = "postgresql+psycopg") -> str:
        """A SQLAlchemy URL for ``database``, with the password (``driver="postgresql"``: the plain form)."""
        return f"{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run ``sql`` outside a transaction (CREATE/DROP DATABASE allow no other)."""
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str) -> str:
        """Create (or empty, when it exists) ``name``; return its SQLAlchemy URL."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def reset_schema(self, database: str) -> None:
        """Empty ``database``: its ``public`` schema dropped with everything in it, and made again."""
        self.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public", database)

    def stop(self) -> None:
        """Fast shutdown (clients disconnected), then the cluster's folder removed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- pytest fixtures (imported by conftest)

#: The database the store tests use on the session's server (emptied before each test that asks for it).
TEST_DATABASE = "pneumoscan_test"


@pytest.fixture(scope="session")
def pg_server():
    """The session's private PostgreSQL server (started on first use, stopped at the end); skips the test, with
    the reason, where PostgreSQL cannot run."""
    try:
        server = PgServer.start()
    except PgUnavailable as exc:
        pytest.skip(f"PostgreSQL test server unavailable: {exc}")
    try:
        server.create_database(TEST_DATABASE)
        yield server
    finally:
        server.stop()


def fresh_test_database(server: PgServer, *, keep_tables: bool) -> str:
    """The test database with no other connection to it, and either no tables at all (``keep_tables`` False, or
    its tables are not this code's newest schema) or this code's tables, emptied (TRUNCATE: much quicker than
    making them again); its URL."""
    import psycopg

    from pneumoscan.store.models import Base
    from pneumoscan.store.schema import head_version, revision_of

    with psycopg.connect(server.dsn(TEST_DATABASE), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND pid <> pg_backend_pid()")
        tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        at_head = False
        if keep_tables and tables == set(Base.metadata.tables) | {"alembic_version"}:
            at_head = [r for (r,) in conn.execute("SELECT version_num FROM alembic_version")] == [
                revision_of(head_version())]
        if at_head:
            data = sorted(tables - {"alembic_version", "schema_version"})
            conn.execute(f"TRUNCATE {', '.join(data)} RESTART IDENTITY CASCADE")  # type: ignore[arg-type]
        else:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
    return server.url(TEST_DATABASE)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """The worklist database of one test, on each engine: a new SQLite file, or the session server's test
    database with its tables emptied (or none yet)."""
    if request.param == "sqlite":
        return str(tmp_path / "worklist.db")
    return fresh_test_database(request.getfixturevalue("pg_server"), keep_tables=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path) -> str:
    """As :func:`store_url`, but always without any table (for the schema's own tests)."""
    if request.param == "sqlite":
        return str(tmp_path / "worklist.db")
    return fresh_test_database(request.getfixturevalue("pg_server"), keep_tables=False)
