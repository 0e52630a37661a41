"""How the results store connects: SQLite (WAL, BEGIN IMMEDIATE for writes) or PostgreSQL, for writing or
read-only (the leaderboard only reads: a store in a read-only folder, or on a read-only mount, must do)."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import ensure_writable_dir

SQLITE_BUSY_TIMEOUT_S = 60.0
MEMORY_DATABASES = (None, "", ":memory:")


def is_in_memory(url: URL) -> bool:
    """An SQLite URL whose database lives in the process only (`sqlite://`, `sqlite:///:memory:`, a
    `file::memory:` or `mode=memory` URI): whatever is recorded there vanishes when the command ends."""
    database = url.database
    return url.get_backend_name() == "sqlite" and (
        database in MEMORY_DATABASES or ":memory:" in (database or "") or url.query.get("mode") == "memory")


def _postgresql_engine(url: URL) -> sa.Engine:
    try:
        # pre_ping: a sweep holds its store for hours, across server restarts and idle disconnects
        return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    except ImportError:
        raise UserError("a PostgreSQL store needs psycopg2: pip install psycopg2-binary") from None


def _enable_wal(cursor) -> None:
    """Switch the file to WAL. Two connections converting a fresh file at once can deadlock, and
    SQLite then answers "database is locked" at once instead of calling the busy handler (measured:
    4% of simultaneous first opens): retry until the busy timeout, as the handler would have."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_engine(url: URL) -> sa.Engine:
    if url.database and url.database != ":memory:":
        ensure_writable_dir(Path(url.database).expanduser().resolve().parent)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    # SQLAlchemy's documented recipe for real SQLite transactions: the driver emits no BEGIN of
    # its own, and we emit BEGIN IMMEDIATE for writes, so concurrent writers queue on the busy
    # timeout at BEGIN instead of failing with "database is locked" when a read lock is upgraded.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _enable_wal(cursor)  # readers and one writer at once
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("bench_write") else "BEGIN")

    return engine


def read_only_engine(url: URL) -> tuple[sa.Engine, bool]:
    """(engine, found): a connection that cannot write. SQLite opens the file with mode=ro, or, where even
    that needs a write (a WAL store whose -shm file cannot be created in a read-only folder), as immutable;
    a missing file is (an empty in-memory store, False). PostgreSQL sessions are read-only transactions."""
    if url.get_backend_name() != "sqlite":
        try:
            return sa.create_engine(url, pool_pre_ping=True, connect_args={
                "connect_timeout": 10, "options": "-c default_transaction_read_only=on"}), True
        except ImportError:
            raise UserError("a PostgreSQL store needs psycopg2: pip install psycopg2-binary") from None
    path = Path(url.database).expanduser().resolve()
    if not path.is_file():
        return sa.create_engine("sqlite://"), False
    uri = f"file:{quote(str(path))}"

    def connect() -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opening is lazy: prove it reads
        except sqlite3.OperationalError:
            # immutable: no locks, no -shm; only safe because nobody can write where we cannot
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True)
        conn.execute("PRAGMA query_only=ON")
        return conn

    return sa.create_engine("sqlite://", creator=connect), True
