"""The votes store in one SQLite file: the embedded default (WAL, a busy timeout, synchronous=FULL).

Every call opens its own connection; a write takes the database's one write lock at once (BEGIN IMMEDIATE), so
the serves, votes and login checks of all threads and processes on the machine run one at a time, each short.
Within a process the writers queue on a mutex first: SQLite's own wait is a sleep-and-retry loop (sleeps growing
to 100 ms) that lets a busy thread take the lock again and again while another sleeps.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from workbench.study.votes import SCHEMA, VoteStore

__all__ = ["SqliteStore", "database_files", "read_rows"]


class SqliteStore(VoteStore):
    """The votes database in the SQLite file at `path` (created on first use; databases of earlier versions gain
    the new tables)."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0, one_mode_per_item: bool = True):
        self.path = Path(path)
        super().__init__(self.path, one_mode_per_item)
        if self.path.is_dir():
            raise ValueError(f"{self.path}: is a folder; expected the votes database file")
        self.files = database_files(self.path)
        self.busy_timeout_ms = int(busy_timeout_s * 1000)
        self._writer = threading.Lock()
        try:
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA.format(id="INTEGER PRIMARY KEY", blob="BLOB"))
        except sqlite3.DatabaseError as e:  # another file under the database's name: refused, left as it was
            raise ValueError(f"{self.path}: cannot open it as a votes database ({e})") from None

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged vote survives a crash of the machine too
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self):
        with self._connect() as db, self._writer:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def database_files(path: Path) -> tuple[Path, ...]:
    """The files of an SQLite database in WAL mode: the database, its -wal and -shm file."""
    return tuple(path.with_name(path.name + end) for end in ("", "-wal", "-shm"))


def read_rows(path: Path, sql: str, params: tuple) -> list[tuple]:
    """The rows of one query on an existing database file, which is not changed (no table created)."""
    con = sqlite3.connect(path, timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path}: not a votes database ({e})") from None
    finally:
        con.close()
