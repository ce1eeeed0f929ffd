"""Pure samplers: same signature, randomness only from an explicit torch.Generator.

    sample(model, cond, shape, steps, generator=g, shift=1.0, guidance=1.0, null_text=None)
`model(x_t, t, cond) -> v` is any velocity field (teacher or student: a consistency student is
sampled the same way, f = x_t - t F at each step, Eq. 5).
"""
from __future__ import annotations

import torch

from workbench.flow import euler_grid, expand_t


def guided_velocity(model, x_t, t_B, cond, guidance: float = 1.0, null_text=None) -> torch.Tensor:
    """Classifier-free guidance: v_u + w (v_c - v_u); w = 1 is the plain conditional velocity."""
    if guidance == 1.0:
        return model(x_t, t_B, cond)
    if null_text is None:
        raise ValueError("guidance != 1 needs null_text (the empty caption's tokens)")
    both = model(torch.cat([x_t, x_t]), torch.cat([t_B, t_B]),
                 _stack(cond, cond.with_text(null_text.to(cond.text_BLD))))
    v_c, v_u = both.chunk(2)
    return v_u + guidance * (v_c - v_u)


def _stack(a, b):
    from workbench.models.wan import Cond
    cat = lambda x, y: None if x is None else torch.cat([x, y])  # noqa: E731
    return Cond(cat(a.first_BCTHW, b.first_BCTHW), cat(a.mask_BMTHW, b.mask_BMTHW),
                cat(a.text_BLD, b.text_BLD), cat(a.image_BND, b.image_BND))


@torch.no_grad()
def euler(model, noise_BCTHW: torch.Tensor, cond, steps: int, *, shift: float = 1.0, guidance: float = 1.0,
          null_text=None) -> torch.Tensor:
    """Euler integration of dx/dt = v from t = 1 (noise) to t = 0 (data) in `steps` steps."""
    x = noise_BCTHW
    ts = euler_grid(steps, shift).to(x.device)
    for t, t_next in zip(ts[:-1], ts[1:]):
        t_B = t.expand(x.shape[0])
        v = guided_velocity(model, x, t_B, cond, guidance, null_text)
        x = x + expand_t((t_next - t).expand(x.shape[0]), x) * v
    return x


def sample(model, cond, shape_BCTHW: tuple[int, ...], steps: int, *, generator: torch.Generator,
           shift: float = 1.0, guidance: float = 1.0, null_text=None) -> torch.Tensor:
    """Draw x1 ~ N(0, I) from `generator`, then integrate with `euler`."""
    noise = torch.randn(shape_BCTHW, generator=generator).to(cond.first_BCTHW.device)
    return euler(model, noise, cond, steps, shift=shift, guidance=guidance, null_text=null_text)
