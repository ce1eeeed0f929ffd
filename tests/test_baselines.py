"""Baselines: known answers of each loss on tiny cases, one step at Wan scale, and conditioning that reaches the
networks."""
import math

import pytest
import torch

from workbench.flow import denoise, shift_timesteps
from workbench.methods import build_method, load_config
from workbench.methods.lcm import LCM
from workbench.methods.parts import lcm_loss, pseudo_huber
from workbench.models import build_backbone
from workbench.models.wan import Conditioning
from workbench.train import steps_on_batch

MICRO = "experiments/micro/teacher.yaml"


def test_pseudo_huber_form():
    a, b = torch.tensor([0.0, 3.0]), torch.tensor([4.0, 3.0])
    assert pseudo_huber(a, b, 0.0).item() == pytest.approx(2.0)                        # c = 0: mean |d|
    assert pseudo_huber(a, b, 1.0).item() == pytest.approx((math.sqrt(17) - 1) / 2)
    d = torch.tensor([1e-2])
    assert pseudo_huber(d, torch.zeros(1), 1.0).item() == pytest.approx(0.5e-4, rel=1e-2)  # ~ d^2 / (2c) near 0


def test_lcm_target_is_the_target_networks_consistency_value_at_the_teachers_euler_step():
    """Linear fields on a tiny case, by hand: x_s = x_t + (s - t) v_teacher, target = x_s - s F_target(x_s)."""
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 2, 4, 4, generator=g)
    t, s = torch.tensor([0.6, 0.3]), torch.tensor([0.4, 0.0])
    student = lambda x, tt, c: 0.5 * x  # noqa: E731
    target = lambda x, tt, c: 0.8 * x  # noqa: E731
    teacher = lambda x, tt, c: -1.5 * x  # noqa: E731
    loss, _, _ = lcm_loss(student, target, teacher, x_t, t, s, None, huber_c=0.001)
    te, se = t.view(2, 1, 1, 1, 1), s.view(2, 1, 1, 1, 1)
    x_s = x_t + (se - te) * (-1.5 * x_t)
    want_target = x_s - se * 0.8 * x_s                      # at s = 0 (second sample) this is x_s: the boundary
    want_f = x_t - te * 0.5 * x_t
    assert torch.equal(denoise(x_s[1:], 0.8 * x_s[1:], torch.zeros(1)), x_s[1:])
    assert loss.item() == pytest.approx((torch.sqrt((want_f - want_target) ** 2 + 1e-6) - 1e-3).mean().item(), rel=1e-5)


def test_lcm_trains_on_the_loop_and_samples_with_the_consistency_sampler(tmp_path):
    from workbench.runs import load_model
    from workbench.train import train
    cfg = load_config(MICRO, ["train.method=lcm", "train.steps=4", "sample.sampler=consistency",
                              "train.sample_num=1", "train.sample_steps=[1]"])
    run = train(cfg, tmp_path / "run", progress=False)
    assert load_model(run).sampler == "consistency"


def test_lcm_one_step_at_wan_scale(tmp_path):
    from workbench.models.tiny_wan import save_tiny_wan
    model = [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path).items()]
    cfg = load_config(None, [*model, "train.method=lcm", "distill.guidance=2.0", "lcm.grid=10"])
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    assert isinstance(method, LCM)
    clip = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    logs = steps_on_batch(method, cfg.train, {"video": clip, "caption": ["a red ball", "a cat"]}, 1)
    assert math.isfinite(logs[0]["loss"])


METHOD_SETS = {"lcm": ["train.method=lcm"], "pcm-ema": ["train.method=pcm", "pcm.target=ema"],   # as shipped
               "pcm-adversarial": ["train.method=pcm", "pcm.adversarial=true"], "osv": ["train.method=osv"]}


@pytest.mark.parametrize("name", sorted(METHOD_SETS))
@pytest.mark.parametrize("wan", [False, True])
def test_the_first_frame_reaches_every_network(name, wan, tmp_path, dino):
    """Perturbing the conditioning first frame changes every network's prediction (image channels, and CLIP tokens
    at Wan scale): teacher, student, target, and the teacher's block features PCM's discriminator reads."""
    from tests.first_frame import assert_every_network_sees_the_first_frame, method_and_two_first_frames
    from workbench.models.wan import block_features
    sets = METHOD_SETS[name] + ([f"adversarial.feature_net={dino}", "adversarial.layers=[1,2]"] if name == "osv" else [])
    method, net, *inputs = method_and_two_first_frames(sets, wan, tmp_path)
    nets = {"teacher": method.teacher, "student": net, "target": method.target}
    if name == "pcm-adversarial":
        nets["teacher blocks"] = lambda x, tt, c: torch.cat(block_features(method.teacher, x, tt, c, method.blocks), 1)
    assert_every_network_sees_the_first_frame(nets, *inputs)
    assert isinstance(inputs[2], Conditioning) and (method.target is not None or name == "pcm-adversarial")


def test_pcm_jumps_land_on_the_phase_edge_and_the_target_is_euler_then_jump():
    from workbench.methods.pcm import consistency_distance, jump, pcm_loss
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 2, 4, 4, generator=g)
    t, s, edge = torch.tensor([0.7, 0.3]), torch.tensor([0.68, 0.28]), torch.tensor([0.5, 0.25])
    student = lambda x, tt, c: 0.5 * x  # noqa: E731
    teacher = lambda x, tt, c: -1.5 * x  # noqa: E731
    # a straight flow to x0: the jump from any t with the exact velocity lands on the path's point at the edge
    x0, x1 = torch.randn_like(x_t), torch.randn_like(x_t)
    te = t.view(2, 1, 1, 1, 1)
    on_path = jump((1 - te) * x0 + te * x1, x1 - x0, t, edge)
    torch.testing.assert_close(on_path, (1 - edge.view(2, 1, 1, 1, 1)) * x0 + edge.view(2, 1, 1, 1, 1) * x1)
    loss, pred, target, _ = pcm_loss(student, teacher, x_t, t, s, edge, None, consistency_distance("huber", 0.0))
    se, ee = s.view(2, 1, 1, 1, 1), edge.view(2, 1, 1, 1, 1)
    x_s = x_t + (se - te) * (-1.5 * x_t)                                    # Euler step of the teacher
    want_pred, want_target = x_t + (ee - te) * 0.5 * x_t, x_s + (ee - se) * 0.5 * x_s   # then both jump to the edge
    torch.testing.assert_close(pred, want_pred)
    torch.testing.assert_close(target, want_target)
    assert loss.item() == pytest.approx((want_pred - want_target).abs().mean().item(), rel=1e-5)   # Huber, c = 0
    l2, *_ = pcm_loss(student, teacher, x_t, t, s, edge, None, consistency_distance("l2", 0.001))
    assert l2.item() == pytest.approx(((want_pred - want_target) ** 2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="pcm.loss: expected one of 'huber', 'l2', got 'l1'"):
        load_config(MICRO, ["train.method=pcm", "pcm.loss=l1"])                    # at load, before any work


def test_pcm_draws_solver_steps_inside_one_phase_and_keeps_no_target(tmp_path):
    from workbench.methods.pcm import PCM
    cfg = load_config(MICRO, ["train.method=pcm", "pcm.phases=2", "pcm.grid=4", "pcm.skip=3"])
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    assert isinstance(method, PCM) and method.target is None and method.state() == {}
    seen = []
    real = __import__("workbench.methods.pcm", fromlist=["pcm_loss"]).pcm_loss

    def spy(student, teacher_velocity, x_t, t, s, edge, cond, distance, target=None):  # noqa: PLR0913
        seen.append((t.clone(), s.clone(), edge.clone()))
        return real(student, teacher_velocity, x_t, t, s, edge, cond, distance, target=target)

    import workbench.methods.pcm as pcm
    pcm.pcm_loss, saved = spy, pcm.pcm_loss
    try:
        from workbench.data import build_dataset, collate
        batch = collate([build_dataset(cfg.data, "train")[i] for i in range(4)])
        steps_on_batch(method, cfg.train, batch, 5)
    finally:
        pcm.pcm_loss = saved
    for t, s, edge in seen:   # grid 4, phases of 2 intervals: edges 0, 0.5, 1; a skip of 3 stops at the edge
        assert ((edge == 0) | (edge == 0.5)).all() and (s >= edge).all() and (s < t).all()
        assert (edge == torch.where(t > 0.5, torch.tensor(0.5), torch.tensor(0.0))).all()
    with pytest.raises(ValueError, match="pcm.phases: 5 must divide pcm.grid"):
        load_config(MICRO, ["train.method=pcm", "pcm.phases=5"])                    # at load, before any work


class _Identity:
    """Encoders whose latents are the clips themselves (no conditioning): enough for the grid samplers."""
    def prepare(self, video, captions):
        return video, None


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_lcm_grid_lies_on_the_teachers_shifted_schedule(shift):
    """t = t_n and s = t_{n-k} are points of schedule(N, sample.shift), k grid intervals apart (LCM and OSV)."""
    from workbench.methods.parts import grid_batch
    from workbench.sampling import schedule
    c = load_config(None, ["train.method=lcm", "lcm.grid=10", "lcm.skip=2"]).lcm
    _, t, s, _ = grid_batch(_Identity(), {"video": torch.zeros(64, 1, 1, 1, 1), "caption": [""] * 64}, c,
                            torch.Generator().manual_seed(0), shift)
    grid = schedule(c.grid, shift)                                    # grid[i] = shift(1 - i / N)
    index = lambda x: int((grid - x).abs().argmin())  # noqa: E731
    for tt, ss in zip(t, s):
        torch.testing.assert_close(grid[index(tt)], tt)
        assert index(ss) == index(tt) + c.skip
    assert (t > s).all() and len(set(t.tolist())) > 3


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_pcm_k_step_euler_sampling_lands_on_the_phase_edges_under_a_shift(shift):
    """The edges PCM trains towards, shift(j / K), are the points K-step Euler at sample.shift visits; every t_n lies
    in its phase (edge, next edge] and s in [edge, t)."""
    from workbench.methods.pcm import phase_times
    from workbench.sampling import euler, schedule
    c = load_config(None, ["train.method=pcm", "pcm.phases=4", "pcm.grid=12", "pcm.skip=2"]).pcm
    t, s, edge = phase_times(torch.arange(1, c.grid + 1), c, shift)
    visited = []                                                      # x_t is the time itself: dx/dt = 1
    landed = euler(lambda x, tt, cond: visited.append(x.item()) or torch.ones_like(x), torch.ones(1, 1, 1, 1, 1),
                   None, schedule(c.phases, shift))
    edges = torch.tensor([*visited, landed.item()])                  # e_K = 1, e_{K-1}, ..., e_0 = 0
    torch.testing.assert_close(edges, shift_timesteps(torch.linspace(1, 0, c.phases + 1), shift))
    torch.testing.assert_close(edge.unique().flip(0), edges[1:])    # the lower edges the jumps land on
    upper = torch.stack([edges[(edges - e).abs().argmin() - 1] for e in edge])
    assert (edge < t).all() and (t <= upper + 1e-6).all() and (edge <= s).all() and (s < t).all()


def test_pcm_target_can_be_the_online_student_or_an_ema():
    cfg = load_config(MICRO, ["train.method=pcm", "pcm.target=ema"])
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    assert method.target is not None and set(method.state()) == {"target"}
    with pytest.raises(ValueError, match="pcm.target: expected one of 'online', 'ema', got 'both'"):
        load_config(MICRO, ["train.method=pcm", "pcm.target=both"])                 # at load, before any work


def test_pcm_adversarial_renoises_inside_the_phase_and_reads_the_teachers_blocks():
    from workbench.methods.pcm import renoise_in_phase
    from workbench.models.wan import block_features
    x, noise = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    edge = torch.tensor([0.0, 0.5])
    torch.testing.assert_close(renoise_in_phase(x, noise, edge, edge), x)                     # sigma = edge: as is
    torch.testing.assert_close(renoise_in_phase(x, noise, edge, torch.ones(2)), noise)         # sigma = 1: noise
    cfg = load_config(MICRO, ["train.method=pcm", "pcm.adversarial=true", "pcm.adv_blocks=[1,3]", "pcm.adv_lr=1e-3"])
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    assert set(method.roles()) == {"model", "disc"} and len(method.heads.heads) == 2
    x0, cond = encoders.prepare(torch.rand(1, 3, 4, 16, 16) * 2 - 1, ["a red ball"])
    seen = []
    hook = net.transformer.blocks[3].register_forward_hook(lambda m, a, o: seen.append(o))
    feats = block_features(net, x0, torch.tensor([0.5]), cond, (1, 3))
    hook.remove()
    assert len(feats) == 2 and torch.equal(feats[1], seen[0]) and not net.transformer.blocks[3]._forward_hooks
    from workbench.data import build_dataset, collate
    batch = collate([build_dataset(cfg.data, "train")[i] for i in range(2)])
    before = [p.clone() for p in method.teacher.parameters()]
    heads = [p.clone() for p in method.heads.parameters()]
    logs = steps_on_batch(method, cfg.train, batch, 2)
    assert {"loss_consistency", "loss_adv_g", "loss_d"} <= set(logs[-1])
    assert logs[-1]["loss"] == pytest.approx(logs[-1]["loss_consistency"] + 0.1 * logs[-1]["loss_adv_g"], rel=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, method.teacher.parameters()))       # the teacher is frozen
    assert any(not torch.equal(a, b) for a, b in zip(heads, method.heads.parameters()))      # its heads train
    with pytest.raises(ValueError, match="pcm.adv_blocks"):
        build_method(load_config(MICRO, ["train.method=pcm", "pcm.adversarial=true", "pcm.adv_blocks=[9]"]),
                     net, encoders)


def test_osv_trains_the_gan_alone_then_adds_consistency(dino):
    from workbench.methods.osv import OSV
    cfg = load_config(MICRO, ["train.method=osv", "osv.stage1_steps=2", f"adversarial.feature_net={dino}",
                              "adversarial.layers=[1,2]", "adversarial.lambda_adv=0.5", "lcm.grid=8"])
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    assert isinstance(method, OSV) and set(method.roles()) == {"model", "disc"} and "features" in method.frozen()
    from workbench.data import build_dataset, collate
    batch = collate([build_dataset(cfg.data, "train")[i] for i in range(2)])
    features = [p.clone() for p in method.adversarial.features.parameters()]
    logs = steps_on_batch(method, cfg.train, batch, 4)
    for row in logs[:2]:                                                    # stage 1: the GAN alone, from step 0
        assert "loss_consistency" not in row and row["loss"] == pytest.approx(0.5 * row["loss_adv_g"], rel=1e-5)
        assert "loss_d" in row
    for row in logs[2:]:                                                    # stage 2: consistency + GAN
        assert row["loss"] == pytest.approx(row["loss_consistency"] + 0.5 * row["loss_adv_g"], rel=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(features, method.adversarial.features.parameters()))


@pytest.mark.parametrize("method,teacher_dtype", [("osv", "float32"), ("pcm-adversarial", "float32"),
                                                  ("pcm-adversarial", "bfloat16")])
def test_osv_and_adversarial_pcm_one_step_at_wan_scale(method, teacher_dtype, tmp_path, dino):
    """bf16: the discriminator reads the bf16 teacher's block features (in the student's dtype) with a shift."""
    from workbench.models.tiny_wan import save_tiny_wan
    model = [f"model.{k}={v}" for k, v in save_tiny_wan(tmp_path).items()]
    extra = (["train.method=osv", "osv.stage1_steps=0", f"adversarial.feature_net={dino}", "adversarial.layers=[1,2]",
              "lcm.grid=10"] if method == "osv" else ["train.method=pcm", "pcm.adversarial=true", "pcm.grid=8"])
    cfg = load_config(None, [*model, *extra, "distill.guidance=2.0", f"distill.teacher_dtype={teacher_dtype}",
                             "sample.shift=3.0"])
    net, encoders = build_backbone(cfg.model)
    built = build_method(cfg, net, encoders)
    clip = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    logs = steps_on_batch(built, cfg.train, {"video": clip, "caption": ["a red ball", "a cat"]}, 1)
    assert all(math.isfinite(v) for v in logs[0].values()) and "loss_adv_g" in logs[0]
    assert all(p.grad is not None for p in built.roles()["disc"].net.parameters())
    assert all(p.dtype == torch.float32 for role in built.roles().values() for p in role.params)
    assert (torch.bfloat16 in {p.dtype for p in built.teacher.parameters()}) == (teacher_dtype == "bfloat16")
