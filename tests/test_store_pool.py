"""The operator database's connection pool (`edge.operator.db.Database`), on real SQLite and a real PostgreSQL
(tests/postgres.py): concurrent work runs on separate connections instead of queueing on one, a connection that
died is dropped rather than lent again, `reconnect` proves the server is back, and SQLite keeps its 0600 file and
lets readers through while a writer holds its transaction."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time

import psycopg
import pytest

from edge.operator.db import Database, StoreError, StoreUnavailable


def _parallel(n: int, fn) -> list:
    """Run fn(i) in n threads started together; their results (exceptions re-raised)."""
    out: list = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = fn(i)
        except BaseException as err:  # noqa: BLE001 - re-raised below in the test's thread
            out[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return out


def test_postgresql_reads_run_side_by_side_up_to_the_pool_size(postgres_url):
    db = Database(postgres_url, pool_size=4)
    t0 = time.perf_counter()
    pids = _parallel(4, lambda i: db.query("SELECT pg_backend_pid(), pg_sleep(0.5)")[0][0])
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.5, f"4 × 0.5 s on 4 connections took {elapsed:.2f} s: serialized"
    assert len(set(pids)) == 4
    t0 = time.perf_counter()
    _parallel(8, lambda i: db.query("SELECT pg_sleep(0.3)"))  # 8 on 4 connections: two rounds, never a 5th
    assert 0.55 < time.perf_counter() - t0 < 2.5
    assert len(db._idle) == 4
    db.close()


def test_a_connection_killed_under_the_pool_is_dropped_and_the_read_retried(postgres_url):
    db = Database(postgres_url, pool_size=2)
    victim = db.query("SELECT pg_backend_pid()")[0][0]
    killer = Database(postgres_url, pool_size=1)
    assert killer.query("SELECT pg_terminate_backend(?)", (victim,))[0][0] is True
    time.sleep(0.2)
    assert db.query("SELECT pg_backend_pid()")[0][0] != victim  # retried once on a fresh connection
    victim = db.query("SELECT pg_backend_pid()")[0][0]
    killer.query("SELECT pg_terminate_backend(?)", (victim,))
    time.sleep(0.2)
    with pytest.raises(psycopg.OperationalError) as failed, db.transaction() as cur:  # not retried: the caller decides
        cur.execute("SELECT 1")
    assert db.transient(failed.value)
    assert all(c.info.backend_pid != victim for c in db._idle)  # the dead one was not given back
    with db.transaction() as cur:
        assert cur.execute("SELECT 1").fetchall() == [(1,)]
    db.close()
    killer.close()


def test_reconnect_raises_store_unavailable_while_postgresql_is_down_and_recovers():
    from postgres import Postgres

    pg = Postgres()
    try:
        db = Database(pg.create_database(), pool_size=3)
        _parallel(3, lambda i: db.query("SELECT pg_sleep(0.1)"))
        assert len(db._idle) == 3
        pg.halt()
        with pytest.raises(StoreUnavailable):
            db.reconnect()
        assert db._idle == []  # the dead connections were dropped
        pg.start()
        db.reconnect()
        assert len(db._idle) == 1 and db.query("SELECT 1") == [(1,)]
        db.close()
    finally:
        pg.stop()


def test_a_transaction_rolled_back_on_error_leaves_a_clean_connection(postgres_url, tmp_path):
    for db in (Database(postgres_url, pool_size=1), Database(tmp_path / "t.db", pool_size=1)):
        with db.transaction() as cur:
            cur.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
        with pytest.raises(ValueError), db.transaction() as cur:
            cur.execute("INSERT INTO t (x) VALUES (1)")
            raise ValueError("caller's bug")
        with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)), db.transaction() as cur:
            cur.execute("INSERT INTO t (x) VALUES (2)")
            cur.execute("INSERT INTO t (x) VALUES (2)")  # constraint violation: rolled back
        assert db.query("SELECT COUNT(*) FROM t") == [(0,)] and len(db._idle) == 1
        db.close()


def test_sqlite_file_is_private_and_readers_pass_a_writer_in_its_transaction(tmp_path):
    db = Database(tmp_path / "sub" / "ev.db")
    assert stat.S_IMODE(os.stat(tmp_path / "sub" / "ev.db").st_mode) == 0o600
    assert db.query("PRAGMA journal_mode") == [("wal",)]
    with db.transaction() as cur:
        cur.execute("CREATE TABLE t (x INTEGER)")
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with db.transaction() as cur:
            cur.execute("INSERT INTO t (x) VALUES (1)")
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(10)
    t0 = time.perf_counter()
    assert db.query("SELECT COUNT(*) FROM t") == [(0,)]  # not blocked, and not seeing the uncommitted row
    assert time.perf_counter() - t0 < 0.5
    release.set()
    thread.join(10)
    assert db.query("SELECT COUNT(*) FROM t") == [(1,)]
    db.close()


def test_sqlite_writers_in_many_threads_all_commit(tmp_path):
    """Read-then-write transactions from 16 threads: none fails with "database is locked" (the write lock is taken
    up front and in-process writers queue on a lock)."""
    db = Database(tmp_path / "w.db")
    with db.transaction() as cur:
        cur.execute("CREATE TABLE c (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        cur.execute("INSERT INTO c (k, n) VALUES ('a', 0)")

    def bump(i: int) -> None:
        for _ in range(20):
            with db.transaction() as cur:
                n = cur.execute("SELECT n FROM c WHERE k = 'a'").fetchall()[0][0]
                cur.execute("UPDATE c SET n = ? WHERE k = 'a'", (n + 1,))

    _parallel(16, bump)
    assert db.query("SELECT n FROM c") == [(320,)]
    db.close()


def test_closed_database_refuses_work_and_closes_what_was_lent(tmp_path):
    db = Database(tmp_path / "c.db")
    with db._borrow() as conn:
        db.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")  # closed when given back
    with pytest.raises(StoreError, match="closed"):
        db.query("SELECT 1")
