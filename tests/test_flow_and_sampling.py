import math

import pytest
import torch

from workbench.flow import denoise, expand_t, interpolate, sample_timesteps, shift_timesteps, target_velocity
from workbench.models.wan import Conditioning
from workbench.sampling import SAMPLERS, consistency, euler, get_sampler, guided_velocity, schedule


def test_path_identities():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 2, 2, 4, 4, generator=g), torch.randn(3, 2, 2, 4, 4, generator=g)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = interpolate(x0, x1, t)
    assert torch.equal(xt[0], x0[0]) and torch.allclose(xt[2], x1[2])
    v = target_velocity(x0, x1)
    assert torch.allclose(denoise(xt, v, t), x0, atol=1e-6)  # Eq. (5) recovers x0 with the true velocity


def test_timestep_samplers():
    g = torch.Generator().manual_seed(0)
    u = sample_timesteps(20000, "uniform", generator=g)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    ln = sample_timesteps(20000, "logit_normal", p_mean=-0.6, p_std=1.4, generator=g)
    logit = torch.log(ln / (1 - ln))
    assert abs(logit.mean().item() + 0.6) < 0.05 and abs(logit.std().item() - 1.4) < 0.05
    with pytest.raises(ValueError, match="uniform"):
        sample_timesteps(2, "gauss")


def test_shift_and_grid():
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_timesteps(t, 1.0), t)
    s = shift_timesteps(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and (s >= t).all()
    grid = schedule(4)
    assert grid.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert schedule(4, 3.0).tolist() == pytest.approx(shift_timesteps(torch.linspace(1, 0, 5), 3.0).tolist())


def _cond(b):
    return Conditioning(torch.zeros(b, 1, 1, 1, 1), torch.zeros(b, 1, 1, 1, 1), torch.zeros(b, 1, 1))


def test_euler_exact_for_straight_flow():
    """A field with straight paths (v = x1 - x0 for a fixed x0) is integrated exactly in one step."""
    x0 = torch.full((2, 1, 1, 1, 1), 0.7)
    model = lambda x, t, c: (x - x0) / t.view(-1, 1, 1, 1, 1)  # noqa: E731  (x - x0)/t = x1 - x0 on the path
    noise = torch.randn(2, 1, 1, 1, 1)
    for steps in (1, 3, 25):
        assert torch.allclose(euler(model, noise, _cond(2), schedule(steps)), x0, atol=1e-5)


def test_euler_converges_on_curved_field():
    """dx/dt = x integrates from t=1 back to 0 as x(0) = x(1) e^-1; Euler's error shrinks like 1/steps."""
    model = lambda x, t, c: x  # noqa: E731
    x1 = torch.ones(1, 1, 1, 1, 1)
    errs = [abs(euler(model, x1, _cond(1), schedule(n)).item() - math.exp(-1)) for n in (2, 8, 100)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 3e-3


def _reference_euler(model, x, steps, shift):
    """The sampler before samplers had names: Euler on the shifted uniform grid, written out."""
    ts = shift_timesteps(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + expand_t((t_next - t).expand(x.shape[0]), x) * model(x, t.expand(x.shape[0]), None)
    return x


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (4, 1.0), (4, 3.0), (25, 5.0)])
def test_euler_over_explicit_timesteps_equals_the_shifted_grid_sampler(steps, shift):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 2, 1, 1, 1, generator=g)
    model = lambda x, t, c: torch.sin(3 * x) * w + expand_t(t, x)  # noqa: E731  a curved, time-dependent field
    x1 = torch.randn(3, 2, 2, 2, 2, generator=g)
    assert euler(model, x1, _cond(3), schedule(steps, shift)).equal(_reference_euler(model, x1, steps, shift))


def test_consistency_recovers_x0_of_an_exact_straight_flow_in_one_step():
    """F = (x_t - x0)/t is the exact field of a straight flow to x0: one consistency step lands on x0 (Eq. 5),
    and with more steps every re-noised point lies on a straight path to x0 again."""
    x0 = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    model = lambda x, t, c: (x - x0) / expand_t(t, x)  # noqa: E731
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(consistency(model, noise, _cond(2), schedule(1)), x0)
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(consistency(model, noise, _cond(2), schedule(4), generator=g), x0, rtol=1e-5, atol=1e-5)


def test_consistency_renoises_with_fresh_noise_from_the_noise_sampler():
    """With a field that predicts x0 = 0 everywhere, each step's output is t_next * fresh noise."""
    model = lambda x, t, c: x / expand_t(t, x)  # noqa: E731  x0_hat = x - t F = 0
    fresh = [torch.full((1, 1, 1, 1, 1), float(i + 1)) for i in range(3)]
    seen = []
    step_noise = lambda i: seen.append(i) or fresh[i]  # noqa: E731
    out = consistency(model, torch.ones(1, 1, 1, 1, 1), _cond(1), schedule(3), noise_sampler=step_noise)
    assert seen == [0, 1] and out.item() == 0.0  # no noise after the last step (t_next = 0)


def test_samplers_by_name():
    assert set(SAMPLERS) == {"euler", "consistency"} and get_sampler("euler") is euler
    with pytest.raises(KeyError, match="sample.sampler: unknown sampler 'heun'"):
        get_sampler("heun")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_calls_back_once_a_step_with_one_signature(name):
    """callback(i, x_t, t_B, v) after each model evaluation, and the samples unchanged by it (CDM keeps its rollout
    so): for the straight flow x_t = (1 - t) x0 + t x1, v = x1 - x0 at every step and x_t is on the line."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(2, 3, 2, 4, 4, generator=g), torch.randn(2, 3, 2, 4, 4, generator=g)
    field = lambda x, t, cond: x1 - x0  # noqa: E731
    ts, seen = schedule(3), []
    sampler = get_sampler(name)
    kwargs = {"noise_sampler": lambda i: x1} if name == "consistency" else {}
    out = sampler(field, x1, None, ts, callback=lambda *a: seen.append(a), **kwargs)
    torch.testing.assert_close(out, sampler(field, x1, None, ts, **kwargs))
    assert [i for i, *_ in seen] == [0, 1, 2]
    for i, x, t_B, v in seen:
        assert t_B.shape == (2,) and bool((t_B == ts[i]).all())
        torch.testing.assert_close(v, x1 - x0)
        torch.testing.assert_close(x, interpolate(x0, x1, t_B))


def test_guidance_combines_branches():
    cond = Conditioning(torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1), torch.ones(1, 2, 3))
    model = lambda x, t, c: c.text_BLD.sum(dim=(1, 2)).view(-1, 1, 1, 1, 1) + 0 * x  # noqa: E731
    x = torch.zeros(1, 1, 1, 1, 1)
    v = guided_velocity(model, x, torch.ones(1), cond, guidance=3.0, null_text=torch.zeros(1, 2, 3))
    assert v.item() == pytest.approx(0 + 3.0 * (6 - 0))


@pytest.mark.parametrize("positions", [False, True])
def test_toy_net_tells_positions_apart_only_with_position_channels(positions):
    """Wan's RoPE is relative: on a constant input every token computes the same thing unless the
    absolute (t, y, x) channels are appended (the toy preset); then tokens differ by frame and place."""
    from diffusers import WanTransformer3DModel

    from workbench.models.wan import POSITION_CHANNELS, PRESETS, FlowNet, position_ramps

    torch.manual_seed(0)
    kw = dict(PRESETS["toy"], num_layers=1, in_channels=7 + (POSITION_CHANNELS if positions else 0))
    net = FlowNet(WanTransformer3DModel(**kw), positions=positions).eval()
    x_BCTHW = torch.full((1, 3, 8, 24, 24), 0.3)  # constant everywhere, the mask included
    cond = Conditioning(torch.full_like(x_BCTHW, -0.2), torch.ones(1, 1, 8, 24, 24), torch.zeros(1, 4, 32))
    with torch.no_grad():
        v = net(x_BCTHW, torch.tensor([0.5]), cond)
    ramps = position_ramps(x_BCTHW)
    assert ramps.shape == (1, 3, 8, 24, 24) and ramps[0, 0, 0].eq(-1).all() and ramps[0, 2, :, :, -1].eq(1).all()
    patches = v.unflatten(2, (4, 2)).unflatten(4, (6, 4)).unflatten(6, (6, 4))  # B,C,T',2,H',4,W',4
    spread = (patches - patches[:, :, :1, :, :1, :, :1]).abs().amax()
    assert (spread > 1e-3) if positions else (spread < 1e-5)


def test_x0_predicting_net_is_a_velocity_field():
    """model.prediction = x0: the transformer's output is x0_hat and FlowNet returns F with x_t - t F = x0_hat
    (Eq. 5), t clipped at 0.05; an unknown prediction names the key."""
    from diffusers import WanTransformer3DModel

    from workbench.models.wan import PRESETS, FlowNet, build_flownet

    torch.manual_seed(0)
    net = FlowNet(WanTransformer3DModel(**dict(PRESETS["toy"], num_layers=1)), positions=True, prediction="x0").eval()
    g = torch.Generator().manual_seed(0)
    x_BCTHW = torch.randn(3, 3, 8, 24, 24, generator=g)
    cond = Conditioning(torch.randn(x_BCTHW.shape, generator=g), torch.ones(3, 1, 8, 24, 24), torch.zeros(3, 4, 32))
    t = torch.tensor([0.01, 0.3, 0.9])
    with torch.no_grad():
        f = net(x_BCTHW, t, cond)
        inp, text, _ = net.wan_inputs(x_BCTHW, cond)
        x0_hat = net.transformer(inp, net.net_timestep(t), text, return_dict=False)[0]
    torch.testing.assert_close(denoise(x_BCTHW, f, t)[1:], x0_hat[1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f[0], (x_BCTHW[0] - x0_hat[0]) / 0.05)   # t = 0.01 < 0.05: clipped
    with pytest.raises(ValueError, match="model.prediction"):
        build_flownet("toy", prediction="epsilon")


@pytest.mark.parametrize("name", ["euler", "consistency"])
def test_samplers_are_a_differentiable_rollout_with_grad_on(name):
    """Backward simulation differentiates through the student's own rollout: with grad enabled the sampler keeps
    the graph (d x0 / d w of a linear field matches finite differences); under no_grad it keeps none."""
    w = torch.tensor(0.7, requires_grad=True)
    model = lambda x, t, c: w * x  # noqa: E731
    x1 = torch.ones(1, 1, 1, 1, 1)
    fresh = lambda i: torch.full_like(x1, 0.5)  # noqa: E731
    out = get_sampler(name)(model, x1, _cond(1), schedule(3), noise_sampler=fresh).sum()
    (grad,) = torch.autograd.grad(out, w)
    with torch.no_grad():
        eps = 1e-3
        f = lambda v: get_sampler(name)(lambda x, t, c: v * x, x1, _cond(1), schedule(3), noise_sampler=fresh).sum()  # noqa: E731
        assert grad.item() == pytest.approx(((f(0.7 + eps) - f(0.7 - eps)) / (2 * eps)).item(), rel=1e-3)
        assert not get_sampler(name)(model, x1, _cond(1), schedule(3), noise_sampler=fresh).requires_grad
