"""Two processes on CPU (gloo) under `accelerate launch` with the shipped experiments/wan/accelerate_ddp.yaml.

One launch runs three trainings (tests/launched.py records what each process did):
  keyed-toy, keyed-wan  the test method `keyed_roles` (tests/keyed_noise.py: noise keyed by clip, not process) at
                        batch B/2 a process: must end as one process at batch B does (same data order, gradients
                        averaged), within TOL;
  dmd2                  the real DMD2 (student + fake score, the fake score run several times a step) at micro size.
A second launch is the plain command `accelerate launch -m workbench train ... --resume`; a third tries
experiments/wan/accelerate_fsdp.yaml on CPU.
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
from workbench.config import load_config
from workbench.models import build_backbone
from workbench.train.checkpoint import weights_module

MICRO = "experiments/micro/teacher.yaml"
DDP = "experiments/wan/accelerate_ddp.yaml"
# 2 x B/2 against 1 x B: float32 sums in another order, then AdamW, which turns the rounding noise of a gradient
# that is zero in exact arithmetic (attention's key bias) into +-lr steps. So weights are compared by norm:
REL = 1e-3      # ||two - one|| / ||one - start|| (the model) or / ||one|| (EMA, critic, optimizer); measured <= 2.4e-4
ROW_REL = 1e-6  # each logged loss and grad norm (measured <= 2e-7)
KEYED = ["train.method=keyed_roles", "train.lr=1e-3", "train.warmup_steps=0", "train.log_every=1",
         "train.ckpt_every=2", "train.sample_every=0", "train.grad_clip=1.0"]
RUNS = {  # name: (config, overrides at batch B/2 a process)
    "keyed-toy": (MICRO, KEYED + ["train.steps=4", "train.batch_size=2"]),
    "keyed-wan": (MICRO, KEYED + ["train.steps=2", "train.batch_size=1", "data.toy.size=32", "data.toy.frames=5"]),
    "dmd2": (MICRO, ["train.method=dmd2", "sample.sampler=consistency", "dmd2.denoising_steps=2",
                     "dmd2.student_every=2", "train.steps=4", "train.batch_size=2", "train.ckpt_every=2",
                     "train.keep_ckpts=2", "train.log_every=2", "train.sample_every=0"]),
}


def launch(root, config, *args, processes=2):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    return subprocess.run(["accelerate", "launch", "--config_file", config, "--num_processes", str(processes),
                           "--main_process_port", str(free), *args], cwd=root, capture_output=True, text=True)


def failure(r) -> str:
    """The first process's traceback, not the launcher's summary."""
    lines = [line for line in r.stderr.splitlines() if line.startswith("[rank0]:")]
    return "\n".join(lines[-20:]) or r.stderr[-3000:]


def cli(name, out, wan_model):
    config, sets = RUNS[name]
    model = wan_model if name == "keyed-wan" else []
    return ["train", config, "--out", str(out),
            *[a for s in model + sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def wan_model(tmp_path_factory):
    from tests.tiny_wan import save_tiny_wan
    return [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path_factory.mktemp("tiny-wan")).items()]


@pytest.fixture(scope="module")
def launched(tmp_path_factory, wan_model, request):
    """{run: (run folder, [record of rank 0, record of rank 1])} of the one two-process launch."""
    tmp = tmp_path_factory.mktemp("two")
    args = []
    for name in RUNS:
        args += [*(["---"] if args else []), *cli(name, tmp / name, wan_model)]
    r = launch(request.config.rootpath, DDP, "tests/launched.py", str(tmp / "record"), *args)
    assert r.returncode == 0, failure(r)
    ranks = [json.loads((tmp / "record" / f"rank-{i}.json").read_text()) for i in range(2)]
    return {name: (tmp / name, [ranks[0][i], ranks[1][i]]) for i, name in enumerate(RUNS)}


def norm(tensors: dict[str, torch.Tensor]) -> float:
    return sum(t.double().pow(2).sum() for t in tensors.values()).sqrt().item()


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
    rows = lambda run: [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in rows(two)] == [r["step"] for r in rows(one)] == list(range(1, len(rows(one)) + 1))
    for r1, r2 in zip(rows(one), rows(two)):     # a row is the mean over processes: the global batch's loss
        assert r1.keys() == r2.keys()
        for k in (k for k in r1 if k.startswith(("loss", "grad_norm"))):
            assert r2[k] == pytest.approx(r1[k], rel=ROW_REL), (r1["step"], k)


@pytest.mark.parametrize("name", list(RUNS))
def test_every_trained_role_is_wrapped_kept_equal_and_written_once(name, launched):
    run, ranks = launched[name]
    expected = {"keyed-toy": {"model", "critic"}, "keyed-wan": {"model", "critic"}, "dmd2": {"model", "fake"}}[name]
    for rank, rec in enumerate(ranks):
        assert rec["rank"] == rank and rec["distributed_type"] == "MULTI_CPU"
        assert rec["wrapped"] == {role: "DistributedDataParallel" for role in expected}
    assert ranks[0]["weights"] == ranks[1]["weights"]           # gradients averaged: the processes stay equal
    logged = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == len(set(logged)) > 0                   # one row a logged step, not one a process
    steps = int(next(s for s in RUNS[name][1] if s.startswith("train.steps=")).split("=")[1])
    assert [r["saves"] for r in ranks] == [steps // 2, 0]          # ckpt_every=2: the main process writes


def test_resume_under_two_processes_ends_as_the_uninterrupted_run(launched, tmp_path, root):
    """The DMD2 run's folder as a run killed after its step-2 checkpoint would leave it, resumed by the plain
    command: the same folder as the uninterrupted two-process run (checkpoints bitwise, metrics, sheets)."""
    run = launched["dmd2"][0]
    resumed = tmp_path / "dmd2"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    for sheet in (resumed / "samples").glob("*-000004.png"):
        sheet.unlink()
    r = launch(root, DDP, "-m", "workbench", *cli("dmd2", resumed, []), "--resume")
    assert r.returncode == 0, failure(r)
    assert folder_state(resumed) == folder_state(run)


def test_fsdp_config_on_two_cpu_processes(tmp_path, root):
    """experiments/wan/accelerate_fsdp.yaml on CPU: accelerate must either shard (FSDP) or say it cannot."""
    r = launch(root, "experiments/wan/accelerate_fsdp.yaml", "tests/launched.py", str(tmp_path / "record"),
               "train", MICRO, "--out", str(tmp_path / "run"), "--set", "train.steps=1")
    ranks = [json.loads((tmp_path / "record" / f"rank-{i}.json").read_text()) for i in range(2)]
    kind = ranks[0][0]["distributed_type"]
    if kind == "MULTI_CPU":      # accelerate 1.15 on CPU: no error, no sharding, DDP instead
        assert r.returncode == 0 and ranks[0][0]["wrapped"] == {"model": "DistributedDataParallel"}, failure(r)
        pytest.skip("accelerate 1.15 ignores distributed_type FSDP on CPU: AcceleratorState sets FSDP only when the "
                    "device type is MULTI_GPU/NPU/XPU/..., so cpu=True stays MULTI_CPU and prepare() wraps in DDP "
                    "(torch 2.13 fully_shard itself runs on CPU/gloo); FSDP needs a GPU check")
    assert kind == "FSDP" and r.returncode == 2 and "distributed_type FSDP" in r.stderr
