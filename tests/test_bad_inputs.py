"""Bad input through the command line, as a user would give it: one line on stderr naming the file or key,
exit code 2, and nothing around it changed (no half-written output, nothing of the user's removed)."""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.__main__ import main
from workbench.methods.flow_matching import FlowMatching

MICRO = "experiments/micro/teacher.yaml"


def cli(capture, *argv) -> tuple[int, str]:
    """main(argv) in this process; `capture` (capsys, or capfd where native libraries write) gives its stderr."""
    code = main([str(a) for a in argv])
    return code, capture.readouterr().err


def one_line_error(code: int, err: str, *fragments: str) -> str:
    """Assert exit 2 and a stderr of exactly one line holding every fragment; returns the line."""
    assert code == 2, err[-2000:]
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("error: "), err[-2000:]
    for f in fragments:
        assert f in err, err
    return err


def snapshot(*paths: Path) -> dict:
    """Every file under `paths` (and the paths themselves) with its bytes: compare before and after."""
    out = {}
    for p in paths:
        for f in [p, *sorted(p.rglob("*"))] if p.is_dir() else [p]:
            out[str(f)] = f.read_bytes() if f.is_file() else ("dir" if f.is_dir() else None)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, request):
    """A finished micro run (8 steps, checkpoints at 4 and 8) and its exported model folder."""
    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    assert main(["train", str(request.config.rootpath / MICRO), "--out", str(run), "--set", "train.steps=8",
                 "--set", "train.ckpt_every=4", "--set", "train.keep_ckpts=5"]) == 0
    assert main(["export", str(run), "--out", str(root / "model"), "--dtype", "float32"]) == 0
    return run


@pytest.fixture(autouse=True)
def _in_root(monkeypatch, root):
    monkeypatch.chdir(root)


def corrupt(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # a pickle saved under the safetensors name: nothing may unpickle it
        torch.save({"weight": torch.zeros(3)}, path)


# --- export never removes a user's folder ---------------------------------------------------------------

def test_export_refuses_an_existing_folder_and_leaves_it_as_it_was(run, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.md").write_text("my notes")
    before = snapshot(tmp_path)
    one_line_error(*cli(capsys, "export", run, "--out", notes), f"--out {notes}: already exists", "--force")
    assert snapshot(tmp_path) == before


def test_export_onto_its_own_run_folder_deletes_nothing(run, capsys):
    before = snapshot(run.parent)
    one_line_error(*cli(capsys, "export", run, "--out", run), "already exists")
    one_line_error(*cli(capsys, "export", run, "--out", run, "--force"), "not an earlier export")
    assert snapshot(run.parent) == before


def test_export_onto_a_file_leaves_no_temporary_folder(run, tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"mine")
    before = snapshot(tmp_path)
    one_line_error(*cli(capsys, "export", run, "--out", tmp_path / "weights.bin", "--force"), "weights.bin",
                   "not an earlier export")
    assert snapshot(tmp_path) == before


def test_force_replaces_an_earlier_export_and_keeps_the_files_beside_it(run, tmp_path, capsys):
    out = tmp_path / "model"
    assert cli(capsys, "export", run, "--out", out, "--dtype", "float16")[0] == 0
    (out / "table.md").write_text("| my table |")
    assert cli(capsys, "export", run, "--out", out, "--dtype", "float32", "--force")[0] == 0
    assert (out / "table.md").read_text() == "| my table |"
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.yaml", "metrics.jsonl", "export.json",
                                               "table.md"}
    assert next(iter(load_file(out / "model.safetensors").values())).dtype == torch.float32
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old folder left beside it


# --- unreadable or misfitting weights --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["truncated", "empty", "pickle"])
@pytest.mark.parametrize("command", ["sample", "eval", "export", "train"])
def test_unreadable_weights_name_the_file(command, kind, run, tmp_path, capsys):
    if command == "export":  # a run whose newest checkpoint's EMA is bad
        src = tmp_path / "run"
        shutil.copytree(run, src)
        bad = src / "checkpoints" / "step-000008" / "model-ema.safetensors"
    else:
        src = tmp_path / "model"
        shutil.copytree(run.parent / "model", src)
        bad = src / "model.safetensors"
    corrupt(bad, kind)
    out = tmp_path / "out"
    argv = {"sample": ["sample", src, "--steps", "1", "--num", "1", "--out", out],
            "eval": ["eval", src, "--steps", "1", "--num", "1", "--seeds", "0", "--cache", "", "--out", out],
            "export": ["export", src, "--out", out],
            "train": ["train", MICRO, "--set", f"model.weights={bad}", "--out", out]}[command]
    before = snapshot(tmp_path)
    one_line_error(*cli(capsys, *argv), str(bad), "not a readable safetensors file")
    assert snapshot(tmp_path) == before  # nothing written, not even an empty --out


def test_weights_of_another_preset_name_the_first_misfit(run, tmp_path, capsys):
    one_line_error(*cli(capsys, "sample", run.parent / "model", "--set", "model.preset=tiny-wan", "--out", tmp_path / "s"),
                   "model.weights:", "has shape", "the network expects")
    one_line_error(*cli(capsys, "train", MICRO, "--set", "model.weights=experiments/toy/dino/model.safetensors",
                        "--out", tmp_path / "r"), "tensor 'embeddings.cls_token' is not in the network")
    assert list(tmp_path.iterdir()) == []


# --- resume -------------------------------------------------------------------------------------------------

def test_resume_sets_aside_an_unreadable_newest_checkpoint_and_resumes_from_the_one_before(run, tmp_path, capsys):
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    corrupt(cut / "checkpoints" / "step-000008" / "model.safetensors", "truncated")
    code, err = cli(capsys, "train", MICRO, "--out", cut, "--resume", "--set", "train.steps=8",
                    "--set", "train.ckpt_every=4", "--set", "train.keep_ckpts=5")
    assert code == 0, err[-2000:]
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "step-000008" in warning[0] and "resuming from step-000004" in warning[0]
    assert (cut / "checkpoints" / ".unreadable-step-000008" / "state.json").is_file()  # kept for a look
    for f in ("model", "model-ema", "optim-model", "rng"):  # steps 5-8 trained again: bitwise the uninterrupted run
        a = load_file(run / "checkpoints" / "step-000008" / f"{f}.safetensors")
        b = load_file(cut / "checkpoints" / "step-000008" / f"{f}.safetensors")
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_resume_with_no_readable_checkpoint_refuses_and_moves_nothing(run, tmp_path, capsys):
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    for c in ("step-000004", "step-000008"):
        corrupt(cut / "checkpoints" / c / "model-ema.safetensors", "empty")
    before = snapshot(cut)
    one_line_error(*cli(capsys, "train", MICRO, "--out", cut, "--resume", "--set", "train.steps=8",
                        "--set", "train.ckpt_every=4", "--set", "train.keep_ckpts=5"), "step-000008", "unreadable")
    assert snapshot(cut) == before


def test_resume_refuses_a_changed_optimizer_and_keeps_the_recorded_config(run, tmp_path, capsys):
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    before = snapshot(cut)
    one_line_error(*cli(capsys, "train", MICRO, "--out", cut, "--resume", "--set", "train.steps=8",
                        "--set", "train.ckpt_every=4", "--set", "train.keep_ckpts=5", "--set", "train.lr=5e-4"),
                   "--resume: this config changes what", "train.lr: 0.001 -> 0.0005", "config.yaml")
    one_line_error(*cli(capsys, "train", MICRO, "--out", cut, "--resume", "--set", "train.steps=16"),
                   "train.steps: 8 -> 16")
    assert snapshot(cut) == before


def test_a_new_run_into_a_folder_with_checkpoints_is_refused(run, capsys):
    before = snapshot(run)
    one_line_error(*cli(capsys, "train", MICRO, "--out", run), "already holds checkpoints", "--resume")
    assert snapshot(run) == before


# --- config files and values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("content,fragment", [
    (None, "is a folder; expected a YAML config file"),
    (b"", "empty config file"),
    (b"# only a comment\n", "empty config file"),
    (b"name: \xff\xfe run\n", "not UTF-8 text"),
    (b"train: [1, 2\n", "not valid YAML"),
    (b"- a list\n", "expected a mapping at the top level"),
    (b"stages: []\n", "a pipeline config"),
])
def test_bad_config_files_name_the_file(content, fragment, tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.mkdir() if content is None else cfg.write_bytes(content)
    before = snapshot(tmp_path)
    one_line_error(*cli(capsys, "train", cfg, "--out", tmp_path / "run"), str(cfg), fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("override,fragment", [
    ("train.batch_size=0", "train.batch_size: expected a value >= 1, got 0"),
    ("train.steps=-5", "train.steps: expected a value >= 1"),
    ("train.ema_decay=1.5", "train.ema_decay: expected a value >= 0 and <= 1"),
    ("sample.steps=0", "sample.steps: expected a value >= 1"),
    ("train.lr=fast", "train.lr: expected float"),
    ("train.nope=1", "train.nope: unknown key"),
    ("model.preset=huge", "model.preset: expected one of 'toy', 'toy-no-positions', 'tiny-wan'"),
])
def test_bad_config_values_name_the_key(override, fragment, tmp_path, capsys):
    one_line_error(*cli(capsys, "train", MICRO, "--set", override, "--out", tmp_path / "run"), fragment)
    assert list(tmp_path.iterdir()) == []


# --- file systems and data -----------------------------------------------------------------------------------

@pytest.fixture
def read_only_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a read-only tmpfs")
    yield d
    subprocess.run(["umount", str(d)], check=True)


def test_out_on_a_read_only_file_system(run, read_only_dir, capsys):
    one_line_error(*cli(capsys, "train", MICRO, "--set", "train.steps=2", "--out", read_only_dir / "run"),
                   str(read_only_dir / "run"), "Read-only file system")
    one_line_error(*cli(capsys, "export", run, "--out", read_only_dir / "model"), "Read-only file system")
    one_line_error(*cli(capsys, "sample", run, "--steps", "1", "--num", "1", "--out", read_only_dir / "s"),
                   "Read-only file system")


def test_data_export_onto_a_file_or_an_earlier_export(tmp_path, capsys):
    (tmp_path / "clips").write_text("mine")
    one_line_error(*cli(capsys, "data", "export", "--out", tmp_path / "clips", "--num", "2"), "is a file")
    assert cli(capsys, "data", "export", "--out", tmp_path / "e", "--num", "1")[0] == 0
    before = snapshot(tmp_path)
    one_line_error(*cli(capsys, "data", "export", "--out", tmp_path / "e", "--num", "1"),
                   "holds an earlier `data-export` output", "--force")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("frames,fragment", [(4, "2 unreadable"), (50, "2 too short")])
def test_a_video_csv_with_no_usable_clip(frames, fragment, tmp_path, capfd):  # capfd: FFmpeg and decord write to fd 2
    assert cli(capfd, "data", "export", "--out", tmp_path / "e", "--num", "3")[0] == 0
    for mp4 in (tmp_path / "e" / "videos").glob("*.mp4"):
        if frames == 4:
            mp4.write_bytes(b"\x00not an mp4" * 64)
    csv = tmp_path / "e" / "OpenVid-1M.csv"
    sets = ["data.kind=videos", f"data.videos.csv={csv}", f"data.videos.frames={frames}", "data.videos.height=16",
            "data.videos.width=16", "data.test_size=1"]
    one_line_error(*cli(capfd, "train", MICRO, *[a for s in sets for a in ("--set", s)], "--out", tmp_path / "run"),
                   str(csv), "none of the 2 train clips", fragment)
    assert not (tmp_path / "run").exists()


def test_preferences_onto_a_file(run, tmp_path, capsys):
    (tmp_path / "pairs").write_text("mine")
    before = snapshot(tmp_path)
    one_line_error(*cli(capsys, "preferences", run, "--out", tmp_path / "pairs", "--num", "2"), "not an empty folder")
    assert snapshot(tmp_path) == before


# --- a run that stops on a NaN ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_step,kept", [(1, "no checkpoint had been written"), (6, "kept: ")])
def test_nan_stop_is_the_last_line_and_says_what_was_kept(bad_step, kept, tmp_path, capsys, monkeypatch):
    real = FlowMatching.losses

    def poisoned(self, batch, step):
        out = real(self, batch, step)
        if step.index == bad_step:
            out.losses["model"] = out.losses["model"] * float("nan")
        return out

    monkeypatch.setattr(FlowMatching, "losses", poisoned)
    code, err = cli(capsys, "train", MICRO, "--set", "train.ckpt_every=4", "--out", tmp_path / "run")
    last = err.rstrip("\n").split("\n")[-1]
    assert code == 2 and last.startswith(f"error: step {bad_step}: loss 'model' is nan") and kept in last, err
    assert "\r" not in last  # not glued to the progress bar
    if bad_step == 6:
        assert last.endswith("step-000004")


# --- flags -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,fragment", [
    (["eval", "experiments/toy/teacher", "--steps", "1,a", "--out", "x"], "argument --steps: invalid"),
    (["eval", "experiments/toy/teacher", "--seeds", "", "--out", "x"], "argument --seeds: invalid"),
    (["sample", "experiments/toy/teacher", "--num", "0", "--out", "x"], "argument --num: invalid whole number >= 1"),
    (["sample", "experiments/toy/teacher"], "the following arguments are required: --out"),
    (["export", "runs/x", "--out", "y", "--dtype", "int8"], "argument --dtype: invalid choice"),
    (["nope"], "invalid choice: 'nope'"),
])
def test_bad_flags_give_one_line_not_the_usage(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err


def test_eval_names_must_match_the_models_and_sample_out_must_be_a_folder(run, tmp_path, capsys):
    one_line_error(*cli(capsys, "eval", run, run.parent / "model", "--names", "a", "--out", tmp_path / "e"),
                   "--names: 1 names for 2 checkpoints")
    (tmp_path / "f").write_text("mine")
    one_line_error(*cli(capsys, "sample", run, "--num", "1", "--steps", "1", "--out", tmp_path / "f"), "is a file")
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_text() == "mine"


def test_an_export_has_the_modes_of_a_plain_folder(run, tmp_path, capsys):
    import os
    import stat
    umask = os.umask(0)
    os.umask(umask)
    assert cli(capsys, "export", run, "--out", tmp_path / "m")[0] == 0
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "m" / "model.safetensors").stat().st_mode) == 0o666 & ~umask
