"""Annotators and their votes in one SQLite file (WAL, a busy timeout, one transaction per vote).

    annotators  username, scrypt hash + salt + parameters (never the password)
    served      what an annotator was shown: (study, annotator, item, mode) -> the order of videos, shown_at.
                Written once, when the item is first served; a reload serves the same item in the same order.
    votes       one row per (study, annotator, item, criterion, mode) (UNIQUE): the order shown (method, steps,
                video per slot), the choice, shown_at, voted_at, app_version.

A vote is checked against what was served to that annotator and stored in one transaction; a replayed vote
is a no-op (the first one stands). Method identities live in the study manifest and in this database only:
`Shown`, what the page gets, names videos by their content hash and nothing else.

Keep the database outside every folder the app serves.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.files import staged_file
from workbench.study.build import CRITERIA, Study

__all__ = ["MODES", "PAIRWISE_CHOICES", "VOTES_DB", "Shown", "VoteStore", "chosen_slot", "export_votes", "read_users",
           "read_votes"]

MODES = ("best_of_n", "pairwise")
PAIRWISE_CHOICES = ("A", "B", "tie", "both_bad")
PAIRWISE_SLOTS = {"A": 0, "B": 1}   # the pairwise choices that name a video; tie and both_bad name none
VOTES_DB = "votes.sqlite"   # the file name `export_votes` looks for when given a folder
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
USERNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS annotators (
    username TEXT PRIMARY KEY,
    salt     BLOB NOT NULL,
    hash     BLOB NOT NULL,
    params   TEXT NOT NULL,       -- scrypt n, r, p as JSON
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS served (
    study     TEXT NOT NULL,
    annotator TEXT NOT NULL REFERENCES annotators(username),
    item      TEXT NOT NULL,
    mode      TEXT NOT NULL,
    shown     TEXT NOT NULL,      -- JSON list of {{method, steps, video}} per slot
    shown_at  TEXT NOT NULL,
    PRIMARY KEY (study, annotator, item, mode)
);
CREATE TABLE IF NOT EXISTS votes (
    id          INTEGER PRIMARY KEY,
    study       TEXT NOT NULL,
    annotator   TEXT NOT NULL REFERENCES annotators(username),
    item        TEXT NOT NULL,
    criterion   TEXT NOT NULL CHECK (criterion IN ({", ".join(f"'{c}'" for c in CRITERIA)})),
    mode        TEXT NOT NULL CHECK (mode IN ({", ".join(f"'{m}'" for m in MODES)})),
    shown       TEXT NOT NULL,
    choice      TEXT NOT NULL,    -- best_of_n: the slot index; pairwise: A, B, tie or both_bad
    shown_at    TEXT NOT NULL,
    voted_at    TEXT NOT NULL,
    app_version TEXT NOT NULL,
    UNIQUE (study, annotator, item, criterion, mode)
);
"""


def chosen_slot(choice: int | str, mode: str, first: int = 0) -> int | None:
    """The slot (0-based) of the video a choice names. Best of N: the slot's number, counted from `first` (0 as
    votes are stored, 1 as the page numbers its videos). Pairwise: A -> 0, B -> 1; None for tie and both_bad."""
    if mode == "pairwise":
        return PAIRWISE_SLOTS.get(str(choice))
    return int(choice) - first


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _rng(*keys: str) -> np.random.Generator:
    """A generator seeded by strings (study, annotator, ...): the same on every machine and every reload."""
    digest = hashlib.sha256("\0".join(keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _hash_password(password: str, salt: bytes, params: dict) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, dklen=32, maxmem=64 * 1024 * 1024, **params)


def read_users(path: str | Path) -> dict[str, str]:
    """`username:password` lines (blank lines and `#` comments skipped) -> {username: password}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no users file")
    users = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, password = line.partition(":")
        name = name.strip()
        if not colon or not password:
            raise ValueError(f"{path}:{n}: expected username:password")
        if not USERNAME.fullmatch(name):
            raise ValueError(f"{path}:{n}: username {name!r}: use 1-64 letters, digits or _ . @ + -")
        if name in users:
            raise ValueError(f"{path}:{n}: username {name!r} appears twice")
        users[name] = password
    if not users:
        raise ValueError(f"{path}: no username:password lines")
    return users


@dataclass(frozen=True)
class Shown:
    """One item as an annotator sees it: nothing in it names a method."""
    study: str
    item: str
    mode: str
    caption: str
    first_frame: str              # file name under the study's frames/
    videos: tuple[str, ...]       # file names under the study's videos/, in slot order (pairwise: A, B)
    criteria: tuple[str, ...]     # criteria still to vote on this item
    left: int                     # items not yet fully voted in this mode, this one included


class VoteStore:
    """The votes database at `path` (created on first use). Safe to share between threads and processes: every
    call opens its own connection."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path}: is a folder; expected the votes database file")
        self.busy_timeout_ms = int(busy_timeout_s * 1000)
        try:
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
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
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # annotators
    def add_annotator(self, username: str, password: str) -> None:
        """Add an annotator, or set a new password for one; only a salted scrypt hash is stored."""
        if not USERNAME.fullmatch(username):
            raise ValueError(f"username {username!r}: use 1-64 letters, digits or _ . @ + -")
        if not password:
            raise ValueError(f"annotator {username!r}: empty password")
        salt = secrets.token_bytes(16)
        digest = _hash_password(password, salt, SCRYPT)
        with self._transaction() as db:
            db.execute("INSERT INTO annotators VALUES (?, ?, ?, ?, ?) ON CONFLICT(username) DO UPDATE SET "
                       "salt=excluded.salt, hash=excluded.hash, params=excluded.params",
                       (username, salt, digest, json.dumps(SCRYPT), _now()))

    def add_annotators(self, users_file: str | Path) -> list[str]:
        """Every `username:password` line of the study owner's file (see `read_users`); their names."""
        users = read_users(users_file)
        for name, password in users.items():
            self.add_annotator(name, password)
        return list(users)

    def annotators(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT username FROM annotators ORDER BY username")]

    def check_login(self, username: str, password: str) -> bool:
        """Whether the password is the annotator's (gradio `auth=store.check_login`). An unknown name costs the
        same time as a wrong password."""
        with self._connect() as db:
            row = db.execute("SELECT salt, hash, params FROM annotators WHERE username = ?", (username,)).fetchone()
        salt, digest, params = row if row else (b"\0" * 16, b"", json.dumps(SCRYPT))
        ok = hmac.compare_digest(_hash_password(password, salt, json.loads(params)), digest)
        return bool(row) and ok

    def _known(self, db, annotator: str) -> None:
        if not db.execute("SELECT 1 FROM annotators WHERE username = ?", (annotator,)).fetchone():
            raise ValueError(f"annotator {annotator!r}: unknown (add them from the users file)")

    # serving
    @staticmethod
    def item_order(study: Study, annotator: str) -> list[str]:
        """The order in which an annotator meets the study's items: a permutation seeded by (study, annotator)."""
        ids = sorted(study.items)
        return [ids[i] for i in _rng(study.id, annotator).permutation(len(ids))]

    @staticmethod
    def slot_order(study: Study, annotator: str, item: str, mode: str) -> list[dict]:
        """The videos of an item as one annotator sees them, seeded by (study, annotator, item, mode): best_of_n
        all of them shuffled; pairwise two of them, sides at random (an attention item: its answer and one other)."""
        videos = study.items[item]["videos"]
        rng = _rng(study.id, annotator, item, mode)
        if mode == "best_of_n":
            picked = list(rng.permutation(len(videos)))
        else:
            answer = (study.items[item].get("attention") or {}).get("answer")
            if answer is not None:
                a = next(i for i, v in enumerate(videos) if v["video"] == answer)
                others = [i for i in range(len(videos)) if i != a]
                picked = [a, others[rng.integers(len(others))]]
            else:
                picked = list(rng.choice(len(videos), size=2, replace=False))
            picked = [picked[i] for i in rng.permutation(2)]
        return [{"method": videos[i]["method"], "steps": videos[i]["steps"], "video": videos[i]["video"]}
                for i in picked]

    def _check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")

    def _done(self, db, study: Study, annotator: str, mode: str) -> dict[str, set[str]]:
        """Criteria voted per item by this annotator in this mode."""
        done: dict[str, set[str]] = {}
        for item, criterion in db.execute("SELECT item, criterion FROM votes WHERE study=? AND annotator=? AND "
                                          "mode=?", (study.id, annotator, mode)):
            done.setdefault(item, set()).add(criterion)
        return done

    def next_item(self, study: Study, annotator: str, mode: str = "best_of_n") -> Shown | None:
        """The item to show an annotator now: the one served and not fully voted yet (same order as before), else
        the next one never served; None when every item is voted. A fully voted item is never served again."""
        self._check_mode(mode)
        criteria = set(study.criteria)
        with self._transaction() as db:
            self._known(db, annotator)
            done = self._done(db, study, annotator, mode)
            served = {item: (json.loads(shown), at) for item, shown, at in db.execute(
                "SELECT item, shown, shown_at FROM served WHERE study=? AND annotator=? AND mode=?",
                (study.id, annotator, mode))}
            left = sum(1 for i in study.items if not criteria <= done.get(i, set()))
            order = self.item_order(study, annotator)
            pending = [i for i in order if i in served and not criteria <= done.get(i, set())]
            fresh = [i for i in order if i not in served]
            if pending:
                item = pending[0]
                shown = served[item][0]
            elif fresh:
                item = fresh[0]
                shown = self.slot_order(study, annotator, item, mode)
                db.execute("INSERT INTO served VALUES (?, ?, ?, ?, ?, ?)",
                           (study.id, annotator, item, mode, json.dumps(shown), _now()))
            else:
                return None
        it = study.items[item]
        todo = tuple(c for c in study.criteria if c not in done.get(item, set()))
        return Shown(study.id, item, mode, it["caption"], it["first_frame"], tuple(s["video"] for s in shown),
                     todo, left)

    def items_left(self, study: Study, annotator: str, mode: str = "best_of_n") -> int:
        """Items this annotator has not fully voted in this mode."""
        self._check_mode(mode)
        with self._connect() as db:
            done = self._done(db, study, annotator, mode)
        return sum(1 for i in study.items if not set(study.criteria) <= done.get(i, set()))

    # voting
    def vote(self, study: Study, annotator: str, item: str, criterion: str, mode: str, choice: int | str,
             videos: list[str] | tuple[str, ...] | None = None, app_version: str = "") -> bool:
        """Store one vote in one transaction; True if it is new, False if this (study, annotator, item, criterion,
        mode) already has one (a replay: the first vote stands).

        `choice`: best_of_n, the chosen slot (0-based) or the chosen video's file name; pairwise, A, B, tie or
        both_bad. `videos`: the file names the page showed, in slot order, checked against what was served.
        Anything malformed raises ValueError and stores nothing.
        """
        self._check_mode(mode)
        if item not in study.items:
            raise ValueError(f"item {item!r}: not in study {study.id}")
        if criterion not in study.criteria:
            raise ValueError(f"criterion {criterion!r}: expected one of {', '.join(study.criteria)}")
        with self._transaction() as db:
            self._known(db, annotator)
            row = db.execute("SELECT shown, shown_at FROM served WHERE study=? AND annotator=? AND item=? AND mode=?",
                             (study.id, annotator, item, mode)).fetchone()
            if row is None:
                raise ValueError(f"item {item!r}: was not shown to {annotator!r} in {mode} mode")
            shown, shown_at = json.loads(row[0]), row[1]
            names = [s["video"] for s in shown]
            if videos is not None and list(videos) != names:
                stray = sorted(set(videos) - set(names))
                raise ValueError(f"item {item!r}: video {stray[0] if stray else list(videos)} was not shown to "
                                 f"{annotator!r} (in that order)")
            stored = self._choice(choice, mode, names, item)
            cur = db.execute(
                "INSERT INTO votes (study, annotator, item, criterion, mode, shown, choice, shown_at, voted_at, "
                "app_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (study, annotator, item, criterion, mode) DO NOTHING",
                (study.id, annotator, item, criterion, mode, json.dumps(shown), stored, shown_at, _now(),
                 str(app_version)))
            return cur.rowcount == 1

    @staticmethod
    def _choice(choice: int | str, mode: str, names: list[str], item: str) -> str:
        if mode == "pairwise":
            if choice not in PAIRWISE_CHOICES:
                raise ValueError(f"item {item!r}: pairwise choice {choice!r}; expected one of "
                                 f"{', '.join(PAIRWISE_CHOICES)}")
            return str(choice)
        if isinstance(choice, str) and choice in names:
            return str(names.index(choice))
        if isinstance(choice, str) and choice.isdigit():
            choice = int(choice)
        if isinstance(choice, (int, np.integer)) and not isinstance(choice, bool) and 0 <= choice < len(names):
            return str(int(choice))
        raise ValueError(f"item {item!r}: choice {choice!r} is not a video shown to that annotator "
                         f"(a slot 0..{len(names) - 1} or one of its video names)")

    # reading
    def votes(self, study: str | Study | None = None) -> pd.DataFrame:
        """Every vote (of one study), `shown` parsed into its list of {method, steps, video} per slot."""
        return read_votes(self.path, study)

    def export_csv(self, out: str | Path, force: bool = False) -> Path:
        return export_votes(self.path, out, force)


COLUMNS = ["id", "study", "annotator", "item", "criterion", "mode", "shown", "choice", "shown_at", "voted_at",
           "app_version"]


def _db_file(db: str | Path) -> Path:
    db = Path(db)
    if db.is_dir():
        db = db / VOTES_DB
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no votes database")
    return db


def _rows(db: Path, study: str | None) -> list[tuple]:
    con = sqlite3.connect(db, timeout=30)
    try:
        sql = f"SELECT {', '.join(COLUMNS)} FROM votes" + (" WHERE study = ?" if study else "") + " ORDER BY id"
        return con.execute(sql, (study,) if study else ()).fetchall()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{db}: not a votes database ({e})") from None
    finally:
        con.close()


def read_votes(db: str | Path, study: str | Study | None = None) -> pd.DataFrame:
    """The votes of a database file (or of `votes.sqlite` in a folder) as a table; `shown` as lists of dicts."""
    rows = _rows(_db_file(db), study.id if isinstance(study, Study) else study)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["shown"] = [json.loads(s) for s in df["shown"]]
    return df


EXPORT_COLUMNS = COLUMNS + ["chosen_method", "chosen_steps"]
EXPORT_HEADER = ",".join(EXPORT_COLUMNS)  # an export's first line: what `--force` recognises an earlier export by


def export_votes(db: str | Path, out: str | Path, force: bool = False) -> Path:
    """`python -m workbench study export DB --out votes.csv [--force]`: one CSV row per vote, with the chosen
    method and steps spelled out beside the raw choice; written under a temporary name and renamed when complete.

    An existing `out` is refused; with `force` it is replaced only when it is an earlier export, which this
    recognises by its first line: exactly `EXPORT_HEADER` (`id,study,annotator,...,chosen_method,chosen_steps`).
    `out` is never the database or its -wal/-shm file, however spelled (their resolved paths are compared)."""
    db = _db_file(db)
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out}: is a folder; expected a CSV file name")
    for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):  # CSV text over the votes
        if out.resolve() == f.resolve() or (out.exists() and f.exists() and os.path.samefile(out, f)):
            raise ValueError(f"--out {out}: would overwrite the votes database ({f}); choose another CSV file name")
    if out.exists() or out.is_symlink():  # a user's file, or an export they may still need
        if not force:
            raise FileExistsError(f"--out {out}: already exists; choose a new file name, or pass --force to "
                                  f"replace an earlier export")
        if not _is_export(out):
            raise FileExistsError(f"--out {out}: not an earlier export (its first line is not the export "
                                  f"header); nothing replaced")
    rows = _rows(db, None)
    # on any error (a full disk) the temporary file goes and `out` stays as it was; the error names `out`
    with staged_file(out, kind="study-export") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(EXPORT_COLUMNS)
        for r in rows:
            vote = dict(zip(COLUMNS, r))
            slot = chosen_slot(vote["choice"], vote["mode"])
            chosen = json.loads(vote["shown"])[slot] if slot is not None else {"method": "", "steps": ""}
            w.writerow(list(r) + [chosen["method"], chosen["steps"]])
    return out


def _is_export(path: Path) -> bool:
    """Whether the file's first line is the header `export_votes` writes."""
    try:
        with open(path, "rb") as fh:
            return fh.readline(len(EXPORT_HEADER) + 3).rstrip(b"\r\n") == EXPORT_HEADER.encode()
    except OSError:
        return False
