"""The operator's database connection: SQLite (embedded default) or PostgreSQL (scale), one schema kept as plain SQL
migration files (`edge/operator/migrations/NNN_*.sql`) applied in order and recorded in `schema_version`.

Why plain SQL and not an ORM/Alembic: the schema is four tables with portable types; one file per change, read by a
person, applied the same way to both engines, keeps the dependency list to the two drivers (the stdlib's sqlite3,
psycopg 3 — the only importer of it is this module).

URLs: `sqlite:///ABS/PATH.db`, `sqlite:relative.db`, a bare path (SQLite), or `postgresql://user@host:port/db`.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from edge.durable import private_dir, private_file
from edge.errors import DataError, EdgeError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_AUTO_ID = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}


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
    """One connection, serialized by a lock (the console's threads and the consumer share it), with `?` placeholders
    on both engines."""

    def __init__(self, url: str | Path) -> None:
        self.dialect, target = parse_url(url)
        self.url = str(url)
        self._lock = threading.RLock()
        if self.dialect == "sqlite":
            path = Path(target)
            private_dir(path.parent, chmod_existing=False)
            try:
                private_file(path)  # names and evidence: 0600 before SQLite creates it (-wal/-shm copy the mode)
                self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute("PRAGMA foreign_keys=ON")
                self.conn.execute("PRAGMA busy_timeout=10000")
            except sqlite3.DatabaseError as err:
                raise StoreError(f"event store {path} cannot be opened: {err}") from None
        else:
            try:
                import psycopg
            except ImportError:
                raise StoreError("PostgreSQL needs the psycopg driver: pip install 'psycopg[binary]'") from None
            self._target = target
            self.conn = self._connect_pg()
        self.migrate()

    def _connect_pg(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self._target, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            raise StoreUnavailable(f"cannot connect to {self._target.split('@')[-1]}: "
                             f"{str(err).strip().splitlines()[0]}") from None

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
        """A new connection after an outage (PostgreSQL; SQLite's file connection survives). StoreError while the
        server is still unreachable."""
        if self.dialect != "postgresql":
            return
        with self._lock:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - the old connection is gone either way
                pass
            self.conn = self._connect_pg()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside BEGIN … COMMIT (ROLLBACK on error); statements take `?` placeholders."""
        with self._lock:
            cur = self.conn.cursor()
            cur.execute("BEGIN")
            try:
                yield _Cursor(cur, self._sql)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """All rows of one read statement."""
        with self._lock:
            cur = self.conn.cursor()
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
        with self._lock:
            self.conn.close()


class _Cursor:
    def __init__(self, cur: Any, convert) -> None:
        self._cur, self._convert = cur, convert

    def execute(self, sql: str, params: Sequence[Any] = ()) -> "_Cursor":
        self._cur.execute(self._convert(sql), tuple(params))
        return self

    def fetchall(self) -> list[tuple]:
        return list(self._cur.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount
