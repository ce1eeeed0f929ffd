"""DMD2: the distribution-matching gradient by hand, the fake score's loss isolated from the student, the two
time-scale rule across a resume, the first frame reaching every network, one step at Wan scale."""
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from workbench.flow import interpolate
from workbench.methods import build_method, load_config
from workbench.methods.base import TrainStep
from workbench.methods.dmd2 import DMD2
from workbench.methods.parts import dm_loss
from workbench.models import build_backbone
from workbench.train import steps_on_batch, train

MICRO = "experiments/micro/teacher.yaml"
SETS = ["train.method=dmd2", "sample.sampler=consistency", "dmd2.denoising_steps=2"]


def _batch(cfg, n=2):
    from workbench.data import build_dataset, collate
    return collate([build_dataset(cfg.data, "train")[i] for i in range(n)])


def test_dm_gradient_and_its_normaliser_by_hand():
    x0_hat = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 1, 2, 2)
    real = torch.tensor([[0.0, 2.0, 3.0, 6.0], [1.0, -1.0, 1.0, -1.0]]).view(2, 1, 1, 2, 2)
    fake = torch.tensor([[2.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 1, 2, 2)
    x = x0_hat.clone().requires_grad_(True)
    loss, grad, norm = dm_loss(x, real - fake, real, scale=0.5)        # DMD2's: push x0_real - x0_fake, norm_min 0
    # sample 0: mean |x0_hat - real| = (1 + 0 + 0 + 2) / 4 = 0.75; sample 1: mean = 1
    torch.testing.assert_close(norm, torch.tensor([0.75, 1.0]))
    torch.testing.assert_close(grad[0].flatten(), torch.tensor([2.0, 0, 0, 0]) / 0.75)   # (x0_fake - x0_real) / norm
    torch.testing.assert_close(grad[1].flatten(), torch.tensor([-1.0, 1, -1, 1]))
    loss.backward()
    torch.testing.assert_close(x.grad, grad / grad.numel())           # 0.5 MSE to sg(x - grad): d/dx = grad / N
    assert torch.isfinite(dm_loss(real, real - fake, real)[1]).all()    # a zero normaliser gives no NaN


def test_the_fake_scores_loss_is_flow_matching_on_detached_samples():
    cfg = load_config(MICRO, SETS)
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    assert isinstance(method, DMD2) and list(method.roles()) == ["model", "fake"]
    nets = {"model": net, "fake": method.fake}
    for due in ({"fake"}, {"model", "fake"}):
        net.zero_grad(set_to_none=True)
        out = method.losses(_batch(cfg), TrainStep(0, torch.Generator().manual_seed(0), nets, frozenset(due)))
        assert set(out.losses) == due
        out.losses["fake"].backward(retain_graph=True)
        assert all(p.grad is None for p in net.parameters())           # no gradient reaches the student
        assert any(p.grad is not None for p in method.fake.flow.parameters())
        method.fake.zero_grad(set_to_none=True)
    assert not any(p.requires_grad for p in method.teacher.parameters())


def test_the_fake_scores_loss_value_is_the_flow_matching_mse_on_the_detached_samples():
    """loss_fake_fm = mean (v_fake(x_t, t) - (eps - sg(x0_hat)))^2 with t ~ U[min_t, max_t] and eps, drawn in that
    order from the step's generator; its backward leaves x0_hat without a gradient."""
    cfg = load_config(MICRO, SETS)
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    batch = _batch(cfg)
    _, cond = encoders.prepare(batch["video"], batch["caption"])
    x0_hat = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    method.generate = lambda *args, **kwargs: x0_hat                 # the student's sample; draws nothing
    out = method.losses(batch, TrainStep(0, torch.Generator().manual_seed(0), {"model": net, "fake": method.fake},
                                         frozenset({"fake"})))
    g, c = torch.Generator().manual_seed(0), cfg.dmd2
    t = c.min_t + (c.max_t - c.min_t) * torch.rand(2, generator=g)
    eps = torch.randn(x0_hat.shape, generator=g)
    x = x0_hat.detach()
    with torch.no_grad():
        want = ((method.fake(interpolate(x, eps, t), t, cond) - (eps - x)) ** 2).mean()
    assert out.logs["loss_fake_fm"] == pytest.approx(want.item(), rel=1e-5)
    out.losses["fake"].backward()
    assert x0_hat.grad is None


def test_the_two_time_scale_rule_holds_across_a_resume(tmp_path):
    """Student every 5th step, fake score every step, over 20 steps; a run resumed at step 10 ends bitwise equal."""
    sets = SETS + ["train.steps=20", "train.log_every=1", "train.ckpt_every=5", "train.keep_ckpts=10",
                   "train.batch_size=2", "train.sample_num=1", "train.sample_steps=[1]"]
    cfg = load_config(MICRO, sets)
    whole = train(cfg, tmp_path / "whole", progress=False)
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss_dm" in r] == [5, 10, 15, 20]
    assert all("loss_fake_fm" in r for r in rows) and len(rows) == 20
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    for ckpt in (resumed / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > 10:
            shutil.rmtree(ckpt)
    train(cfg, resumed, resume=True, progress=False)
    sheet = "samples/estimates-000020.png"           # student, real-score and fake-score x0, decoded (last step)
    assert (whole / sheet).read_bytes() == (resumed / sheet).read_bytes()
    for name in ("model.safetensors", "fake.safetensors", "optim-fake.safetensors", "model-ema.safetensors"):
        a, b = (load_file(r / "checkpoints/step-000020" / name) for r in (whole, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("wan", [False, True])
def test_the_first_frame_reaches_teacher_fake_score_its_classifier_and_student(wan, tmp_path):
    from tests.first_frame import assert_every_network_sees_the_first_frame, method_and_two_first_frames
    method, net, *inputs = method_and_two_first_frames(SETS, wan, tmp_path)
    assert_every_network_sees_the_first_frame(
        {"teacher": method.teacher, "student": net, "fake score": method.fake,
         "classifier": lambda x, tt, c: method.fake(x, tt, c, classify=True)}, *inputs)


@pytest.mark.parametrize("rank,teacher_dtype", [(0, "float32"), (4, "float32"), (0, "bfloat16"), (4, "bfloat16")])
def test_dmd2_one_step_at_wan_scale(rank, teacher_dtype, tmp_path):
    """Full or LoRA fake score, fp32 or bf16 teacher: finite losses; a bf16 teacher (the real score outside every
    role) keeps diffusers' fp32 modules, the trained networks stay fp32, and a LoRA fake score's base stays fp32."""
    from workbench.models.tiny_wan import save_tiny_wan
    cfg = load_config(None, [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path).items()] + SETS +
                      ["distill.guidance=2.0", "dmd2.student_every=1", f"dmd2.fake_lora_rank={rank}",
                       f"distill.teacher_dtype={teacher_dtype}"])
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    clip = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    logs = steps_on_batch(method, cfg.train, {"video": clip, "caption": ["a red ball", "a cat"]}, 1)
    assert all(math.isfinite(v) for v in logs[0].values()) and {"loss_dm", "loss_fake_fm"} <= set(logs[0])
    assert all(p.dtype == torch.float32 for role in method.roles().values() for p in role.params)
    keep = set(method.teacher.transformer._keep_in_fp32_modules)
    for name, p in method.teacher.named_parameters():
        in_bf16 = teacher_dtype == "bfloat16" and not rank and not keep & set(name.split("."))
        assert p.dtype == (torch.bfloat16 if in_bf16 else torch.float32), name


def test_bad_dmd2_and_teacher_dtype_values_are_refused(tmp_path):
    from workbench.models.tiny_wan import save_tiny_wan
    model = [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path).items()]
    net, encoders = build_backbone(load_config(None, model).model)
    for key, message in (("dmd2.gan_block=7", "dmd2.gan_block"), ("distill.teacher_dtype=float16",
                                                                  "distill.teacher_dtype: expected one of 'float32', 'bfloat16'")):
        with pytest.raises(ValueError, match=message):
            build_method(load_config(None, [*model, *SETS, key]), net, encoders)


def test_the_fake_score_as_a_lora_on_the_teachers_frozen_base():
    """One base in memory: the fake score trains only its adapter and head; the real score stays the teacher."""
    cfg = load_config(MICRO, SETS + ["dmd2.fake_lora_rank=4", "dmd2.student_every=1"])
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    x0, cond = encoders.prepare(torch.rand(1, 3, 4, 16, 16) * 2 - 1, ["a red ball"])
    x_t, t = torch.randn_like(x0), torch.tensor([0.6])
    with torch.no_grad():
        before = method.teacher_velocity(x_t, t, cond)
    trained = method.roles()["fake"].params
    assert trained and all("lora_" in n or n.startswith("head.") for n, p in method.fake.named_parameters()
                           if any(p is q for q in trained))
    assert method.fake.flow is method.teacher                          # shared, not copied
    steps_on_batch(method, cfg.train, _batch(cfg), 3)
    with torch.no_grad():
        torch.testing.assert_close(method.teacher_velocity(x_t, t, cond), before)    # the real score is unchanged
        assert not torch.allclose(method.fake(x_t, t, cond), before)               # the fake score has moved


def test_bench_memory_counts_the_parts_the_methods_build(tmp_path):
    """bench/memory.py's arithmetic (meta-device counts) against DMD2 built at the tiny-wan size."""
    import importlib.util

    from workbench.models.tiny_wan import save_tiny_wan
    spec = importlib.util.spec_from_file_location("bench_memory", "bench/memory.py")
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    c = memory.counts("tiny-wan", 4)
    model = [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path).items()]
    n = lambda params: sum(p.numel() for p in params)  # noqa: E731
    for rank in (0, 4):
        cfg = load_config(None, [*model, *SETS, f"dmd2.fake_lora_rank={rank}"])
        net, encoders = build_backbone(cfg.model)
        method = build_method(cfg, net, encoders)
        roles = method.roles()
        head = n(method.fake.head.parameters())
        assert n(roles["model"].params) == c["params"]
        assert n(method.teacher.parameters()) == c["params"] + (c["lora"] if rank else 0)   # the base (+ the adapter)
        assert n(roles["fake"].params) - head == (c["lora"] if rank else c["params"])
    cfg = load_config(None, [*model, *SETS, "distill.teacher_dtype=bfloat16"])    # --teacher-dtype bfloat16's bytes
    teacher = build_method(cfg, *build_backbone(cfg.model)).teacher
    assert sum(p.numel() * p.element_size() for p in teacher.parameters()) == 2 * c["params"] + 2 * c["fp32_kept"]


def test_a_method_trains_again_after_steps_on_batch():
    """update_roles switches off roles not due; steps_on_batch leaves every role trainable (notebooks call it twice)."""
    cfg = load_config(MICRO, SETS)
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    steps_on_batch(method, cfg.train, _batch(cfg), 1)                    # step 0: the student is not due
    assert all(p.requires_grad for p in net.parameters())
    assert len(steps_on_batch(method, cfg.train, _batch(cfg), 5)) == 5


def test_bench_memory_flash_rows_keep_no_attention_matrix():
    """bench/memory.py's activation rows: the flash path saves no s x s (or s x text) matrix, the math path does,
    and a flash block still saves at least q, k, v and the output of its self-attention."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_memory", "bench/memory.py")
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    flash, math = (memory.activations("tiny-wan", 3, 16, 16, a) for a in ("flash", "math"))
    s, width = 3 * 8 * 8, 2 * 8                                   # tokens, heads x head_dim of tiny-wan
    assert flash["tokens"] == math["tokens"] == s
    assert flash["attention_matrices_per_block"] == 0 < math["attention_matrices_per_block"]
    assert 4 * s * width * 2 <= flash["block"] < math["block"]
    no_ckpt, ckpt = memory.totals(flash)
    assert ckpt < no_ckpt == flash["outside"] + flash["layers"] * flash["block"]
