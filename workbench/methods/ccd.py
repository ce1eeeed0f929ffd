"""Continuous-time consistency distillation (CCD): Algorithm 1 with the tangent of Eq. (6)-(9).

Parameterisation f(x_t, t) = x_t - t F(x_t, t) (Eq. 5), so the student samples with the plain Euler sampler.
"""
from __future__ import annotations

import torch

from workbench.config import blockwise_problem
from workbench.flow import expand_t
from workbench.methods.base import DistillInputs, Distillation, register
from workbench.models.jvp import velocity_and_tangent


def tangent_warmup(step: int, warmup_steps: int) -> float:
    """r = min(1, Iters / H) (Algorithm 1 line 6); H = 0 means no warmup."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def ccd_tangent(dxdt: torch.Tensor, F_target: torch.Tensor, dF_dt: torch.Tensor, t_B: torch.Tensor, r: float):
    """g = dx_t/dt - F_theta-(x_t, t) - r t sg(dF_theta-/dt) (Algorithm 1 line 7, Eq. 9)."""
    return dxdt - F_target - r * expand_t(t_B, dxdt) * dF_dt.detach()


def normalize_tangent(g_BCTHW: torch.Tensor, c: float) -> torch.Tensor:
    """g / (||g|| + c), the norm taken per sample (Algorithm 1 line 8)."""
    norm = g_BCTHW.flatten(1).norm(dim=1)
    return g_BCTHW / expand_t(norm + c, g_BCTHW)


def ccd_loss(inputs: DistillInputs):
    """Algorithm 1 lines 5-9 on latents x_t (B,C,T,H,W) at times t (B,): (loss, F_theta with its graph, logs)."""
    x_t, t, cond, d = inputs.x_t, inputs.t, inputs.cond, inputs.settings
    with torch.no_grad():
        dxdt = inputs.teacher_velocity(x_t, t, cond)                               # line 5
        F_target, dF_dt = velocity_and_tangent(inputs.target, x_t, t, cond, dxdt, mode=d.jvp,  # Eq. (8), (14)
                                               attention=d.jvp_attention, chunk=d.jvp_chunk, fd_eps=d.fd_eps)
        r = tangent_warmup(inputs.step, d.tangent_warmup)                          # line 6
        g_raw = ccd_tangent(dxdt, F_target, dF_dt, t, r)                           # line 7
        g = normalize_tangent(g_raw, d.tangent_norm_c)                             # line 8
    F = inputs.student(x_t, t, cond)
    loss = (F.float() - F_target.float() - g.float()).pow(2).flatten(1).sum(1).mean()  # line 9, Eq. (7)
    logs = {"loss": loss.item(), "r": r, "tangent_norm": g_raw.flatten(1).norm(dim=1).mean().item(),
            "t_dFdt_norm": (expand_t(t, dF_dt) * dF_dt).flatten(1).norm(dim=1).mean().item()}
    return loss, F, logs


@register("ccd")
class CCD(Distillation):
    distill_loss = staticmethod(ccd_loss)

    @classmethod
    def config_problems(cls, cfg):
        return blockwise_problem(cfg)                                              # dF/dt's JVP fits the net
