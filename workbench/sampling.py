"""Samplers by name, one signature (k-diffusion's style), randomness only from an explicit generator.

    sampler(model, x_BCTHW, cond, timesteps, *, guidance=1.0, null_text=None, generator=None, noise_sampler=None,
            callback=None)

`x_BCTHW` is the noise at timesteps[0] (= 1); `timesteps` falls to 0 (`schedule` makes Wan's shifted grid);
`model(x_t, t, cond) -> F` is any velocity field, teacher or student (a consistency student predicts x0 as
x_t - t F, Eq. 5). A sampler keeps autograd's state: under torch.no_grad it samples, with grad enabled it is
the rollout core that training-time backward simulation differentiates through.
`callback(i, x_t, t_B, v)`, where given, is called after the model's i-th evaluation with the state x_t there, its
times t_B (B,) and the (guided) velocity v: CDM keeps the student's trajectory with it.
"""
from __future__ import annotations

import torch

from workbench.flow import denoise, expand_t, interpolate, shift_timesteps


def schedule(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from 1 (noise) down to 0 (data), uniform then shifted (SD3 / Wan)."""
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps must be in [1, 1000], got {steps}")
    return shift_timesteps(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def guided_velocity(model, x_t, t_B, cond, guidance: float = 1.0, null_text=None) -> torch.Tensor:
    """Classifier-free guidance: v_u + w (v_c - v_u); w = 1 is the plain conditional velocity."""
    if guidance == 1.0:
        return model(x_t, t_B, cond)
    if null_text is None:
        raise ValueError("guidance != 1 needs null_text (the empty caption's tokens)")
    both = model(torch.cat([x_t, x_t]), torch.cat([t_B, t_B]), cond.stacked(cond.with_text(null_text.to(cond.text_BLD))))
    v_c, v_u = both.chunk(2)
    return v_u + guidance * (v_c - v_u)


def euler(model, x_BCTHW, cond, timesteps, *, guidance=1.0, null_text=None, generator=None, noise_sampler=None,
          callback=None):
    """Euler integration of dx/dt = F from timesteps[0] to timesteps[-1] (deterministic)."""
    x = x_BCTHW
    ts = timesteps.to(x.device)
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        t_B = t.expand(x.shape[0])
        v = guided_velocity(model, x, t_B, cond, guidance, null_text)
        if callback is not None:
            callback(i, x, t_B, v)
        x = x + expand_t((t_next - t).expand(x.shape[0]), x) * v
    return x


def consistency(model, x_BCTHW, cond, timesteps, *, guidance=1.0, null_text=None, generator=None,
                noise_sampler=None, callback=None):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): x0_hat = x_t - t F, re-noised to the next time
    with fresh noise (from `noise_sampler(i)`, else drawn from `generator`)."""
    x = x_BCTHW
    ts = timesteps.to(x.device)
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        t_B = t.expand(x.shape[0])
        v = guided_velocity(model, x, t_B, cond, guidance, null_text)
        if callback is not None:
            callback(i, x, t_B, v)
        x = denoise(x, v, t_B)                                                             # Eq. (5)
        if t_next > 0:
            noise = noise_sampler(i) if noise_sampler else torch.randn(x.shape, generator=generator).to(x)
            x = interpolate(x, noise, t_next.expand(x.shape[0]))                           # Eq. (1)
    return x


SAMPLERS = {"euler": euler, "consistency": consistency}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise KeyError(f"sample.sampler: unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
    return SAMPLERS[name]
