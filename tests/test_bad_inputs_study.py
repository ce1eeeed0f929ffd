"""Bad input and full disks in the study commands, the app's launch and bench/reproduce.py: one line on stderr
naming the file or key, exit code 2, and nothing lost (no vote, no earlier export, no temporary file left)."""
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.test_bad_inputs import cli, one_line_error, snapshot
from tests.test_results_doc import results_csv
from workbench.study import export_votes, open_store, read_votes
from workbench.study.votes import EXPORT_HEADER

ROOT = Path(__file__).resolve().parents[1]


def votes_db(path: Path, n: int) -> Path:
    """A votes database holding `n` best-of-4 votes of one annotator (rows written directly: export reads them)."""
    store = open_store(path)
    store.add_annotator("alice", "pw")
    rows = []
    for i in range(n):
        shown = [{"method": m, "steps": 4, "video": hashlib.sha256(f"{i}{m}".encode()).hexdigest() + ".mp4"}
                 for m in ("teacher", "ccd", "da", "swiftvideo")]
        rows.append(("study-x", "alice", f"{i:03d}", "frame_quality", "best_of_n", json.dumps(shown), str(i % 4),
                     "2025-01-01T00:00:00", "2025-01-01T00:00:09", "app-1"))
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO votes (study, annotator, item, criterion, mode, shown, choice, shown_at, voted_at,"
                       " app_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.close()
    return path


@pytest.fixture
def tiny_disk(small_disk):
    """A 16 KiB file system (tmpfs, 4 pages: a few files fill it); needs root."""
    return small_disk("16k")


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- study export: never over the votes, an existing file only when it is an earlier export -----------------

@pytest.mark.parametrize("spelling", ["db", "folder/../db", "symlink", "hardlink", "-wal", "-shm"])
@pytest.mark.parametrize("force", [False, True])
def test_export_never_writes_over_the_votes_database(spelling, force, tmp_path, capsys):
    db = votes_db(tmp_path / "votes.sqlite", 3)
    (tmp_path / "folder").mkdir()
    out = {"db": db, "folder/../db": tmp_path / "folder" / ".." / "votes.sqlite", "symlink": tmp_path / "link.csv",
           "hardlink": tmp_path / "hard.csv", "-wal": tmp_path / "votes.sqlite-wal",
           "-shm": tmp_path / "votes.sqlite-shm"}[spelling]
    if spelling == "symlink":
        out.symlink_to(db)
    if spelling == "hardlink":
        os.link(db, out)
    before = snapshot(tmp_path)
    one_line_error(*cli(capsys, "study", "export", db, "--out", out, *["--force"] * force), f"--out {out}",
                   "votes database")
    assert snapshot(tmp_path) == before and len(read_votes(db)) == 3
    with pytest.raises(ValueError, match="votes database"):
        export_votes(tmp_path, out, force=force)  # the database given as its folder


def test_export_refuses_an_existing_file_and_force_replaces_only_an_earlier_export(tmp_path, capsys):
    db = votes_db(tmp_path / "votes.sqlite", 2)
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own,table\n1,2,3\n")
    before = snapshot(tmp_path)
    one_line_error(*cli(capsys, "study", "export", db, "--out", notes), f"--out {notes}: already exists", "--force")
    one_line_error(*cli(capsys, "study", "export", db, "--out", notes, "--force"), "not an earlier export")
    assert snapshot(tmp_path) == before

    out = tmp_path / "votes.csv"
    assert cli(capsys, "study", "export", db, "--out", out)[0] == 0
    assert out.read_text().splitlines()[0] == EXPORT_HEADER and len(pd.read_csv(out)) == 2
    votes_db(tmp_path / "more.sqlite", 5)
    one_line_error(*cli(capsys, "study", "export", tmp_path / "more.sqlite", "--out", out), "already exists")
    assert len(pd.read_csv(out)) == 2
    assert cli(capsys, "study", "export", tmp_path / "more.sqlite", "--out", out, "--force")[0] == 0
    assert len(pd.read_csv(out)) == 5
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_file_that_is_no_database_is_refused_as_the_votes_database_and_left_as_it_was(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database, and mine\n" * 100)
    with pytest.raises(ValueError, match="notes.txt: cannot open it as a votes database"):
        open_store(notes)
    assert notes.read_text() == "not a database, and mine\n" * 100 and sorted(tmp_path.iterdir()) == [notes]


# --- a full disk, a killed build ------------------------------------------------------------------------------

def test_export_to_a_full_disk_leaves_the_earlier_export_and_no_temporary_file(tiny_disk, tmp_path, capsys):
    out = tiny_disk / "votes.csv"
    assert cli(capsys, "study", "export", votes_db(tmp_path / "one.sqlite", 1), "--out", out)[0] == 0
    before = snapshot(tiny_disk)
    many = votes_db(tmp_path / "many.sqlite", 200)  # about 100 KB of CSV: more than the disk holds
    one_line_error(*cli(capsys, "study", "export", many, "--out", tiny_disk / "new.csv"),
                   f"error: {tiny_disk / 'new.csv'}: No space left on device")
    one_line_error(*cli(capsys, "study", "export", many, "--out", out, "--force"), f"error: {out}: No space left")
    assert snapshot(tiny_disk) == before  # the earlier export as it was; no temporary file


def test_a_study_build_on_a_full_disk_leaves_no_temporary_folder(tiny_disk, capfd):
    out = tiny_disk / "study"
    one_line_error(*cli(capfd, "study", "build", "--models", "teacher@8", "ccd@4", "--items", "1", "--out", out),
                   f"{out}: No space left on device")
    assert list(tiny_disk.iterdir()) == []


def test_the_next_build_removes_a_killed_builds_folder_and_keeps_a_running_ones(tmp_path, capfd):
    killed = tmp_path / f".wb-study-{dead_pid()}-abcd1234"
    (killed / "videos").mkdir(parents=True)
    (killed / "videos" / "half.mp4").write_bytes(b"\0" * 100)
    running = subprocess.Popen(["sleep", "600"])
    try:
        building = tmp_path / f".wb-study-{running.pid}-efgh5678"
        building.mkdir()
        code, err = cli(capfd, "study", "build", "--models", "teacher@8", "ccd@4", "--items", "1",
                        "--out", tmp_path / "s")
        assert code == 0, err
    finally:
        running.kill()
        running.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([building.name, "s"])


# --- the app checks its arguments before it writes anything ----------------------------------------------------

@pytest.mark.parametrize("case", ["bad line", "no users file", "no study", "votes is a folder"])
def test_the_app_refuses_bad_launch_arguments_and_creates_nothing(case, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("alice:pw\nbob\n" if case == "bad line" else "alice:pw\n")
    (tmp_path / "folder").mkdir()
    votes = tmp_path / "folder" if case == "votes is a folder" else tmp_path / "new" / "votes.sqlite"
    argv = ["--users", tmp_path / "nope.txt" if case == "no users file" else users, "--votes", votes,
            "--cache", tmp_path / "cache", "--port", "1"]
    argv += ["--study", tmp_path / "nowhere"] if case == "no study" else []
    before = snapshot(tmp_path)
    r = subprocess.run([sys.executable, "app.py", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    fragment = {"bad line": f"{users}:2: expected username:password", "no users file": "nope.txt: no users file",
                "no study": "--users: votes need a study folder", "votes is a folder": f"--votes {votes}: is a folder"}
    one_line_error(r.returncode, r.stderr, fragment[case])
    assert snapshot(tmp_path) == before  # no votes database, no cache folder


# --- bench/reproduce.py: says what it compared; nothing compared is an error --------------------------------------

def reproduce(shipped: Path, fresh: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench/reproduce.py"), "--shipped", str(shipped), "--fresh",
                           str(fresh)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case,fragment", [("header only", "no rows"), ("no metric column", "no metric column"),
                                           ("no common cell", "no (method, steps) in both"),
                                           ("every metric n/a", "fvd all n/a in fresh"),
                                           ("common cells n/a", "every cell of")])
def test_reproduce_exits_2_when_nothing_was_compared(case, fragment, tmp_path):
    shipped = pd.read_csv(results_csv(tmp_path / "shipped.csv"))
    ids = ["method", "steps", "nfe", "seed", "num"]
    metrics = [c for c in shipped.columns if c not in ids + ["fvd_variant"]]
    fresh = {"header only": shipped.head(0),
             "no metric column": shipped[ids].assign(sec_per_clip=1.0),
             "no common cell": shipped.assign(method="c"),
             "every metric n/a": shipped.assign(**{c: "n/a" for c in metrics}),
             "common cells n/a": pd.concat([shipped[shipped.method == "a"].assign(**{c: "n/a" for c in metrics}),
                                            shipped[shipped.method == "b"].assign(method="c")])}[case]
    fresh.to_csv(tmp_path / "fresh.csv", index=False)
    r = reproduce(tmp_path / "shipped.csv", tmp_path / "fresh.csv")
    line = one_line_error(r.returncode, r.stderr, "bench/reproduce.py", fragment)
    assert "fresh.csv" in line and r.stdout == ""


def test_reproduce_says_what_it_compared_and_what_it_skipped(tmp_path):
    shipped = pd.read_csv(results_csv(tmp_path / "shipped.csv"))
    fresh = shipped[shipped.method == "a"].assign(psnr="n/a", extra=1.0)
    fresh.to_csv(tmp_path / "fresh.csv", index=False)
    r = reproduce(tmp_path / "shipped.csv", tmp_path / "fresh.csv")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["compared"] == {"rows": ["a@1", "a@2"], "columns": ["fvd", "subject_consistency", "solid", "wobble"],
                               "skipped": {"rows": {"b@1": "only in shipped", "b@2": "only in shipped"},
                                           "columns": {"psnr": "all n/a in fresh", "extra": "only in fresh"}}}
    assert out["cells"] == 2 * 4 == out["within_spread"]
