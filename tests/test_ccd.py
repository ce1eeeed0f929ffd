"""CCD (Algorithm 1) and DCD (Eq. 3): tangent warmup and normalisation on hand-made tensors, the EMA
update, and that distillation drives a tiny model towards consistency on a fixed batch."""
import copy

import pytest
import torch
from diffusers import WanTransformer3DModel

from workbench.methods import TrainStep, build_method, load_config
from workbench.methods.ccd import CCD, ccd_tangent, normalize_tangent, tangent_warmup
from workbench.methods.dcd import DCD
from workbench.models import Encoders, FlowNet
from workbench.models.codec import PixelCodec
from workbench.models.text import ToyTextEncoder
from workbench.models.ema import ema_update, frozen_copy
from workbench.train import steps_on_batch


def test_tangent_warmup_counts_steps():  # Algorithm 1 line 6
    assert [tangent_warmup(s, 4) for s in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert tangent_warmup(0, 0) == 1.0


def test_tangent_is_eq9_interpolation_of_flow_matching_and_ccd():
    g = torch.Generator().manual_seed(0)
    dxdt, F, dF = (torch.randn(2, 3, 2, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0.25, 0.8])
    te = t.view(2, 1, 1, 1, 1)
    for r in (0.0, 0.3, 1.0):
        want = (1 - r) * (dxdt - F) + r * (dxdt - F - te * dF)   # Eq. (9), right-hand side
        torch.testing.assert_close(ccd_tangent(dxdt, F, dF, t, r), want)


def test_tangent_normalisation_is_per_sample():  # Algorithm 1 line 8
    g = torch.zeros(2, 1, 1, 1, 2)
    g[0, 0, 0, 0] = torch.tensor([3.0, 4.0])    # norm 5
    g[1, 0, 0, 0] = torch.tensor([0.0, 0.1])    # norm 0.1
    out = normalize_tangent(g, c=0.1)
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor([3.0, 4.0]) / 5.1)
    torch.testing.assert_close(out[1, 0, 0, 0], torch.tensor([0.0, 0.5]))


def test_ema_update_is_line_11():
    net = torch.nn.Linear(2, 2)
    ema = frozen_copy(net)
    before = copy.deepcopy(ema.weight.detach())
    with torch.no_grad():
        net.weight.add_(1.0)
    ema_update(ema, net, 0.95)
    torch.testing.assert_close(ema.weight, 0.95 * before + 0.05 * net.weight.detach())
    assert not any(p.requires_grad for p in ema.parameters())


def _tiny(cfg_overrides=()):
    """A 2-layer Wan on 8x8x2 pixel clips (16 tokens): hundreds of CCD steps in seconds."""
    cfg = load_config(None, ["data.toy.size=8", "data.toy.frames=2", "data.toy.object_size=[3,4]",
                             "data.toy.grid=1", "train.lr=3e-4", "train.warmup_steps=0", "train.schedule=constant",
                             "train.grad_clip=0", "train.betas=[0.9,0.999]", *cfg_overrides])  # Adam at 3e-4
    torch.manual_seed(0)
    wan = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=7,
                                out_channels=3, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    return cfg, FlowNet(wan), Encoders(PixelCodec(), ToyTextEncoder(dim=16))


def _fixed_batch(cfg, n=4):
    from workbench.data import build_dataset, collate
    ds = build_dataset(cfg.data, "train")
    return collate([ds[i] for i in range(n)])


def _distill(method, steps):
    """The loop's update on a fixed batch with the same x1 and t every step; the target theta^- moves with mu = 0.95."""
    return steps_on_batch(method, method.cfg.train, _fixed_batch(method.cfg), steps, lambda i: torch.Generator().manual_seed(0))


def test_ccd_lowers_its_loss_on_a_fixed_batch():
    """Line 9's loss falls as F_theta learns to lead F_theta- by the normalised tangent; the teacher stays put."""
    cfg, net, cond = _tiny(["train.method=ccd", "distill.tangent_warmup=0"])
    method = build_method(cfg, net, cond)
    assert isinstance(method, CCD)
    start = copy.deepcopy(net)
    logs = _distill(method, 200)
    assert logs[0]["loss"] == pytest.approx(1.0, abs=0.01)  # F_theta = F_theta- and ||g|| >> c: loss ~ 1
    assert sum(r["loss"] for r in logs[-20:]) / 20 < 0.1 * logs[0]["loss"]
    for p, q in zip(method.teacher.parameters(), start.parameters()):
        assert p.equal(q)


def test_dcd_lowers_its_loss_on_a_fixed_batch():
    cfg, net, cond = _tiny(["train.method=dcd", "distill.delta_t=0.1"])
    method = build_method(cfg, net, cond)
    assert isinstance(method, DCD)
    logs = _distill(method, 150)
    assert sum(r["loss"] for r in logs[-10:]) / 10 < 0.5 * logs[0]["loss"]


@pytest.mark.parametrize("jvp", ["whole", "finite_difference"])
def test_ccd_loss_agrees_across_jvp_modes(jvp):
    cfg, net, cond = _tiny(["train.method=ccd", "distill.tangent_warmup=0"])
    batch = _fixed_batch(cfg)
    losses = {}
    for mode in ("blockwise", jvp):
        cfg.distill.jvp = mode
        method = build_method(cfg, net, cond)
        step = TrainStep(5, torch.Generator().manual_seed(1), {"model": net}, frozenset({"model"}))
        losses[mode] = method.losses(batch, step).logs["tangent_norm"]
    assert losses[jvp] == pytest.approx(losses["blockwise"], rel=1e-2)  # float32 FD at eps 1e-4: ~0.2% off


def test_ccd_step_equals_algorithm_1_written_out_with_plain_autodiff():
    """The CCD step (block-wise JVP: hand-written Wan block JVP, chunked attention JVP) gives the loss and the
    student gradients of Algorithm 1 lines 5-9 written out here with the computation used before them:
    torch.func.jvp over the whole target network with math SDPA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    cfg, net, cond = _tiny(["train.method=ccd", "distill.tangent_warmup=4"])
    method = build_method(cfg, net, cond)
    assert (cfg.distill.jvp, cfg.distill.jvp_attention) == ("blockwise", "chunked")  # the defaults
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # teacher, target theta^- and student all differ
        for other in (method.teacher, method.target):
            for p in other.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    batch = _fixed_batch(cfg)
    step = TrainStep(2, torch.Generator().manual_seed(1), {"model": net}, frozenset({"model"}))
    loss = method.losses(batch, step).losses["model"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)

    _, x_t, t, c = method.noisy_batch(batch, torch.Generator().manual_seed(1))    # the step's x_t, t
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        dxdt = method.teacher(x_t, t, c)                                           # line 5
        F_target, dF_dt = torch.func.jvp(lambda x, s: method.target(x, s, c), (x_t, t), (dxdt, torch.ones_like(t)))
    te = t.view(-1, 1, 1, 1, 1)
    g_raw = dxdt - F_target - 2 / 4 * te * dF_dt                                   # lines 6-7, r = 2 / 4
    g_t = g_raw / (g_raw.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1) + cfg.distill.tangent_norm_c)   # line 8
    want = (net(x_t, t, c) - F_target - g_t).pow(2).flatten(1).sum(1).mean()     # line 9
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=0)
    for n, p in net.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5 * p.grad.abs().max().item(), msg=n)
