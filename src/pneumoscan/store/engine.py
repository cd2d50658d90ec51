"""Where the worklist database lives and how it is opened: the default data folder, paths and URLs, the SQLite
settings (owner-only file, write-ahead log, a busy timeout, writes that take the lock up front) and the engine.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from pneumoscan.store.errors import StoreError

__all__ = ["DATA_DIR_ENV_VAR", "DB_FILENAME", "default_data_dir", "default_db_path", "describe", "describe_error",
           "make_engine", "resolve"]

log = logging.getLogger(__name__)

#: Environment variable naming the data folder (else ``$XDG_DATA_HOME/pneumoscan``, else
#: ``~/.local/share/pneumoscan``).
DATA_DIR_ENV_VAR = "PNEUMOSCAN_DATA_DIR"
#: The database file's name in the data folder.
DB_FILENAME = "worklist.db"
#: Milliseconds a SQLite writer waits for another (the server and the DICOM node share one file).
BUSY_TIMEOUT_MS = 30_000


def default_data_dir(environ: dict[str, str] | None = None) -> Path:
    """``$PNEUMOSCAN_DATA_DIR``, else ``$XDG_DATA_HOME/pneumoscan``, else ``~/.local/share/pneumoscan``."""
    env = os.environ if environ is None else environ
    if env.get(DATA_DIR_ENV_VAR, "").strip():
        return Path(env[DATA_DIR_ENV_VAR].strip()).expanduser()
    xdg = env.get("XDG_DATA_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "pneumoscan"


def default_db_path(environ: dict[str, str] | None = None) -> Path:
    """The default SQLite file: ``worklist.db`` in :func:`default_data_dir`."""
    return default_data_dir(environ) / DB_FILENAME


def resolve(url_or_path: str | os.PathLike[str] | None) -> tuple[URL, Path | None]:
    """``(SQLAlchemy URL, SQLite file or None)`` for a path, a URL, ``":memory:"`` or None (the default file).

    A path to a folder means ``worklist.db`` inside it. ``postgresql://`` (and ``postgres://``) mean
    ``postgresql+psycopg://``: psycopg 3, the driver of ``pip install 'pneumoscan[postgres]'``.

    Raises:
        StoreError: the text has ``://`` but is not a valid SQLAlchemy URL.
    """
    if url_or_path is None:
        path: Path | None = default_db_path()
    elif isinstance(url_or_path, str) and "://" in url_or_path:
        text = url_or_path.strip()
        if text.startswith("postgres://"):  # the form some hosting services hand out
            text = "postgresql://" + text[len("postgres://"):]
        try:
            url = make_url(text)
        except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
            raise StoreError(f"--db: not a database URL ({exc}); give a file path or a URL such as "
                             "postgresql://user@host/pneumoscan") from None
        if url.drivername == "postgresql":  # psycopg (3) is the driver pneumoscan installs, not psycopg2
            url = url.set(drivername="postgresql+psycopg")
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:" \
                or url.database.startswith("file:"):
            return url, None
        path = Path(url.database).expanduser()
    elif str(url_or_path) == ":memory:":
        return make_url("sqlite://"), None
    else:
        path = Path(url_or_path).expanduser()
    if path.is_dir():
        path = path / DB_FILENAME
    return URL.create("sqlite", database=str(path)), path


def describe(url: URL, path: Path | None) -> str:
    """The database in words for messages and logs: the file, or the URL with its password hidden."""
    if path is not None:
        return str(path)
    if url.get_backend_name() == "sqlite" and (not url.database or url.database == ":memory:"):
        return "an in-memory worklist database"
    return url.render_as_string(hide_password=True)


def describe_error(exc: BaseException) -> str:
    """The database's own message for a SQLAlchemy error (never the statement or its parameters, which may name a
    patient)."""
    orig = getattr(exc, "orig", None)
    return f"{type(orig).__name__}: {orig}" if orig is not None else type(exc).__name__


def _prepare_file(path: Path) -> None:
    """Create the SQLite file's missing folders (0700) and the file itself (0600) before SQLite opens it; warn
    when an existing file can be read by others (it names patients)."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create the folder {folder} for the worklist database {path}: {exc}") from exc
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask; say it exactly
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise StoreError(f"cannot read the worklist database {path}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the worklist database %s can be read by other users, and it names patients; restrict it "
                        "with: chmod 600 %s", path, path)
        return
    except OSError as exc:
        raise StoreError(f"cannot create the worklist database {path}: {exc}") from exc
    os.close(fd)
    os.chmod(path, 0o600)


def _sqlite_events(engine: Engine, *, file: bool) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below), not the sqlite3 module
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if file:
            cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, nor it them
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Take the write lock when the transaction starts: a read that later writes cannot then fail with
        # "database is locked" when another process wrote in between; it waits its turn (busy_timeout).
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: URL, path: Path | None, **kwargs: Any) -> Engine:
    """The engine for ``url`` (SQLite: the file prepared owner-only first; in memory: one shared connection).

    Raises:
        StoreError: the database driver is not installed, or the SQLite file cannot be created.
    """
    kwargs.setdefault("hide_parameters", True)  # an error message must never carry a patient's identifiers
    try:
        if url.get_backend_name() == "sqlite":
            if path is not None:
                _prepare_file(path)
                engine = create_engine(url, connect_args={"check_same_thread": False,
                                                          "timeout": BUSY_TIMEOUT_MS / 1000}, **kwargs)
            else:
                engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool,
                                       **kwargs)
            _sqlite_events(engine, file=path is not None)
            return engine
        return create_engine(url, pool_pre_ping=True, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        raise StoreError(f"--db {describe(url, path)}: the database driver is not installed ({exc}); for "
                         "PostgreSQL: pip install 'pneumoscan[postgres]' (psycopg) and use postgresql://...") from None
