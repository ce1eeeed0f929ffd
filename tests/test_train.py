import json

import pytest
from safetensors.torch import load_file

from workbench.methods import load_config
from workbench.methods.flow_matching import FlowMatching
from workbench.train import NonFiniteLossError, train
from workbench.folders import RunFolder

MICRO = "experiments/micro/teacher.yaml"


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    cfg = load_config(MICRO, ["train.steps=12", "train.ckpt_every=4"])
    real = FlowMatching.losses

    def poisoned(self, batch, step):
        out = real(self, batch, step)
        if step.index == 6:
            out.losses["model"] = out.losses["model"] * float("nan")
        return out

    monkeypatch.setattr(FlowMatching, "losses", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 6"):
        train(cfg, tmp_path / "run", progress=False)
    ckpts = [c.path for c in RunFolder(tmp_path / "run").checkpoints()]
    assert [c.name for c in ckpts] == ["step-000004"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    load_file(ckpts[0] / "model.safetensors")


def test_refuses_to_overwrite_a_run(tmp_path):
    cfg = load_config(MICRO, ["train.steps=4", "train.ckpt_every=4"])
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)


def test_incomplete_checkpoint_is_ignored(tmp_path):
    cfg = load_config(MICRO, ["train.steps=4", "train.ckpt_every=4"])
    run = train(cfg, tmp_path / "run", progress=False)
    (run / "checkpoints" / ".tmp-step-000008").mkdir()
    (run / "checkpoints" / "step-000009").mkdir()  # no state.json: never completed
    assert [c.path.name for c in RunFolder(run).checkpoints()] == ["step-000004"]


def test_batch_sampler_shards_the_global_batch_and_resumes_by_step():
    from workbench.train.loop import StepBatchSampler
    whole = list(StepBatchSampler(10, 4, seed=3, start_step=0, end_step=6))
    r0 = list(StepBatchSampler(10, 2, 3, 0, 6, rank=0, world=2))
    r1 = list(StepBatchSampler(10, 2, 3, 0, 6, rank=1, world=2))
    assert [a + b for a, b in zip(r0, r1)] == whole
    assert list(StepBatchSampler(10, 4, 3, start_step=4, end_step=6)) == whole[4:]
    assert sorted(whole[0] + whole[1] + whole[2][:2]) == list(range(10))  # an epoch is a permutation


def test_bf16_mixed_precision_switch_runs(tmp_path):
    cfg = load_config(MICRO, ["train.steps=2", "train.mixed_precision=bf16", "train.sample_num=1"])
    run = train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and all(r["loss"] == r["loss"] for r in rows)


def test_fp16_scales_each_role_s_loss_and_checkpoints_the_scale(tmp_path):
    """fp16 autocast with a loss scaler per role (train/roles.py), after runs of other precisions in this process
    (accelerate's own precision is fixed once per process; the loop's is set per run)."""
    cfg = load_config(MICRO, ["train.steps=2", "train.ckpt_every=2", "train.mixed_precision=fp16",
                              "train.sample_num=1"])
    run = train(cfg, tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["roles"]["model"]["scaler"]["scale"] > 0
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and all(r["loss"] == r["loss"] for r in rows)


def test_a_run_records_its_launch_and_logs_to_tensorboard_when_asked(tmp_path):
    """launch.json (processes, global batch, precision, device) beside config.yaml; train.log_with=tensorboard
    writes each metrics row as TensorBoard scalars through accelerate's tracker."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from workbench.folders import RunFolder
    cfg = load_config(MICRO, ["train.steps=4", "train.log_every=2", "train.log_with=tensorboard", "train.sample_num=1"])
    run = RunFolder(train(cfg, tmp_path / "run", progress=False))
    launch = json.loads(run.launch.read_text())
    assert launch["processes"] == 1 and launch["global_batch"] == cfg.train.batch_size
    assert launch["mixed_precision"] == "no" and launch["device"] == "cpu"
    events = EventAccumulator(str(next(run.tensorboard.rglob("events.out.tfevents.*")).parent)).Reload()
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    rows = [json.loads(r) for r in run.metrics.read_text().splitlines()]
    assert loss == [(r["step"], pytest.approx(r["loss"])) for r in rows] and [s for s, _ in loss] == [2, 4]
