"""CDM: the push losses on a hand case, the fake teacher's detached flow matching, the update ratio across a resume,
the random continuous schedules, conditioning that reaches every network, and one step at Wan scale."""
import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from workbench.methods import TrainStep, build_method, load_config
from workbench.methods.cdm import CDM, fake_teacher_loss, random_schedule, rollout
from workbench.methods.parts import dm_loss
from workbench.models import build_backbone
from workbench.train import steps_on_batch

MICRO = "experiments/micro/teacher.yaml"


def test_dm_push_and_its_normaliser_on_a_hand_case():
    """x0_S is pushed by (real - fake) / max(mean|real - x0_S|, 0.1): the loss, its gradient, and its sign."""
    x0_s = torch.tensor([[0.0, 1.0], [2.0, 2.0]]).view(2, 1, 1, 1, 2).requires_grad_(True)
    real = torch.tensor([[1.0, 3.0], [2.02, 2.0]]).view(2, 1, 1, 1, 2)
    fake = torch.tensor([[0.0, 2.0], [2.0, 1.99]]).view(2, 1, 1, 1, 2)
    loss, _, norm = dm_loss(x0_s, real - fake, real, norm_min=0.1)   # CDM's DM: push x0_real - x0_fake
    # sample 0: mean|real - x0_S| = (1 + 2) / 2 = 1.5; sample 1: (0.02 + 0) / 2 = 0.01 -> clamped to 0.1
    torch.testing.assert_close(norm, torch.tensor([1.5, 0.1]))
    push = torch.tensor([[1.0, 1.0], [0.02, 0.01]]) / torch.tensor([[1.5], [0.1]])
    assert loss.item() == pytest.approx((push ** 2).mean().item(), rel=1e-5)   # MSE to x0_S + push, per sample then batch
    loss.backward()
    # d/dx0_S of mean_b mean_i (x0_S - sg(x0_S + push))^2 = -2 push / (2 elements * 2 samples)
    torch.testing.assert_close(x0_s.grad.view(2, 2), -push / 2)
    # a descent step moves x0_S towards the real teacher's estimate, away from the fake's (DMD2's sign)
    moved = x0_s.detach() - 0.1 * x0_s.grad
    assert ((moved - real).abs().sum() < (x0_s.detach() - real).abs().sum()).item()
    assert ((moved - fake).abs().sum() > (x0_s.detach() - fake).abs().sum()).item()
    # real == fake: no push at all
    zero, _, _ = dm_loss(x0_s, real - real.clone(), real, norm_min=0.1)
    assert zero.item() == 0.0


def test_ca_push_is_guidance_times_cond_minus_uncond_normalised_by_cond():
    x0_s = torch.zeros(1, 1, 1, 1, 2)
    cond, uncond = torch.tensor([0.5, -0.5]).view(1, 1, 1, 1, 2), torch.tensor([0.25, -0.5]).view(1, 1, 1, 1, 2)
    loss, _, norm = dm_loss(x0_s, 7.0 * (cond - uncond), cond, norm_min=0.1)   # CDM's CA push
    assert norm.item() == pytest.approx(0.5)                   # mean|cond - x0_S|
    assert loss.item() == pytest.approx(((7 * 0.25 / 0.5) ** 2 + 0) / 2, rel=1e-5)


def test_fake_teacher_loss_is_flow_matching_on_detached_samples():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 2, 4, 4, generator=g).requires_grad_(True)
    noise, sigma = torch.randn(2, 3, 2, 4, 4, generator=g), torch.tensor([0.3, 0.9])
    w = torch.tensor(0.7, requires_grad=True)
    fake = lambda x, t, c: w * x  # noqa: E731
    loss = fake_teacher_loss(fake, x0, noise, sigma, None)
    s = sigma.view(2, 1, 1, 1, 1)
    x_s = (1 - s) * x0.detach() + s * noise
    assert loss.item() == pytest.approx(((0.7 * x_s - (noise - x0.detach())) ** 2).mean().item(), rel=1e-5)
    loss.backward()
    assert x0.grad is None and w.grad is not None              # nothing flows back into the samples


def _micro(extra=()):
    cfg = load_config(MICRO, ["train.method=cdm", "cdm.max_steps=4", *extra])
    torch.manual_seed(0)
    net, encoders = build_backbone(cfg.model)
    return cfg, net, encoders, build_method(cfg, net, encoders)


def _batch(cfg, n=2):
    from workbench.data import build_dataset, collate
    ds = build_dataset(cfg.data, "train")
    return collate([ds[i] for i in range(n)])


def test_no_gradient_reaches_the_student_through_the_fake_teachers_loss():
    cfg, net, _, method = _micro()
    assert isinstance(method, CDM) and method.target is None
    roles = method.roles()
    assert list(roles) == ["model", "fake"] and roles["fake"].lr == 5e-6    # the student is stepped first
    step = TrainStep(4, torch.Generator().manual_seed(0), {"model": net, "fake": method.fake},
                     frozenset({"model", "fake"}))
    out = method.losses(_batch(cfg), step)
    student = [p for p in net.parameters() if p.requires_grad]
    assert all(g is None for g in torch.autograd.grad(out.losses["fake"], student, allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(out.losses["model"], list(method.fake.parameters()),
                                                      allow_unused=True))   # the FT is read under no_grad
    assert any(g is not None for g in torch.autograd.grad(out.losses["model"], student, allow_unused=True))
    for key in ("loss_ca", "loss_dm", "loss_cdm", "loss_fake"):
        assert math.isfinite(out.logs[key]), key


def test_snapshot_steps_return_the_x0_estimates_and_change_nothing_trained():
    """At a sample-sheet step, with or without a student update: the student's, real score's and fake teacher's x0
    (the x0 shape, no graph), and the same losses as at a plain step."""
    cfg, net, encoders, method = _micro()
    batch = _batch(cfg)
    x0, _ = encoders.prepare(batch["video"], batch["caption"])
    for due in ({"fake"}, {"model", "fake"}):
        outs = [method.losses(batch, TrainStep(4, torch.Generator().manual_seed(0), {"model": net, "fake": method.fake},
                                               frozenset(due), snapshot=snapshot)) for snapshot in (False, True)]
        assert outs[0].images == {} and list(outs[1].images) == ["student x0", "real score x0", "fake teacher x0"]
        assert all(v.shape == x0.shape and not v.requires_grad for v in outs[1].images.values())
        assert {k: v.item() for k, v in outs[0].losses.items()} == {k: v.item() for k, v in outs[1].losses.items()}


def _train_rows_and_weights(cfg, out, resume=False):
    from workbench.train import train
    run = train(cfg, out, resume=resume, progress=False)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    last = sorted((run / "checkpoints").iterdir())[-1]
    return rows, {f.name: load_file(f) for f in sorted(last.glob("*.safetensors")) if f.name != "rng.safetensors"}


def test_update_ratio_holds_over_20_steps_and_across_a_resume(tmp_path):
    sets = ["train.method=cdm", "cdm.max_steps=3", "train.schedule=constant", "train.warmup_steps=0",
            "train.log_every=1", "train.ckpt_every=10", "train.sample_num=1", "train.sample_steps=[1]",
            "data.toy.size=8", "data.toy.frames=2", "data.toy.object_size=[3,3]", "train.batch_size=2"]
    full_rows, full = _train_rows_and_weights(load_config(MICRO, [*sets, "train.steps=20"]), tmp_path / "full")
    student = [r["step"] - 1 for r in full_rows if "grad_norm/model" in r]
    assert student == [4, 9, 14, 19]                                          # offset update_ratio - 1, every 5
    assert all("grad_norm/fake" in r for r in full_rows) and len(full_rows) == 20   # the FT every step
    # 10 steps, then on to 20 from its step-10 checkpoint: a run of 20 stopped after that checkpoint
    # (train.steps is part of what is trained, so the saved config is given the run's full length)
    half = tmp_path / "half"
    _train_rows_and_weights(load_config(MICRO, [*sets, "train.steps=10"]), half)
    saved = yaml.safe_load((half / "config.yaml").read_text())
    saved["train"]["steps"] = 20
    (half / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    rows, resumed = _train_rows_and_weights(load_config(MICRO, [*sets, "train.steps=20"]), half, resume=True)
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert [r["step"] - 1 for r in rows if "grad_norm/model" in r] == student
    assert set(resumed) == set(full) >= {"model.safetensors", "model-ema.safetensors", "fake.safetensors",
                                         "optim-model.safetensors", "optim-fake.safetensors"}
    for name in full:
        for k, v in full[name].items():
            assert torch.equal(v, resumed[name][k]), (name, k)
    sheet = "samples/estimates-000020.png"           # student, real-score and fake-teacher x0, decoded (last step)
    assert (tmp_path / "full" / sheet).read_bytes() == (half / sheet).read_bytes()


def test_rollout_schedules_are_random_in_length_and_fall_from_1_to_0():
    c = load_config(None, ["train.method=cdm", "cdm.max_steps=8"]).cdm
    lengths = set()
    for seed in range(60):
        ts = random_schedule(c, torch.Generator().manual_seed(seed))
        lengths.add(len(ts) - 1)
        assert ts[0] == 1.0 and ts[-1] == 0.0 and bool((ts[1:] < ts[:-1]).all()), ts
        assert bool(((ts[1:-1] >= 0.25) & (ts[1:-1] <= 0.95)).all())
    assert lengths == set(range(1, 9))
    # the rollout walks those times with Euler: a constant field lands on x - (1 - 0) v
    ts = random_schedule(c, torch.Generator().manual_seed(3))
    x, v = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    traj = rollout(lambda xx, t, cc: v, x, None, ts)
    assert len(traj.xs) == len(ts) and len(traj.x0s) == len(ts) - 1
    torch.testing.assert_close(traj.xs[-1], x - v)
    torch.testing.assert_close(traj.x0s[0], x - v)


@pytest.mark.parametrize("wan", [False, True])
def test_the_first_frame_reaches_every_network(wan, tmp_path):
    """Teacher, fake teacher and student all read the first frame (image channels, and CLIP tokens at Wan scale)."""
    from tests.first_frame import assert_every_network_sees_the_first_frame, method_and_two_first_frames
    method, net, *inputs = method_and_two_first_frames(["train.method=cdm"], wan, tmp_path)
    assert_every_network_sees_the_first_frame({"teacher": method.teacher, "fake": method.fake, "student": net}, *inputs)


@pytest.mark.parametrize("teacher_dtype", ["float32", "bfloat16"])
def test_cdm_one_step_at_wan_scale(teacher_dtype, tmp_path):
    from workbench.models.tiny_wan import save_tiny_wan
    model = [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path).items()]
    cfg = load_config(None, [*model, "train.method=cdm", "cdm.update_ratio=1", "cdm.max_steps=3",
                             f"distill.teacher_dtype={teacher_dtype}"])
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    clip = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    logs = steps_on_batch(method, cfg.train, {"video": clip, "caption": ["a red ball", "a cat"]}, 1)
    assert all(math.isfinite(v) for v in logs[0].values())
    assert {"loss_ca", "loss_dm", "loss_cdm", "grad_norm/model", "grad_norm/fake"} <= set(logs[0])
    assert all(p.dtype == torch.float32 for role in method.roles().values() for p in role.params)   # the FT too
    assert (torch.bfloat16 in {p.dtype for p in method.teacher.parameters()}) == (teacher_dtype == "bfloat16")
