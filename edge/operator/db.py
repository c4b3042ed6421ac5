"""The operator's database: SQLite (embedded default) or PostgreSQL (scale), one schema kept as plain SQL migration
files (`edge/operator/migrations/NNN_*.sql`) applied in order and recorded in `schema_version`.

Why plain SQL and not an ORM/Alembic: the schema is a handful of tables with portable types; one file per change,
read by a person, applied the same way to both engines, keeps the dependency list to the two drivers (the stdlib's
sqlite3, psycopg 3 — the only importer of it is this module).

Why a pool (written here, no new dependency): the console runs each request's store work in a threadpool, and one
connection behind a lock made 20 reviewers' requests queue on each other. Each `transaction()`/`query()` borrows a
connection from a small LIFO pool (created lazily, at most `pool_size`), and gives it back; a connection that failed
with a transient error (server gone) is closed instead. SQLite gets one connection per borrow too (WAL: readers never
wait for the writer); its writers are serialized in-process by a lock and take the write lock up front
(`BEGIN IMMEDIATE`), so a read-then-write transaction never fails with "database is locked" on upgrade, and another
process's writer is waited for with `busy_timeout`.

URLs: `sqlite:///ABS/PATH.db`, `sqlite:relative.db`, a bare path (SQLite), or `postgresql://user@host:port/db`.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

from edge.durable import private_dir, private_file
from edge.errors import DataError, EdgeError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_AUTO_ID = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}
#: Connections a Database keeps at most (the console's threadpool has 40 threads; each request's store work is a few
#: short statements, so a few connections serve them; PostgreSQL's default max_connections is 100).
POOL_SIZE = 8
#: Longest wait for a free connection, seconds, before StoreUnavailable.
POOL_WAIT_S = 30.0
#: SQLite: how long a writer waits for another process's write lock, milliseconds.
SQLITE_BUSY_MS = 10_000


class StoreError(EdgeError):
    """The database cannot be opened or migrated."""


class StoreUnavailable(StoreError):
    """The database server cannot be reached (down, restarting): worth retrying."""


def parse_url(url: str | Path) -> tuple[str, str]:
    """(dialect, target): ("sqlite", path) or ("postgresql", conninfo URL)."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql", text
    if text.startswith("sqlite:///"):
        return "sqlite", text[len("sqlite://"):]
    if text.startswith("sqlite:"):
        return "sqlite", text[len("sqlite:"):]
    if re.match(r"[a-z][a-z0-9+]*://", text):
        raise DataError(f"store URL {text!r}: use sqlite:///PATH, a file path, or postgresql://user@host:port/db")
    return "sqlite", text


#: PostgreSQL advisory lock key that serializes migrations (held until the migrating transaction ends).
MIGRATION_LOCK = 0x6564676520_01  # "edge " + 1


class Database:
    """A pool of up to `pool_size` connections to one database, shared by threads, with `?` placeholders on both
    engines."""

    def __init__(self, url: str | Path, pool_size: int = POOL_SIZE) -> None:
        if pool_size < 1:
            raise DataError(f"pool size must be at least 1, got {pool_size}")
        self.dialect, self._target = parse_url(url)
        self.url = str(url)
        self.pool_size = pool_size
        self._lock = threading.Lock()  # guards the fields below
        self._idle: list[Any] = []  # LIFO: the most recently used connection (warm caches) is lent first
        self._generation = 0  # bumped by reconnect(): connections lent before it are closed when given back
        self._closed = False
        self._slots = threading.BoundedSemaphore(pool_size)
        self._writer = threading.Lock() if self.dialect == "sqlite" else None
        if self.dialect == "sqlite":
            path = Path(self._target)
            private_dir(path.parent, chmod_existing=False)
            private_file(path)  # names and evidence: 0600 before SQLite creates it (-wal/-shm copy the mode)
        else:
            try:
                import psycopg  # noqa: F401 - only to name the missing driver here
            except ImportError:
                raise StoreError("PostgreSQL needs the psycopg driver: pip install 'psycopg[binary]'") from None
        self._give_back(self._connect(), 0)  # fail now, not at the first request, if it cannot be opened
        self.migrate()

    # ------------------------------------------------------------ connections

    def _connect(self) -> Any:
        if self.dialect == "sqlite":
            try:
                conn = sqlite3.connect(self._target, check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
                return conn
            except sqlite3.DatabaseError as err:
                raise StoreError(f"event store {self._target} cannot be opened: {err}") from None
        import psycopg

        try:
            return psycopg.connect(self._target, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            raise StoreUnavailable(f"cannot connect to {self._target.split('@')[-1]}: "
                                   f"{str(err).strip().splitlines()[0]}") from None

    def _reusable(self, conn: Any) -> bool:
        """Whether a connection given back is healthy and outside any transaction."""
        if self.dialect == "sqlite":
            return not conn.in_transaction
        from psycopg import pq

        return not conn.closed and not conn.broken and conn.info.transaction_status == pq.TransactionStatus.IDLE

    def _give_back(self, conn: Any, generation: int) -> None:
        with self._lock:
            keep = not self._closed and generation == self._generation and len(self._idle) < self.pool_size
            if keep:
                self._idle.append(conn)
        if not keep:
            _close_quietly(conn)

    @contextmanager
    def _borrow(self) -> Iterator[Any]:
        """A connection for this thread alone until the block ends; StoreUnavailable if none is free within
        POOL_WAIT_S."""
        if not self._slots.acquire(timeout=POOL_WAIT_S):
            raise StoreUnavailable(f"all {self.pool_size} database connections stayed busy for {POOL_WAIT_S:g} s")
        try:
            with self._lock:
                if self._closed:
                    raise StoreError("the database is closed")
                conn, generation = (self._idle.pop() if self._idle else None), self._generation
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            except BaseException as err:
                if self.transient(err) or not self._reusable(conn):
                    _close_quietly(conn)  # broken (server gone, or a rollback that failed): never lent again
                    if self._died(conn):  # a server restart killed its pooled siblings too: lend none of them
                        self._drop_idle()
                else:
                    self._give_back(conn, generation)
                raise
            if self._reusable(conn):
                self._give_back(conn, generation)
            else:
                _close_quietly(conn)
        finally:
            self._slots.release()

    def _died(self, conn: Any) -> bool:
        """Whether the server side of `conn` is gone (PostgreSQL restarted or unreachable), not just its statement."""
        return self.dialect == "postgresql" and bool(conn.broken)

    def _drop_idle(self) -> None:
        """Close every idle connection and retire those lent out (closed when given back): after a server restart
        they are all dead, and lending them one by one would fail as many requests as the pool holds."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    def transient(self, err: BaseException) -> bool:
        """Whether `err` is the database being unavailable (down, restarting, unreachable, locked) rather than a
        bug or bad data: worth retrying after a pause."""
        if isinstance(err, StoreUnavailable):
            return True
        if self.dialect == "sqlite":
            return isinstance(err, sqlite3.OperationalError)
        import psycopg

        return isinstance(err, (psycopg.OperationalError, psycopg.InterfaceError))

    def reconnect(self) -> None:
        """After an outage: drop every pooled connection (those lent out are closed when given back) and open a
        fresh one, proving the server is back. StoreUnavailable while it is still unreachable."""
        self._drop_idle()
        with self._lock:
            generation = self._generation
        self._give_back(self._connect(), generation)

    # ------------------------------------------------------------ statements

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    @contextmanager
    def transaction(self) -> Iterator[_Cursor]:
        """A cursor inside BEGIN … COMMIT (ROLLBACK on error) on a connection of its own; statements take `?`
        placeholders. Do not open another transaction inside it (SQLite: one writer at a time)."""
        with self._writer or nullcontext(), self._borrow() as conn:
            cur = conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
                try:
                    yield _Cursor(cur, self._sql)
                    cur.execute("COMMIT")
                except BaseException:
                    with suppress(Exception):  # a failed rollback leaves the connection unusable: it is discarded
                        cur.execute("ROLLBACK")
                    raise
            finally:
                cur.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """All rows of one read statement (its own snapshot). On PostgreSQL a read that fails because its pooled
        connection died (a server restart since it was last used) is tried once more on a fresh one."""
        try:
            return self._read(sql, params)
        except Exception as err:
            if self.dialect != "postgresql" or isinstance(err, StoreError) or not self.transient(err):
                raise
        return self._read(sql, params)

    def _read(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        with self._borrow() as conn:
            cur = conn.cursor()
            try:
                cur.execute(self._sql(sql), tuple(params))
                return list(cur.fetchall())
            finally:
                cur.close()

    def migrate(self) -> int:
        """Apply the migration files newer than `schema_version`; returns the version now."""
        with self.transaction() as cur:
            if self.dialect == "postgresql":  # any number of processes may start at once: one migrates, the
                cur.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))  # others wait, then find it done
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = cur.execute("SELECT MAX(version) FROM schema_version").fetchall()
            current = rows[0][0] or 0
            for path in sorted(MIGRATIONS.glob("[0-9][0-9][0-9]_*.sql")):
                version = int(path.name[:3])
                if version <= current:
                    continue
                for statement in path.read_text().replace("{id}", _AUTO_ID[self.dialect]).split(";"):
                    body = "\n".join(ln for ln in statement.splitlines() if not ln.strip().startswith("--")).strip()
                    if body:
                        cur.execute(body)
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                current = version
        return current

    def close(self) -> None:
        """Close the pooled connections; those lent out are closed when given back. Later use: StoreError."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    with suppress(Exception):  # closing a broken connection may fail; it is gone either way
        conn.close()


class _Cursor:
    def __init__(self, cur: Any, convert: Callable[[str], str]) -> None:
        self._cur, self._convert = cur, convert

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        self._cur.execute(self._convert(sql), tuple(params))
        return self

    def fetchall(self) -> list[tuple]:
        return list(self._cur.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount
