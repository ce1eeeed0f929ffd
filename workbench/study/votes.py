"""Annotators and their votes, in one SQLite file (the embedded default) or one PostgreSQL database (several app
processes or machines): `store.open_store(path or postgresql:// URL)`. Both backends (store_sqlite.py,
store_postgres.py) keep the same tables and promises; the logic is here, once.

    annotators  username, scrypt hash + salt + parameters (never the password)
    served      what an annotator was shown: (study, annotator, item, mode) -> the order of videos, shown_at.
                Written once, when the item is first served; a reload serves the same item in the same order.
    fetches     (study, annotator, video) -> when that annotator's browser last fetched the video file
    logins      recent login attempts (name, address, time): the failed ones, and those still being checked
    votes       one row per (study, annotator, item, criterion, mode) (UNIQUE): the order shown (method, steps,
                video per slot), the choice, shown_at, voted_at, app_version.

The protocol. An annotator judges an item once, on every criterion at once (`submit`: one transaction), in one
mode: an item they voted in best_of_n is never served to them in pairwise, nor the other way round (pass
`one_mode_per_item=False` to collect both). The server decides whether a vote is allowed: only the videos it
served, each fetched by that annotator's browser, and not before the videos' duration has passed, since the item
was first served to them in either mode (`record_fetch`; a browser does not fetch again a video it holds). A
second submit of a voted item stores nothing and says when the first one was stored: the first answer stands. A
vote is acknowledged (`submit` returns) only after its commit.

Method identities live in the study manifest and in this database only: `Shown`, what the page gets, names videos
by their content hash and nothing else. Keep a database file outside every folder the app serves.
"""
from __future__ import annotations

import abc
import csv
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from workbench.files import staged_file
from workbench.study.annotators import (LOGIN_WINDOW_S, MAX_FAILED_PER_ADDRESS, MAX_FAILED_PER_NAME, Annotators,
                                        read_users, stamp)
from workbench.study.build import CRITERIA, Study

__all__ = ["EXPORT_HEADER", "LOGIN_WINDOW_S", "MAX_FAILED_PER_ADDRESS", "MAX_FAILED_PER_NAME", "MODES",
           "PAIRWISE_CHOICES", "NotReady", "Shown", "Submitted", "VoteStore", "chosen_slot", "read_users",
           "votes_query", "votes_table", "write_export"]

MODES = ("best_of_n", "pairwise")
PAIRWISE_CHOICES = ("A", "B", "tie", "both_bad")
PAIRWISE_SLOTS = {"A": 0, "B": 1}   # the pairwise choices that name a video; tie and both_bad name none
# {id}: the backend's auto-numbered key; {blob}: its byte-string type. Times are UTC ISO-8601 text (`stamp`).
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS annotators (
    username TEXT PRIMARY KEY,
    salt     {{blob}} NOT NULL,
    hash     {{blob}} NOT NULL,
    params   TEXT NOT NULL,       -- scrypt n, r, p as JSON
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS served (
    study     TEXT NOT NULL,
    annotator TEXT NOT NULL REFERENCES annotators(username),
    item      TEXT NOT NULL,
    mode      TEXT NOT NULL,
    shown     TEXT NOT NULL,      -- JSON list of {{{{method, steps, video}}}} per slot
    shown_at  TEXT NOT NULL,
    PRIMARY KEY (study, annotator, item, mode)
);
CREATE TABLE IF NOT EXISTS votes (
    id          {{id}},
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
CREATE TABLE IF NOT EXISTS fetches (
    study      TEXT NOT NULL,
    annotator  TEXT NOT NULL REFERENCES annotators(username),
    video      TEXT NOT NULL,
    fetched_at TEXT NOT NULL,     -- the latest fetch
    PRIMARY KEY (study, annotator, video)
);
CREATE TABLE IF NOT EXISTS logins (
    id       {{id}},
    username TEXT NOT NULL,       -- as typed (cut to 65 characters), known or not
    address  TEXT,
    at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logins_username ON logins (username);
CREATE INDEX IF NOT EXISTS logins_address ON logins (address);
CREATE INDEX IF NOT EXISTS logins_at ON logins (at);
"""


def chosen_slot(choice: int | str, mode: str, first: int = 0) -> int | None:
    """The slot (0-based) of the video a choice names. Best of N: the slot's number, counted from `first` (0 as
    votes are stored, 1 as the page numbers its videos). Pairwise: A -> 0, B -> 1; None for tie and both_bad."""
    if mode == "pairwise":
        return PAIRWISE_SLOTS.get(str(choice))
    return int(choice) - first


def _rng(*keys: str) -> np.random.Generator:
    """A generator seeded by strings (study, annotator, ...): the same on every machine and every reload."""
    digest = hashlib.sha256("\0".join(keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


@dataclass(frozen=True)
class Shown:
    """One item as an annotator sees it: nothing in it names a method."""
    study: str
    item: str
    mode: str
    caption: str
    first_frame: str              # file name under the study's frames/
    videos: tuple[str, ...]       # file names under the study's videos/, in slot order (pairwise: A, B)
    criteria: tuple[str, ...]     # the criteria to vote on, all submitted together
    left: int                     # items this annotator may still vote in this mode, this one included
    served_at: datetime           # when the item was first served to them (UTC): the play gate counts from it


@dataclass(frozen=True)
class Submitted:
    """What `submit` did: stored a new judgement (new=True), or nothing because the item was voted before."""
    new: bool
    first_voted_at: datetime      # when the judgement that stands was stored (UTC)


class NotReady(ValueError):
    """A submit the play gate refuses (a video not loaded, or not played to the end); nothing stored."""


class VoteStore(Annotators, abc.ABC):
    """The votes database (created on first use; see the module docstring). Safe to share between threads and
    processes. Build one with `store.open_store`; the backends differ only in how they connect and lock."""

    def __init__(self, location: str | Path, one_mode_per_item: bool = True):
        self.location = location                    # what `read_votes` and `export_votes` take
        self.one_mode_per_item = one_mode_per_item
        self.files: tuple[Path, ...] = ()           # files an export must never overwrite (SQLite's)

    @abc.abstractmethod
    def _connect(self):
        """A context manager: a connection whose `execute(sql, params)` takes `?` placeholders."""

    @abc.abstractmethod
    def _transaction(self):
        """A context manager: `_connect`'s connection inside one write transaction, committed on a clean exit."""

    def _now(self, db) -> datetime:
        return datetime.now(timezone.utc)

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

    def _closed(self, db, study: Study, annotator: str, mode: str) -> set[str]:
        """Items this annotator may no longer vote in this mode: voted in it (on any criterion), or, with
        `one_mode_per_item`, voted in another mode."""
        rows = db.execute("SELECT DISTINCT item, mode FROM votes WHERE study = ? AND annotator = ?",
                          (study.id, annotator)).fetchall()
        return {item for item, m in rows if m == mode or self.one_mode_per_item}

    def next_item(self, study: Study, annotator: str, mode: str = "best_of_n") -> Shown | None:
        """The item to show an annotator now: the one served and not voted yet (same order as before), else the
        next one never served; None when none is left. A voted item is never served again, in this mode or (with
        `one_mode_per_item`, the default) in the other."""
        self._check_mode(mode)
        with self._transaction() as db:
            self._known(db, annotator)
            closed = self._closed(db, study, annotator, mode)
            served = {item: (json.loads(shown), at) for item, shown, at in db.execute(
                "SELECT item, shown, shown_at FROM served WHERE study=? AND annotator=? AND mode=?",
                (study.id, annotator, mode))}
            order = [i for i in self.item_order(study, annotator) if i not in closed]
            pending = [i for i in order if i in served]
            if pending:
                item = pending[0]
                shown, at = served[item]
            elif order:
                item, at = order[0], stamp(self._now(db))
                shown = self.slot_order(study, annotator, item, mode)
                db.execute("INSERT INTO served VALUES (?, ?, ?, ?, ?, ?)",
                           (study.id, annotator, item, mode, json.dumps(shown), at))
            else:
                return None
        it = study.items[item]
        return Shown(study.id, item, mode, it["caption"], it["first_frame"], tuple(s["video"] for s in shown),
                     study.criteria, len(order), datetime.fromisoformat(at))

    def items_left(self, study: Study, annotator: str, mode: str = "best_of_n") -> int:
        """Items this annotator may still vote in this mode (see `next_item`)."""
        self._check_mode(mode)
        with self._connect() as db:
            closed = self._closed(db, study, annotator, mode)
        return sum(1 for i in study.items if i not in closed)

    def record_fetch(self, study: Study, annotator: str, video: str) -> None:
        """That annotator's browser fetched this study video file (the app's media route calls this): what the play
        gate of `submit` checks."""
        if not any(v["video"] == video for it in study.items.values() for v in it["videos"]):
            raise ValueError(f"video {video!r}: not a video of study {study.id}")
        with self._transaction() as db:
            self._known(db, annotator)
            db.execute("INSERT INTO fetches VALUES (?, ?, ?, ?) ON CONFLICT (study, annotator, video) DO UPDATE "
                       "SET fetched_at = excluded.fetched_at", (study.id, annotator, video, stamp(self._now(db))))

    # voting
    def submit(self, study: Study, annotator: str, item: str, mode: str, choices: dict[str, int | str],
               videos: list[str] | tuple[str, ...], app_version: str = "", min_view_s: float | None = None
               ) -> Submitted:
        """Store an item's judgement, every criterion of it, in one transaction; returns after the commit.

        `choices`: {criterion: choice} for every criterion of the study; a choice is, in best_of_n, the chosen slot
        (0-based) or the chosen video's file name, in pairwise, A, B, tie or both_bad. `videos`: the file names the
        page showed, in slot order, checked against what was served. The play gate: every served video fetched by
        this annotator (`record_fetch`) since the item was served, and `min_view_s` seconds passed since then
        (default: the longest served video's duration); else `NotReady`. An item voted before in this mode:
        nothing stored, `Submitted(new=False, first_voted_at)`: the first answer stands. Anything malformed raises
        ValueError and stores nothing."""
        self._check_mode(mode)
        if item not in study.items:
            raise ValueError(f"item {item!r}: not in study {study.id}")
        unknown = sorted(set(choices) - set(study.criteria))
        missing = [c for c in study.criteria if c not in choices]
        if unknown or missing:
            raise ValueError(f"item {item!r}: choices for {', '.join(map(repr, unknown or missing))} "
                             f"{'unknown' if unknown else 'missing'}; expected one for each of "
                             f"{', '.join(study.criteria)}")
        with self._transaction() as db:
            self._known(db, annotator)
            shown, shown_at = self._served(db, study, annotator, item, mode, videos)
            names = [s["video"] for s in shown]
            stored = {c: self._choice(choices[c], mode, names, item) for c in study.criteria}
            before = dict(db.execute("SELECT mode, MIN(voted_at) FROM votes WHERE study=? AND annotator=? AND item=?"
                                     " GROUP BY mode", (study.id, annotator, item)).fetchall())
            if mode in before:
                return Submitted(False, datetime.fromisoformat(before[mode]))
            if before and self.one_mode_per_item:
                raise ValueError(f"item {item!r}: already voted in {next(iter(before))} mode; an item is judged in "
                                 f"one mode only")
            now = self._now(db)
            self._play_gate(db, study, annotator, item, mode, names, shown_at, now, min_view_s)
            for criterion, choice in stored.items():
                db.execute("INSERT INTO votes (study, annotator, item, criterion, mode, shown, choice, shown_at, "
                           "voted_at, app_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (study.id, annotator, item, criterion, mode, json.dumps(shown), choice, shown_at,
                            stamp(now), str(app_version)))
        return Submitted(True, datetime.fromisoformat(stamp(now)))

    @staticmethod
    def _served(db, study: Study, annotator: str, item: str, mode: str, videos) -> tuple[list[dict], str]:
        """What was served of the item to the annotator in the mode, and when; the page's `videos` must match."""
        row = db.execute("SELECT shown, shown_at FROM served WHERE study=? AND annotator=? AND item=? AND mode=?",
                         (study.id, annotator, item, mode)).fetchone()
        if row is None:
            raise ValueError(f"item {item!r}: was not shown to {annotator!r} in {mode} mode")
        shown = json.loads(row[0])
        names = [s["video"] for s in shown]
        if list(videos) != names:
            stray = sorted(set(videos) - set(names))
            raise ValueError(f"item {item!r}: video {stray[0] if stray else list(videos)} was not shown to "
                             f"{annotator!r} (in that order)")
        return shown, row[1]

    @staticmethod
    def _play_gate(db, study: Study, annotator: str, item: str, mode: str, names: list[str], shown_at: str,
                   now: datetime, min_view_s: float | None) -> None:
        """NotReady unless every served video was fetched, and the viewing time has passed, since the item was first
        served to this annotator (in either mode: a browser does not fetch again a video it holds when a switch of
        mode serves the item anew)."""
        shown_at = db.execute("SELECT MIN(shown_at) FROM served WHERE study=? AND annotator=? AND item=?",
                              (study.id, annotator, item)).fetchone()[0]
        fetched = dict(db.execute(f"SELECT video, fetched_at FROM fetches WHERE study=? AND annotator=? AND video IN "
                                  f"({', '.join('?' * len(names))})", (study.id, annotator, *names)).fetchall())
        labels = PAIRWISE_CHOICES if mode == "pairwise" else [str(k + 1) for k in range(len(names))]
        unloaded = [labels[k] for k, v in enumerate(names) if fetched.get(v, "") < shown_at]
        if unloaded:
            many = len(unloaded) > 1
            raise NotReady(f"video{'s' * many} {', '.join(unloaded)} {'were' if many else 'was'} not loaded")
        if min_view_s is None:
            base = study.manifest.get("video", {})
            specs = [base | v for v in study.items[item]["videos"] if v["video"] in names]
            min_view_s = max((s["frames"] / s["fps"] for s in specs if s.get("frames") and s.get("fps")), default=0)
        left = min_view_s - (now - datetime.fromisoformat(shown_at)).total_seconds()
        if left > 0:
            raise NotReady(f"play the videos to the end: {left:.1f} s left")

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
    def revision(self, study: str | Study) -> int:
        """A number that changes whenever a vote of the study lands (their count: votes are never deleted, and
        unlike a largest id it cannot miss a transaction that commits out of order). For caching results."""
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM votes WHERE study = ?",
                              (study.id if isinstance(study, Study) else study,)).fetchone()[0]

    def votes(self, study: str | Study | None = None) -> pd.DataFrame:
        """Every vote (of one study), `shown` parsed into its list of {method, steps, video} per slot."""
        with self._connect() as db:
            return votes_table(db.execute(*votes_query(study)).fetchall())

    def export_csv(self, out: str | Path, force: bool = False) -> Path:
        """Every vote as CSV (see `write_export`)."""
        def rows() -> list[tuple]:
            with self._connect() as db:
                return db.execute(*votes_query(None)).fetchall()
        return write_export(rows, out, force, self.files)


COLUMNS = ["id", "study", "annotator", "item", "criterion", "mode", "shown", "choice", "shown_at", "voted_at",
           "app_version"]


def votes_query(study: str | Study | None) -> tuple[str, tuple]:
    """The SQL and parameters that select the votes table's COLUMNS (of one study), in id order."""
    study = study.id if isinstance(study, Study) else study
    sql = f"SELECT {', '.join(COLUMNS)} FROM votes" + (" WHERE study = ?" if study else "") + " ORDER BY id"
    return sql, (study,) if study else ()


def votes_table(rows: list[tuple]) -> pd.DataFrame:
    """Rows of COLUMNS as a table, `shown` parsed into lists of dicts."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["shown"] = [json.loads(s) for s in df["shown"]]
    return df


EXPORT_COLUMNS = COLUMNS + ["chosen_method", "chosen_steps"]
EXPORT_HEADER = ",".join(EXPORT_COLUMNS)  # an export's first line: what `--force` recognises an earlier export by


def write_export(rows: Callable[[], list[tuple]], out: str | Path, force: bool = False,
                 never: tuple[Path, ...] = ()) -> Path:
    """The votes rows (COLUMNS) that `rows()` reads once `out` is found fine, as CSV: one row per vote, with the
    chosen method and steps spelled out beside the raw choice; written under a temporary name and renamed when
    complete.

    An existing `out` is refused; with `force` it is replaced only when it is an earlier export, which this
    recognises by its first line: exactly `EXPORT_HEADER` (`id,study,annotator,...,chosen_method,chosen_steps`).
    `out` is never one of the files `never` (an SQLite database and its -wal/-shm file), however spelled (their
    resolved paths are compared)."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out}: is a folder; expected a CSV file name")
    for f in never:  # CSV text over the votes
        if out.resolve() == f.resolve() or (out.exists() and f.exists() and os.path.samefile(out, f)):
            raise ValueError(f"--out {out}: would overwrite the votes database ({f}); choose another CSV file name")
    if out.exists() or out.is_symlink():  # a user's file, or an export they may still need
        if not force:
            raise FileExistsError(f"--out {out}: already exists; choose a new file name, or pass --force to "
                                  f"replace an earlier export")
        if not _is_export(out):
            raise FileExistsError(f"--out {out}: not an earlier export (its first line is not the export "
                                  f"header); nothing replaced")
    # on any error (a full disk) the temporary file goes and `out` stays as it was; the error names `out`
    with staged_file(out, kind="study-export") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(EXPORT_COLUMNS)
        for r in rows():
            vote = dict(zip(COLUMNS, r))
            slot = chosen_slot(vote["choice"], vote["mode"])
            chosen = json.loads(vote["shown"])[slot] if slot is not None else {"method": "", "steps": ""}
            w.writerow(list(r) + [chosen["method"], chosen["steps"]])
    return out


def _is_export(path: Path) -> bool:
    """Whether the file's first line is the header `write_export` writes."""
    try:
        with open(path, "rb") as fh:
            return fh.readline(len(EXPORT_HEADER) + 3).rstrip(b"\r\n") == EXPORT_HEADER.encode()
    except OSError:
        return False
