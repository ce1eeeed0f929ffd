"""The one rectified-flow convention of the workbench (paper Eq. 1, 2 and 5).

t = 0 is data, t = 1 is noise:  x_t = (1 - t) x0 + t x1,  v = x1 - x0,  x0 = x_t - t v.
Every method and sampler imports these; none re-derives them.
"""
from __future__ import annotations

import torch


def expand_t(t_B: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1, 1) broadcastable against a B,C,T,H,W tensor."""
    return t_B.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
    """Eq. (1): x_t = (1 - t) x0 + t x1."""
    t = expand_t(t_B, x0)
    return (1 - t) * x0 + t * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Eq. (2): the flow-matching target v = x1 - x0."""
    return x1 - x0


def denoise(x_t: torch.Tensor, v: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
    """Eq. (5) with c_skip = 1, c_out = -t: f(x_t, t) = x_t - t F(x_t, t)."""
    return x_t - expand_t(t_B, x_t) * v


def velocity_from_x0(x_t: torch.Tensor, x0_hat: torch.Tensor, t_B: torch.Tensor, t_min: float = 0.05) -> torch.Tensor:
    """Eq. (5) solved for the velocity, F = (x_t - x0_hat) / t, for a net that predicts x0 (JiT's x-prediction,
    Li & He 2025); t is clipped at t_min so that F stays finite near data."""
    return (x_t - x0_hat) / expand_t(t_B.clamp_min(t_min), x_t)


def sample_timesteps(n: int, kind: str = "logit_normal", *, p_mean: float = 0.0, p_std: float = 1.0,
                     generator: torch.Generator | None = None, eps: float = 1e-4) -> torch.Tensor:
    """t in (0, 1): 'uniform', or 'logit_normal' (t = sigmoid(N(p_mean, p_std^2)), Algorithm 1 line 4)."""
    if kind == "uniform":
        t = torch.rand(n, generator=generator)
    elif kind == "logit_normal":
        t = torch.sigmoid(p_mean + p_std * torch.randn(n, generator=generator))
    else:
        raise ValueError(f"timestep sampler must be 'uniform' or 'logit_normal', got {kind!r}")
    return t.clamp(eps, 1 - eps)


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift of SD3 / Wan: t' = s t / (1 + (s - 1) t); s > 1 spends more steps near noise."""
    return shift * t / (1 + (shift - 1) * t)
