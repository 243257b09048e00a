"""Opening a database: SQLite file or SQLAlchemy URL, with the settings concurrency needs.

SQLite: WAL with ``synchronous=NORMAL`` (readers never wait for the writer; a commit does not
fsync), a 30 s busy timeout, and ``BEGIN IMMEDIATE`` for write transactions (SQLAlchemy's
documented recipe: driver autocommit off, then a ``begin`` hook). With a plain ``BEGIN``, a
read-then-write transaction that meets another writer fails with ``SQLITE_BUSY`` at once instead of
waiting; measured here: thousands of errors with 4 processes, none with ``BEGIN IMMEDIATE``.

The SQLite that Python links here (3.40.1) predates the fix of SQLite's WAL-reset bug (3.51.3,
3.50.7, 3.44.6): a corruption needing two checkpoints racing a commit, which SQLite's authors rate
as rare as a disk fault. We keep WAL (rollback journals would serialise readers behind every job
update) and never enable ``mmap``, which turned that race into corruption where it was seen;
``sqlite_has_wal_reset_fix()`` tells whether the running library is fixed, and the README points
multi-process, many-writer setups at PostgreSQL.

Opening sets per-connection settings only: WAL mode, which is stored in the file, is set by the
store once it knows the file is imgnb's (another application's database is refused unchanged). A
file this process may not write is opened read-only, creating no file (see ``_read_only_url``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from ..errors import DatabaseError, DatabaseURLError, NotADatabase

__all__ = ["SQLITE_HEADER", "is_read_only", "make_engine", "sqlite_has_wal_reset_fix", "to_url"]

SQLITE_HEADER = b"SQLite format 3\x00"
READ_ONLY = "imgnb_read_only"  # execution option: begin a deferred (non-locking) transaction


def sqlite_has_wal_reset_fix(version: str = sqlite3.sqlite_version) -> bool:
    v = tuple(int(p) for p in version.split(".")[:3])
    return v >= (3, 51, 3) or (3, 50, 7) <= v < (3, 51, 0) or (3, 44, 6) <= v < (3, 45, 0)


def to_url(db: str | Path) -> sa.URL:
    """A SQLAlchemy URL for a path (its folder created) or a URL string; ``DatabaseError`` for
    one that cannot be used, with the reason."""
    text = str(db)
    if "://" in text:
        try:
            return sa.make_url(text)
        except sa.exc.ArgumentError as exc:
            raise DatabaseURLError(f"{text!r} is not a database URL: {exc}") from None
    if "\x00" in text:
        raise DatabaseError(f"{text!r} cannot be a file name: it holds a NUL character")
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            raise NotADatabase(f"{path} is a folder; give the path of a database file, e.g. {path / 'jobs.db'}")
        if path.exists() and path.stat().st_size > 0:
            with path.open("rb") as f:
                head = f.read(len(SQLITE_HEADER))
            if head != SQLITE_HEADER:
                raise NotADatabase(
                    f"{path} is not an SQLite database (its first bytes are {head[:16]!r}); it was left untouched"
                )
    except OSError as exc:
        raise DatabaseError(f"cannot read the database {path}: {exc.strerror}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"cannot create the folder {path.parent} for the database {path}: {exc.strerror}") from None
    return sa.URL.create("sqlite+pysqlite", database=str(path.resolve()))


def is_read_only(url: sa.URL) -> bool:
    """An existing SQLite file this process may not write."""
    path = url.database
    if url.get_backend_name() != "sqlite" or not path:
        return False
    return os.path.exists(path) and not os.access(path, os.W_OK)


def make_engine(url: sa.URL, *, read_only: bool = False) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(_read_only_url(url) if read_only else url)
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=8)


def _read_only_url(url: sa.URL) -> sa.URL:
    """``mode=ro``, and ``immutable=1`` for a WAL file that no process has open (it has no ``-shm``).

    A reader of a WAL file needs its ``-shm`` index: one created here would be ours, left behind,
    and its owner could no longer write the database ("attempt to write a readonly database",
    measured with two users). So without one, the file is read as it is, creating nothing; with one
    (a writer has it open), it is shared and the writer's changes are seen.
    """
    path = str(url.database)
    with open(path, "rb") as f:
        header = f.read(20)
    in_wal = len(header) == 20 and header[18] == 2  # the file format's "WAL" read version
    query = {"uri": "true", "mode": "ro"}
    if in_wal and not os.path.exists(f"{path}-shm"):
        query["immutable"] = "1"
    return url.set(database=f"file:{quote(path)}", query=query)


def _sqlite_engine(url: sa.URL) -> Engine:
    # every use ends its transaction, so the pool need not roll back on return
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_reset_on_return=None)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA busy_timeout = 30000")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA cache_size = -65536")  # 64 MiB: a 100,000-job queue stays in memory
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # on the driver's connection: through SQLAlchemy's execute, a claim and a finish took 0.22 ms, not 0.19
        begin = "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
        conn.connection.dbapi_connection.execute(begin)  # type: ignore[union-attr]

    return engine
