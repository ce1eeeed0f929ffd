"""What `train` does when a run goes wrong (issue 33): a kill during pruning, weights that blow up, Ctrl-C, a full
disk, a resume under another process count. Each stops with one line and leaves no partial file behind.

(The SIGKILL during pruning is tests/test_resume.py's `mid-prune` kill point.)
"""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from workbench.__main__ import main
from workbench.config import ConfigError
from workbench.methods import load_config
from workbench.methods.flow_matching import FlowMatching
from workbench.train import NonFiniteWeightsError, TrainInterrupted, train
from workbench.folders import RunFolder

MICRO = "experiments/micro/teacher.yaml"
STEPS = ["train.steps=8", "train.ckpt_every=4"]


def snapshot(folder):
    """Every path under `folder` with its bytes and modification time: equal only if nothing was written."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def finite_checkpoints(run) -> list[str]:
    """The names of the run's published checkpoints, each checked to hold only finite tensors."""
    ckpts = [c.path for c in RunFolder(run).checkpoints()]
    for c in ckpts:
        for f in c.glob("*.safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(f).values() if t.is_floating_point()), f
    return [c.name for c in ckpts]


def test_resume_finishes_a_killed_pruning_and_removes_partial_folders(tmp_path):
    cfg = load_config(MICRO, ["train.steps=4", "train.ckpt_every=4"])
    run = train(cfg, tmp_path / "run", progress=False)
    ckpts = run / "checkpoints"
    for leftover in [".pruning-step-000002", ".tmp-step-000008", "step-000001"]:  # step-000001: no state.json
        (ckpts / leftover).mkdir()
        (ckpts / leftover / "model.safetensors").write_bytes(b"half")
    (ckpts / ".unreadable-step-000003").mkdir()  # set aside by an earlier resume, kept for a look
    train(cfg, run, resume=True, progress=False)
    assert sorted(p.name for p in ckpts.iterdir()) == [".unreadable-step-000003", "step-000004"]


def test_weights_blown_up_by_an_infinite_lr_are_never_checkpointed(tmp_path):
    """lr=inf (built in Python: the loader refuses it): step 1's loss is finite, the weights after it are not."""
    cfg = load_config(MICRO, ["train.steps=4", "train.ckpt_every=1"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=float("inf")))
    with pytest.raises(NonFiniteWeightsError) as e:
        train(cfg, tmp_path / "run", progress=False)
    assert str(e.value).startswith("step 1: model.safetensors would hold non-finite values")
    assert str(e.value).endswith("checkpoint not written, run stopped, no checkpoint had been written")
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # nor a .tmp-step-* folder


def test_non_finite_weights_stop_the_run_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = FlowMatching.after_update

    def blow_up(self, step):  # after the update of step 8 (index 7), whose loss was computed finite
        real(self, step)
        if step.index == 7:
            with torch.no_grad():
                next(self.net.parameters()).fill_(float("nan"))

    monkeypatch.setattr(FlowMatching, "after_update", blow_up)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteWeightsError) as e:
        train(load_config(MICRO, STEPS), run, progress=False)
    assert isinstance(e.value, FloatingPointError) and "\n" not in str(e.value)
    assert str(e.value).startswith("step 8: model.safetensors would hold non-finite values (")
    assert str(e.value).endswith(f"run stopped, last good checkpoint kept: {run / 'checkpoints' / 'step-000004'}")
    assert finite_checkpoints(run) == ["step-000004"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000004"]


def test_ctrl_c_stops_with_one_line_naming_the_step_checkpoint_and_resume(tmp_path, monkeypatch, capfd):
    real = FlowMatching.losses

    def interrupted(self, batch, step):
        if step.index == 5:
            raise KeyboardInterrupt
        return real(self, batch, step)

    monkeypatch.setattr(FlowMatching, "losses", interrupted)
    run = tmp_path / "run"
    with pytest.raises(TrainInterrupted) as e:
        train(load_config(MICRO, STEPS), run, progress=False)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.__suppress_context__
    assert e.value.args[0] == (f"stopped after step 5 of 8; last good checkpoint kept: {run}/checkpoints/step-000004;"
                               f" continue with the same command and --resume --out {run}")

    # the command line: the progress bar closed, then that line as the last one, exit 130, no traceback
    resumed = tmp_path / "cli"
    code = main(["train", MICRO, "--out", str(resumed), *[a for s in STEPS for a in ("--set", s)]])
    err = capfd.readouterr().err
    assert code == 130 and "Traceback" not in err, err
    assert err.rstrip("\n").split("\n")[-1] == (
        f"interrupted: stopped after step 5 of 8; last good checkpoint kept: {resumed}/checkpoints/step-000004; "
        f"continue with the same command and --resume --out {resumed}")


@pytest.fixture
def full_disk(small_disk):
    """disk(free) -> a folder on a fresh tmpfs (conftest's small_disk) with `free` bytes left, a filler file taking
    the rest: the disk fills up at a chosen write."""
    def disk(free: int):
        folder = small_disk(str(free + 65536))
        (folder / "filler").write_bytes(bytes(65536))
        return folder
    return disk


PAGE = 4096  # tmpfs counts whole pages: config.yaml (2.6 kB), launch.json and the metrics rows each take one
# (bytes free, settings, the file that does not fit): a micro checkpoint is 29 MB, a sample sheet 25 kB
FULL = [(0, [], "config.yaml"),
        (PAGE, [], "launch.json"),
        (2 * PAGE, [], "metrics.jsonl"),
        (3 * PAGE, ["train.sample_every=2"], "samples/step-000002.png"),
        (40 << 20, ["train.sample_every=0"], "checkpoints/.tmp-step-000008/model-ema.safetensors")]


@pytest.mark.parametrize("free,sets,file", FULL, ids=[f[2].split("/")[-1] for f in FULL])
def test_full_disk_gives_one_line_naming_the_file_and_keeps_earlier_checkpoints(free, sets, file, full_disk,
                                                                                 capsys):
    run = full_disk(free) / "run"
    args = [a for s in STEPS + sets for a in ("--set", s)]
    assert main(["train", MICRO, "--out", str(run), *args]) == 2
    err = capsys.readouterr().err.splitlines()  # the progress bar (\r-separated), then the error
    assert err[-1] == f"error: {run / file}: No space left on device" and not any("Traceback" in e for e in err)
    assert finite_checkpoints(run) == (["step-000004"] if "checkpoints" in file else [])
    assert not list(run.glob("checkpoints/.tmp-*"))


def test_resume_under_another_process_count_is_refused_before_the_folder_changes(tmp_path):
    cfg = load_config(MICRO, ["train.steps=4", "train.ckpt_every=4"])
    run = train(cfg, tmp_path / "run", progress=False)
    state = run / "checkpoints" / "step-000004" / "state.json"
    saved = json.loads(state.read_text())
    assert (saved["processes"], saved["global_batch"]) == (1, 4)
    state.write_text(json.dumps({**saved, "processes": 2, "global_batch": 8}))  # as a two-process run saves it
    before = snapshot(run)
    with pytest.raises(ConfigError) as e:
        train(cfg, run, resume=True, progress=False)
    assert str(e.value).startswith(f"--resume: {state.parent} was trained by processes=2, global_batch=8, this "
                                   f"launch has processes=1, global_batch=4; ")
    assert snapshot(run) == before
    state.write_text(json.dumps({k: v for k, v in saved.items() if k not in ("processes", "global_batch")}))
    train(cfg, run, resume=True, progress=False)  # a checkpoint of an older version, without the keys: accepted
