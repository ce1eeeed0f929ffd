"""Training with a diffusion (VP) network (issue 39): the teacher's objective is diffusers' own v / epsilon loss, a
teacher keeps the path it was trained on when its student is a flow network, and a network starts from weights of
another path only on purpose (model.reparameterize)."""
import json

import pytest
import torch
from diffusers import DDPMScheduler

from workbench.config import ConfigError
from workbench import generate
from workbench.methods import build_method, load_config
from workbench.methods.flow_matching import flow_matching_loss
from workbench.models import build_backbone
from workbench.train import train
from workbench.vp import PREDICTIONS, flow_velocity, prediction_weight, vp_input

DIFFUSERS = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}
MICRO = "experiments/micro/teacher.yaml"


def scheduler_folder(tmp_path, kind="v"):
    folder = tmp_path / f"scheduler-{kind}"
    folder.mkdir(exist_ok=True)
    DDPMScheduler(prediction_type=DIFFUSERS[kind]).save_config(folder)
    return folder


def vp_config(tmp_path, kind="v", *overrides):
    return load_config(MICRO, [f"model.vp_schedule={scheduler_folder(tmp_path, kind)}", f"model.prediction={kind}",
                               *overrides])


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_the_prediction_weight_turns_a_velocity_error_into_the_prediction_error(kind):
    t = torch.rand(6, dtype=torch.float64) * 0.98 + 0.01
    x_vp, pred, d = (torch.randn(6, 1, 2, 3, 3, dtype=torch.float64) for _ in range(3))
    dv = flow_velocity(pred + d, x_vp, t, kind) - flow_velocity(pred, x_vp, t, kind)
    torch.testing.assert_close(d.pow(2).flatten(1).sum(1), prediction_weight(t, kind) * dv.pow(2).flatten(1).sum(1))


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_flow_matching_on_a_vp_network_is_diffusers_own_loss(kind, tmp_path):
    """At integer timesteps s: MSE(transformer output, the target DDPMScheduler gives) on add_noise's sample."""
    cfg = vp_config(tmp_path, kind)
    net, encoders = build_backbone(cfg.model)
    x0, cond = encoders.prepare(generate.test_batch(cfg, 3)["video"], ["a", "b", "c"])
    eps = torch.randn_like(x0)
    s = torch.tensor([3, 400, 990])
    sched = DDPMScheduler.from_pretrained(cfg.model.vp_schedule)
    x_vp = sched.add_noise(x0, eps, s)
    target = {"epsilon": eps, "v": sched.get_velocity(x0, eps, s), "x0": x0}[kind]
    t = net.vp.flow_times[s].float()
    with torch.no_grad():
        torch.testing.assert_close(vp_input((1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps, t), x_vp,
                                   rtol=1e-5, atol=1e-5)
        inp, text, image = net.wan_inputs(x_vp, cond)
        raw = net.transformer(inp, s.float(), text, return_dict=False)[0]
        ours = flow_matching_loss(net, net, x0, eps, t, cond)
    torch.testing.assert_close(ours, (raw - target).pow(2).mean(), rtol=2e-4, atol=1e-6)


def test_ddpm_timesteps_need_a_vp_network():
    with pytest.raises(ConfigError, match="flow_matching.timesteps: ddpm draws a VP network's timesteps: set "
                                          "model.vp_schedule"):
        load_config(MICRO, ["flow_matching.timesteps=ddpm"])


def test_a_vp_teacher_starts_from_a_flow_one_on_purpose_and_trains(tmp_path):
    flow = train(load_config(MICRO, ["train.steps=1", "train.ckpt_every=1"]), tmp_path / "flow", progress=False)
    weights = next((flow / "checkpoints").glob("step-*")) / "model.safetensors"
    with pytest.raises(ValueError, match="set model.reparameterize=true"):
        build_backbone(vp_config(tmp_path, "v", f"model.weights={weights}").model)
    cfg = vp_config(tmp_path, "v", f"model.weights={weights}", "model.reparameterize=true",
                    "flow_matching.timesteps=ddpm", "train.steps=2", "train.ckpt_every=2")
    run = train(cfg, tmp_path / "vp", progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)


def test_a_flow_student_of_a_vp_teacher_is_taught_on_the_teachers_path(tmp_path):
    """The teacher's run config says VP + v: the CCD teacher is bridged, the student a flow x0 network."""
    teacher_run = train(vp_config(tmp_path, "v", "train.steps=1", "train.ckpt_every=1"), tmp_path / "t", progress=False)
    weights = next((teacher_run / "checkpoints").glob("step-*")) / "model.safetensors"
    cfg = load_config("experiments/micro/ccd.yaml", [f"model.weights={weights}", "model.reparameterize=true"])
    assert not cfg.model.vp_schedule
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    assert net.vp is None and method.teacher.vp is not None and method.teacher.prediction == "v"
    assert method.teacher.transformer is not net.transformer                  # a frozen copy, not the student
    teacher_alone, _ = build_backbone(vp_config(tmp_path, "v", f"model.weights={weights}").model)
    x0, cond = encoders.prepare(generate.test_batch(cfg, 2)["video"], ["a", "b"])
    x_t, t = torch.randn_like(x0), torch.tensor([0.4, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(method.teacher(x_t, t, cond), teacher_alone(x_t, t, cond))


def test_a_pipeline_sets_every_stage_before_its_own_set(tmp_path):
    from workbench.pipeline import load_pipeline
    path = tmp_path / "p.yaml"
    path.write_text(f"""stages:
  - {{name: ccd, config: experiments/micro/ccd.yaml, set: [train.lr=0.5]}}
  - {{name: da, config: experiments/micro/da.yaml, init: ccd}}
set: [model.vp_schedule={scheduler_folder(tmp_path)}, model.prediction=v, train.lr=0.25]
""")
    cfg = load_pipeline(path)
    assert [s.set[-1] for s in cfg.stages] == ["train.lr=0.5", "train.lr=0.25"]
    assert all("model.prediction=v" in s.set for s in cfg.stages)
    path.write_text(path.read_text().replace("prediction=v", "prediction=velocity"))
    with pytest.raises(ConfigError, match=r"stages\[0\] \(ccd\): .*model.prediction: a VP network"):
        load_pipeline(path)


def test_every_swiftvideo_stage_runs_from_a_vp_teacher(tmp_path):
    """The micro pipeline (teacher -> CCD -> DA -> TA x 2 -> eval), every stage a v-prediction VP network."""
    from workbench.pipeline import load_pipeline, run_pipeline
    folder = scheduler_folder(tmp_path)
    cfg = load_pipeline("experiments/micro/swiftvideo.yaml", [f"set=[model.vp_schedule={folder}, model.prediction=v]"])
    out = run_pipeline(cfg, tmp_path / "run")
    for stage in ("teacher", "ccd", "ccd_da", "ta1", "ta2"):
        saved = (out / stage / "model" / "config.yaml").read_text()
        assert f"vp_schedule: {folder}" in saved and "prediction: v" in saved
    table = (out / "eval" / "table.md").read_text()
    assert all(stage in table for stage in ("teacher", "ccd_da", "ta2")) and "nan" not in table.lower()
