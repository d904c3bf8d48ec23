"""The daemon's one database writer: every write of the daemon goes through one connection, one at a time.

Why: SQLite 3.7.0 to 3.51.2 (Python's sqlite3 links 3.40.1 here) has the WAL-reset bug: with two connections to
one database file, a checkpoint racing another connection's commit that resets the WAL can corrupt the
database (https://sqlite.org/wal.html#walresetbug, fixed in 3.51.3). It needs two connections writing or
checkpointing at the same time. The daemon writes from several threads (frame commits, published-alarm marks,
reload, session stop); through ``DbWriter`` they all use the same connection and never overlap. Readers use
other pooled connections; they never write, so they never checkpoint on commit, and because the writer's
connection stays open for the daemon's lifetime no reader is ever the *last* connection to close (the one that
checkpoints on close). On PostgreSQL the same single writer keeps one server connection for all writes.

``with writer.begin() as db:`` is a drop-in for ``sessionmaker.begin()``: a Session bound to the writer's
connection, committed on success, rolled back on error, under the writer's lock. A connection lost under it
(server restart) is dropped and the next ``begin`` opens a fresh one; one idle longer than ``ping_after_s`` is
checked first, so a server-side idle timeout does not cost the next frame a retry.
"""
from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, contextmanager
from typing import Iterator, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session


class Transactions(Protocol):
    """What writes need: ``with x.begin() as session``. A ``DbWriter`` or, outside the daemon, a sessionmaker."""

    def begin(self) -> AbstractContextManager[Session]: ...


class DbWriter:
    def __init__(self, engine: Engine, ping_after_s: float = 30.0) -> None:
        self.engine = engine
        self.ping_after_s = ping_after_s
        self._lock = threading.Lock()  # not re-entrant: a unit of work never opens another
        self._conn: Connection | None = None
        self._last_used = 0.0
        self.writes = 0  # committed units of work (tests, diagnostics)

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None and (conn.invalidated or conn.closed):
            self._drop()
            conn = None
        if conn is not None and time.monotonic() - self._last_used > self.ping_after_s:
            try:
                conn.execute(text("SELECT 1"))
                conn.rollback()
            except SQLAlchemyError:
                self._drop()
                conn = None
        if conn is None:
            conn = self._conn = self.engine.connect()
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except SQLAlchemyError:
                conn.invalidate()

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """One unit of work on the writer's connection: committed when the block ends, rolled back if it raises."""
        with self._lock:
            conn = self._connection()
            session = Session(bind=conn, expire_on_commit=False)
            try:
                with session.begin():
                    yield session
                self.writes += 1
            except BaseException as exc:
                if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    self._drop()
                elif conn.in_transaction():
                    conn.rollback()
                raise
            finally:
                session.close()
                self._last_used = time.monotonic()

    def close(self) -> None:
        """At stop, after every other writer is done: the last connection closes (and checkpoints) alone."""
        with self._lock:
            self._drop()
