"""One rule for every command that writes a folder (workbench/files.py): a new or empty folder, or with --force an
earlier output of the same command, whose files it replaces while the files a user added stay; temporary names no
user would pick, removed on failure (a full disk) and swept after a kill."""
import os
import subprocess
import sys

import pytest

from tests.test_bad_inputs import cli, one_line_error, run, snapshot  # noqa: F401 (run: a fixture)
from workbench.files import MANIFEST, sweep_stale


@pytest.fixture(autouse=True)
def _in_root(monkeypatch, root):
    monkeypatch.chdir(root)


def _sample(out, *more):
    return ["sample", "experiments/toy/teacher", "--steps", "1", "--out", out, *more]


def _eval(model, out, *more):
    return ["eval", model, "--steps", "1", "--num", "2", "--seeds", "0", "--cache", "", "--out", out, *more]


@pytest.mark.parametrize("command", ["sample", "eval", "data export"])
def test_a_second_run_into_an_output_folder_is_refused_unless_forced(command, run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    argv = {"sample": lambda *f: _sample(out, "--num", "2", *f),
            "eval": lambda *f: _eval(run, out, *f),
            "data export": lambda *f: ["data", "export", "--out", out, "--num", "2", *f]}[command]
    assert cli(capsys, *argv())[0] == 0
    (out / "notes.md").write_text("mine")
    before = snapshot(tmp_path)
    one_line_error(*cli(capsys, *argv()), f"--out {out}: holds an earlier", "--force")
    assert snapshot(tmp_path) == before
    assert cli(capsys, *argv("--force"))[0] == 0
    assert (out / "notes.md").read_text() == "mine"                          # the user's file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]            # no temporary or old folder left


def test_force_replaces_only_what_the_earlier_output_wrote(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli(capsys, *_sample(out, "--num", "3"))[0] == 0
    assert cli(capsys, *_sample(out, "--num", "2", "--force"))[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["clip-0000.mp4", "clip-0001.mp4", "contact_sheet.png",
                                                            "captions.yaml", MANIFEST])  # clip-0002 was ours: gone


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_folder_of_someone_elses_files_is_never_written(force, run, tmp_path, capsys):  # noqa: F811
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "contact_sheet.png").write_bytes(b"my picture")
    (mine / "results.csv").write_text("my table")
    before = snapshot(tmp_path)
    for argv in (_sample(mine, "--num", "1", *force), _eval(run, mine, *force),
                 ["data", "export", "--out", mine, "--num", "1", *force]):
        one_line_error(*cli(capsys, *argv), f"--out {mine}: holds files", "did not write")
    assert snapshot(tmp_path) == before


def test_one_commands_output_is_not_anothers(tmp_path, capsys):
    out = tmp_path / "clips"
    assert cli(capsys, "data", "export", "--out", out, "--num", "1")[0] == 0
    before = snapshot(tmp_path)
    one_line_error(*cli(capsys, *_sample(out, "--num", "1", "--force")), "holds the output of `data-export`")
    assert snapshot(tmp_path) == before


def test_preferences_never_touch_a_users_folder_of_a_temporary_looking_name(run, tmp_path, capsys):  # noqa: F811
    theirs = tmp_path / ".tmp-f4"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    assert cli(capsys, "preferences", run, "--out", tmp_path / "f4", "--num", "2", "--win-steps", "2",
               "--lose-steps", "1")[0] == 0
    assert (theirs / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-f4", "f4"]


# --- a full disk, and a kill ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["sample", "data export", "export", "preferences"])
def test_a_full_disk_gives_one_line_and_leaves_no_temporary_file(command, run, small_disk, capsys):  # noqa: F811
    disk = small_disk("96k")
    # the output cannot fit beside it; data export checks the disk after its first clip, so it gets no room at all
    (disk / "ballast").write_bytes(b"x" * (96 * 1024 if command == "data export" else 60_000))
    out = disk / "out"
    argv = {"sample": _sample(out, "--num", "8"),
            "data export": ["data", "export", "--out", out, "--num", "40"],
            "export": ["export", run, "--out", out, "--dtype", "float32"],
            "preferences": ["preferences", run, "--out", out, "--num", "8", "--win-steps", "1", "--lose-steps", "1"],
            }[command]
    before = snapshot(disk)
    code, err = cli(capsys, *argv)
    last = err.rstrip("\n").split("\n")[-1]      # after a progress bar, if the disk filled mid-way: on its own line
    assert code == 2 and "Traceback" not in err and last.startswith("error: ") and "\r" not in last, err
    assert "No space left on device" in last and str(disk) in last, last
    assert snapshot(disk) == before                                          # nothing left: no out, no .wb-*


def test_the_next_run_sweeps_the_temporary_folder_of_a_killed_one(tmp_path, capsys):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)                                                  # a pid that has exited
    stale = tmp_path / f".wb-sample-{dead}-abc123"
    live = tmp_path / f".wb-sample-{os.getppid()}-def456"                   # a running process's: kept
    for d in (stale, live):
        d.mkdir()
        (d / "clip-0000.mp4").write_bytes(b"half")
    assert cli(capsys, *_sample(tmp_path / "s", "--num", "1"))[0] == 0
    assert not stale.exists() and live.is_dir()
    assert sweep_stale(tmp_path, "sample") == []


def test_export_force_removes_what_the_earlier_export_wrote_and_nothing_else(run, tmp_path, capsys):  # noqa: F811
    import json
    out = tmp_path / "model"
    assert cli(capsys, "export", run, "--out", out)[0] == 0
    assert "model.safetensors" in json.loads((out / "export.json").read_text())["files"]
    (out / "lora").mkdir()                                   # as if the earlier export had been of a LoRA run ...
    (out / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"old adapter")
    marker = json.loads((out / "export.json").read_text())
    (out / "export.json").write_text(json.dumps({**marker, "files": [*marker["files"], "lora"]}))
    (out / "table.md").write_text("mine")                    # ... and a user had added a table
    assert cli(capsys, *["export", run, "--out", out, "--force"])[0] == 0
    assert not (out / "lora").exists() and (out / "table.md").read_text() == "mine"
