"""A votes store by its address, and the votes of a database read or exported without opening a store (nothing
created, nothing changed): an SQLite file (or a folder holding `votes.sqlite`), or a `postgresql://` URL."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from workbench.study.build import Study
from workbench.study.store_sqlite import SqliteStore, database_files
from workbench.study.store_sqlite import read_rows as sqlite_rows
from workbench.study.votes import VoteStore, votes_query, votes_table, write_export

__all__ = ["VOTES_DB", "export_votes", "open_store", "read_votes"]

VOTES_DB = "votes.sqlite"   # the file name `read_votes` and `export_votes` look for when given a folder
POSTGRES = ("postgresql://", "postgres://")


def open_store(url_or_path: str | Path, one_mode_per_item: bool = True) -> VoteStore:
    """The votes store at a `postgresql://` URL, or in an SQLite file at a path (created on first use)."""
    where = str(url_or_path)
    if where.startswith(POSTGRES):
        from workbench.study.store_postgres import PostgresStore  # psycopg only where PostgreSQL is used
        return PostgresStore(where, one_mode_per_item)
    if "://" in where:
        raise ValueError(f"{where}: expected a votes database file or a postgresql:// URL")
    return SqliteStore(where, one_mode_per_item=one_mode_per_item)


def _db_file(db: str | Path) -> Path:
    """The database file a path names: the file itself, or `votes.sqlite` in a folder; it must exist."""
    db = Path(db)
    if db.is_dir():
        db = db / VOTES_DB
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no votes database")
    return db


def _reader(db: str | Path, study: str | Study | None) -> tuple[Callable[[], list[tuple]], tuple[Path, ...]]:
    """What reads the votes rows of a database (of one study), and the files an export must not overwrite."""
    query = votes_query(study)
    if str(db).startswith(POSTGRES):
        from workbench.study.store_postgres import read_rows
        return lambda: read_rows(str(db), *query), ()
    path = _db_file(db)
    return lambda: sqlite_rows(path, *query), database_files(path)


def read_votes(db: str | Path, study: str | Study | None = None) -> pd.DataFrame:
    """The votes of a database (of one study) as a table; `shown` as lists of dicts."""
    return votes_table(_reader(db, study)[0]())


def export_votes(db: str | Path, out: str | Path, force: bool = False) -> Path:
    """`python -m workbench study export DB --out votes.csv [--force]`: every vote of the database as CSV, never
    over an earlier file but an earlier export, nor over the database (see `votes.write_export`)."""
    rows, files = _reader(db, None)
    return write_export(rows, out, force, files)
