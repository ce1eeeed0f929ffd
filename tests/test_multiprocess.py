"""Two processes on CPU (gloo) under `accelerate launch` with the shipped experiments/wan/accelerate_ddp.yaml.

One launch runs four trainings (tests/launched.py records what each process did):
  keyed-toy, keyed-wan  the test method `keyed_roles` (tests/keyed_noise.py: noise keyed by clip, not process) at
                        batch B/2 a process: must end as one process at batch B does (same data order, gradients
                        averaged), within TOL;
  dmd2                  the real DMD2 (student + fake score, the fake score run several times a step) at micro size;
  ccd                   CCD on the tiny Wan (its JVP through the target), with activation checkpointing.
A second launch is the plain command `accelerate launch -m workbench train ... --resume`.
FSDP (train.fsdp, experiments/wan/accelerate_fsdp.yaml): one launch runs keyed-wan and ccd sharded, to end as the
DDP runs do within FSDP_REL; one more resumes the sharded CCD run by the plain command.
"""
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_resume import folder_state
from workbench.methods import load_config
from workbench.models import build_backbone
from workbench.train.checkpoint import weights_module

MICRO = "experiments/micro/teacher.yaml"
DDP = "experiments/wan/accelerate_ddp.yaml"
FSDP = "experiments/wan/accelerate_fsdp.yaml"
# 2 x B/2 against 1 x B: float32 sums in another order, then AdamW, which turns the rounding noise of a gradient
# that is zero in exact arithmetic (attention's key bias) into +-lr steps. So weights are compared by norm:
REL = 1e-3      # ||two - one|| / ||one - start|| (the model) or / ||one|| (EMA, critic, optimizer); measured <= 2.4e-4
ROW_REL = 1e-6  # each logged loss and grad norm (measured <= 2e-7)
KEYED = ["train.method=keyed_roles", "train.lr=1e-3", "train.warmup_steps=0", "train.log_every=1",
         "train.ckpt_every=2", "train.sample_every=0", "train.grad_clip=1.0"]
WAN = ["data.toy.size=32", "data.toy.frames=5"]  # the clips of the tiny-Wan runs
RUNS = {  # name: (config, overrides at batch B/2 a process)
    "keyed-toy": (MICRO, KEYED + ["train.steps=4", "train.batch_size=2"]),
    "keyed-wan": (MICRO, KEYED + ["train.steps=2", "train.batch_size=1"] + WAN),
    "dmd2": (MICRO, ["train.method=dmd2", "sample.sampler=consistency", "dmd2.denoising_steps=2",
                     "dmd2.student_every=2", "train.steps=4", "train.batch_size=2", "train.ckpt_every=2",
                     "train.keep_ckpts=2", "train.log_every=2", "train.sample_every=0"]),
    "ccd": (MICRO, ["train.method=ccd", "train.steps=4", "train.batch_size=1", "train.ckpt_every=2",
                    "train.log_every=1", "train.sample_every=0", "train.activation_checkpointing=true"] + WAN),
}
WAN_RUNS = {"keyed-wan", "ccd"}


def launch(root, config, *args, processes=2):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    # this interpreter's launcher: the test runs from an unactivated venv, without `accelerate` on PATH
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
                           "--num_processes", str(processes), "--main_process_port", str(free), *args],
                          cwd=root, capture_output=True, text=True)


def failure(r) -> str:
    """The first process's traceback, not the launcher's summary."""
    lines = [line for line in r.stderr.splitlines() if line.startswith("[rank0]:")]
    return "\n".join(lines[-20:]) or r.stderr[-3000:]


def cli(name, out, wan_model, *extra):
    config, sets = RUNS[name]
    model = wan_model if name in WAN_RUNS else []
    return ["train", config, "--out", str(out),
            *[a for s in model + sets + list(extra) for a in ("--set", s)]]


def launch_runs(root, config, tmp, runs: dict[str, list[str]]):
    """{run: (run folder, [record of rank 0, record of rank 1])} of one two-process launch of {run: cli args}."""
    args = []
    for name, run_args in runs.items():
        args += [*(["---"] if args else []), *run_args]
    r = launch(root, config, "tests/launched.py", str(tmp / "record"), *args)
    assert r.returncode == 0, failure(r)
    ranks = [json.loads((tmp / "record" / f"rank-{i}.json").read_text()) for i in range(2)]
    return {name: (tmp / name, [ranks[0][i], ranks[1][i]]) for i, name in enumerate(runs)}


def interrupted(run: Path, to: Path, last: int) -> Path:
    """A copy of `run` as a run killed just before its step-`last` checkpoint would leave it."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoints" / f"step-{last:06d}")
    for sheet in (to / "samples").glob(f"*-{last:06d}.png"):
        sheet.unlink()
    return to


@pytest.fixture(scope="module")
def wan_model(tmp_path_factory):
    from workbench.models.tiny_wan import save_tiny_wan
    return [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path_factory.mktemp("tiny-wan")).items()]


@pytest.fixture(scope="module")
def launched(tmp_path_factory, wan_model, request):
    """{run: (run folder, [record of rank 0, record of rank 1])} of the one two-process DDP launch."""
    tmp = tmp_path_factory.mktemp("two")
    return launch_runs(request.config.rootpath, DDP, tmp, {name: cli(name, tmp / name, wan_model) for name in RUNS})


def norm(tensors: dict[str, torch.Tensor]) -> float:
    return sum(t.double().pow(2).sum() for t in tensors.values()).sqrt().item()


def rows(run: Path) -> list[dict]:
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def last_checkpoint(run: Path) -> dict[str, torch.Tensor]:
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    return {f"{f.stem}/{k}": v for f in sorted(ckpt.glob("*.safetensors")) if f.stem != "rng"
            for k, v in load_file(f).items()}


@pytest.mark.parametrize("name", ["keyed-toy", "keyed-wan"])
def test_two_processes_at_half_the_batch_match_one_at_the_full_batch(name, launched, wan_model, tmp_path):
    import tests.keyed_noise  # noqa: F401  registers keyed_roles
    from workbench.train import train
    config, sets = RUNS[name]
    half = next(s for s in sets if s.startswith("train.batch_size="))
    full = [s for s in sets if s != half] + [f"train.batch_size={2 * int(half.split('=')[1])}"]
    one = train(load_config(config, (wan_model if name == "keyed-wan" else []) + full), tmp_path / "one",
                progress=False)
    two = launched[name][0]
    a, b = last_checkpoint(one), last_checkpoint(two)
    assert a.keys() == b.keys() and any(k.startswith("critic/") for k in a)
    cfg = load_config(config, (wan_model if name == "keyed-wan" else []) + full)
    torch.manual_seed(cfg.train.seed)                             # the loop's initial weights
    start = {f"model/{k}": v for k, v in weights_module(build_backbone(cfg.model)[0]).state_dict().items()}
    for file in {k.split("/")[0] for k in a}:                     # model, model-ema, critic, optim-<role>
        keys = [k for k in a if k.split("/")[0] == file]
        scale = norm({k: a[k] - start[k] for k in keys} if file == "model" else {k: a[k] for k in keys})
        assert norm({k: a[k] - b[k] for k in keys}) <= REL * scale, file
    assert [r["step"] for r in rows(two)] == [r["step"] for r in rows(one)] == list(range(1, len(rows(one)) + 1))
    for r1, r2 in zip(rows(one), rows(two)):     # a row is the mean over processes: the global batch's loss
        assert r1.keys() == r2.keys()
        for k in (k for k in r1 if k.startswith(("loss", "grad_norm"))):
            assert r2[k] == pytest.approx(r1[k], rel=ROW_REL), (r1["step"], k)


@pytest.mark.parametrize("name", list(RUNS))
def test_every_trained_role_is_wrapped_kept_equal_and_written_once(name, launched):
    run, ranks = launched[name]
    expected = {"keyed-toy": {"model", "critic"}, "keyed-wan": {"model", "critic"}, "dmd2": {"model", "fake"},
                "ccd": {"model"}}[name]
    for rank, rec in enumerate(ranks):
        assert rec["rank"] == rank and rec["distributed_type"] == "MULTI_CPU"
        assert rec["wrapped"] == {role: "DistributedDataParallel" for role in expected}
        assert rec["checkpointing"] == {role: name == "ccd" and role == "model" for role in expected}
    assert ranks[0]["weights"] == ranks[1]["weights"]           # gradients averaged: the processes stay equal
    logged = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == len(set(logged)) > 0                   # one row a logged step, not one a process
    steps = int(next(s for s in RUNS[name][1] if s.startswith("train.steps=")).split("=")[1])
    assert [r["saves"] for r in ranks] == [steps // 2, 0]          # ckpt_every=2: the main process writes


def test_resume_under_two_processes_ends_as_the_uninterrupted_run(launched, tmp_path, root):
    """The DMD2 run's folder as a run killed after its step-2 checkpoint would leave it, resumed by the plain
    command: the same folder as the uninterrupted two-process run (checkpoints bitwise, metrics, sheets)."""
    run = launched["dmd2"][0]
    resumed = interrupted(run, tmp_path / "dmd2", 4)
    r = launch(root, DDP, "-m", "workbench", *cli("dmd2", resumed, []), "--resume")
    assert r.returncode == 0, failure(r)
    assert folder_state(resumed) == folder_state(run)




# FSDP against DDP: the same processes, data and noise, but FSDP sums the clip's grad norm from shards, so the
# rounding differs (keyed-wan ended bitwise equal, CCD did not) and AdamW can turn it into +-lr steps (see REL).
FSDP_REL = 1e-3      # weights by norm as in REL; measured <= 6.4e-5 (CCD's model), <= 4e-8 (its EMA, target, AdamW)
FSDP_ROW_REL = 1e-5  # each logged loss and grad norm against DDP (sharded reductions sum in another order; measured
                     # up to 1.2e-6: CCD's grad norm at step 4 in a CI rehearsal)
SHARDED = {"keyed-wan": {"model": "FSDPFlowNet", "critic": "FSDPLinear"}, "ccd": {"model": "FSDPFlowNet"}}
UNITS = {"model": 3, "critic": 1}  # tiny-wan: 2 transformer blocks + the root; the critic: its root
FSDP_SETS = ["train.fsdp=true", "train.activation_checkpointing=true"]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, wan_model, request):
    """{run: (run folder, records)} of the two-process launch of keyed-wan and ccd with train.fsdp."""
    tmp = tmp_path_factory.mktemp("fsdp")
    return launch_runs(request.config.rootpath, FSDP, tmp,
                       {name: cli(name, tmp / name, wan_model, *FSDP_SETS) for name in SHARDED})


@pytest.mark.parametrize("name", list(SHARDED))
def test_fsdp_ends_as_ddp_and_writes_once(name, launched, sharded, wan_model):
    (ddp, _), (run, ranks) = launched[name], sharded[name]
    for rank, rec in enumerate(ranks):
        assert rec["rank"] == rank and rec["wrapped"] == SHARDED[name]   # fully_shard's classes, not DDP
        assert rec["units"] == {role: UNITS[role] for role in SHARDED[name]}
        assert rec["checkpointing"] == {role: role == "model" for role in SHARDED[name]}  # the critic has no blocks
    steps = int(next(s for s in RUNS[name][1] if s.startswith("train.steps=")).split("=")[1])
    assert [r["saves"] for r in ranks] == [steps // 2, 0]              # gathered by both, written by the main one
    a, b = last_checkpoint(ddp), last_checkpoint(run)                   # whole tensors, the same files
    assert a.keys() == b.keys()
    cfg = load_config(RUNS[name][0], wan_model + RUNS[name][1])
    torch.manual_seed(cfg.train.seed)                                    # the loop's initial weights
    start = {f"model/{k}": v for k, v in weights_module(build_backbone(cfg.model)[0]).state_dict().items()}
    for file in {k.split("/")[0] for k in a}:
        keys = [k for k in a if k.split("/")[0] == file]
        scale = norm({k: a[k] - start[k] for k in keys} if file == "model" else {k: a[k] for k in keys})
        assert norm({k: a[k] - b[k] for k in keys}) <= FSDP_REL * scale, file
    assert [r["step"] for r in rows(run)] == [r["step"] for r in rows(ddp)] == list(range(1, steps + 1))
    for r1, r2 in zip(rows(ddp), rows(run)):
        assert r1.keys() == r2.keys()
        for k in (k for k in r1 if k.startswith(("loss", "grad_norm"))):
            assert r2[k] == pytest.approx(r1[k], rel=FSDP_ROW_REL), (r1["step"], k)


def test_resume_under_fsdp_ends_as_the_uninterrupted_run(sharded, wan_model, tmp_path, root):
    """The sharded CCD run killed before its step-4 checkpoint, resumed by the plain command with train.fsdp: its
    checkpoints (written whole) load back into the shards and the folder ends bitwise as the uninterrupted one."""
    run = sharded["ccd"][0]
    resumed = interrupted(run, tmp_path / "ccd", 4)
    r = launch(root, FSDP, "-m", "workbench", *cli("ccd", resumed, wan_model, *FSDP_SETS), "--resume")
    assert r.returncode == 0, failure(r)
    assert folder_state(resumed) == folder_state(run)
