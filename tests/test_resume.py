"""SIGKILL at exact points of a run, then `--resume`: the run folder equals an uninterrupted run's.

Equal means: the same checkpoint set, every tensor of every checkpoint (weights, EMA, optimizer moments,
RNG) bitwise, the same state.json, metrics.jsonl rows (all but the wall-clock column), sample sheets
byte for byte, config.yaml, and no leftover temporary folder.
"""
import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

MICRO = "experiments/micro/teacher.yaml"
SETS = ["--set", "train.steps=12", "--set", "train.ckpt_every=4", "--set", "train.keep_ckpts=2",
        "--set", "train.sample_every=4", "--set", "train.log_every=1"]
# (point, n): the n-th call; checkpoints come at steps 4, 8, 12, each writing 5 safetensors files
KILLS = [("before-checkpoint", 1),   # before the first checkpoint: metrics rows and a sheet, no checkpoint
         ("mid-checkpoint", 2),      # inside the first checkpoint: a .tmp-step-000004 folder half written
         ("after-checkpoint", 2),    # mid-run, right after step 8's checkpoint
         ("before-prune", 3),        # the last checkpoint renamed, the oldest not yet pruned (3 on disk)
         ("mid-prune", 1),           # the oldest checkpoint half deleted by the pruning after the last one
         ("after-checkpoint", 3)]    # after the last checkpoint: only the exit was missed


def _train(root, out, *extra, kill=None):
    pre = [sys.executable, "tests/kill_at.py", *map(str, kill)] if kill else [sys.executable, "-m", "workbench"]
    return subprocess.run([*pre, "train", MICRO, "--out", str(out), *SETS, *extra], cwd=root,
                          capture_output=True, text=True)


def folder_state(run):
    """Everything a run folder holds, comparable with ==."""
    ckpts = {}
    for c in sorted((run / "checkpoints").iterdir()):
        tensors = {f.name: {k: v.numpy().tobytes() for k, v in load_file(f).items()} for f in sorted(c.glob("*.safetensors"))}
        ckpts[c.name] = (tensors, json.loads((c / "state.json").read_text()))
    rows = [{k: v for k, v in json.loads(r).items() if k != "elapsed_s"}
            for r in (run / "metrics.jsonl").read_text().splitlines()]
    sheets = {p.name: p.read_bytes() for p in sorted((run / "samples").iterdir())}
    return {"checkpoints": ckpts, "metrics": rows, "samples": sheets, "config": (run / "config.yaml").read_text(),
            "files": sorted(str(p.relative_to(run)) for p in run.rglob("*"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("full") / "run"
    r = _train(request.config.rootpath, out)
    assert r.returncode == 0, r.stderr[-2000:]
    return folder_state(out)


@pytest.mark.parametrize("point,n", KILLS, ids=[f"{p}-{n}" for p, n in KILLS])
def test_sigkill_then_resume_leaves_the_folder_of_an_uninterrupted_run(point, n, uninterrupted, tmp_path, root):
    out = tmp_path / "run"
    killed = _train(root, out, kill=(point, n))
    assert killed.returncode == -9, killed.stderr[-2000:]
    if point == "before-checkpoint":
        assert not (out / "checkpoints").exists() and (out / "metrics.jsonl").read_text()
    if point == "mid-checkpoint":
        assert list((out / "checkpoints").glob(".tmp-step-*"))
    if point == "before-prune":
        assert len(list((out / "checkpoints").glob("step-*"))) == 3
    if point == "mid-prune":
        assert [c for c in (out / "checkpoints").iterdir() if not (c / "state.json").exists()]  # half deleted
    resumed = _train(root, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = folder_state(out)
    assert state["files"] == uninterrupted["files"]
    assert state["metrics"] == uninterrupted["metrics"]
    assert state["samples"] == uninterrupted["samples"]
    assert state["config"] == uninterrupted["config"]
    assert state["checkpoints"].keys() == uninterrupted["checkpoints"].keys() == {"step-000008", "step-000012"}
    assert state["checkpoints"] == uninterrupted["checkpoints"]
