"""Phased consistency distillation (PCM, Wang et al. 2024), in this project's flow convention (t = 0 data).

The teacher's grid t_n = n / N is cut into K phases with edges e_j = j / K. For x_t inside phase (e_lo, e_hi], the
student's jump to the phase's lower edge, x_t + (e_lo - t) F_theta(x_t, t) (the flow's DDIM step), is pulled to
the same jump from the teacher's Euler step x_s (s = t_{n-k}, not below e_lo) taken by the online student under
no_grad (the official code keeps no EMA target). A phase's consistency ends at its own edge, not at 0, so the
model samples deterministically with Euler on the K + 1 edges (`euler`, K steps, no shift); one model per K.
The official code's optional adversarial term is not implemented here.
"""
from __future__ import annotations

import torch

from workbench.flow import expand_t, interpolate
from workbench.methods.base import Distillation, LossOut
from workbench.methods.lcm import pseudo_huber


def jump(x, F, t, edge):
    """x_t + (edge - t) F: the flow's step from t straight to the phase edge."""
    return x + expand_t(edge - t, x) * F


def pcm_loss(student, teacher_velocity, x_t, t, s, edge, cond, huber_c: float, target=None):
    """(loss, logs): the student's jump from (x_t, t) against the no_grad jump from the teacher's Euler step of
    `target` (default: the online student itself, as the official code)."""
    with torch.no_grad():
        x_s = x_t + expand_t(s - t, x_t) * teacher_velocity(x_t, t, cond)    # the teacher's Euler step
        target = jump(x_s, (target or student)(x_s, s, cond), s, edge)
    pred = jump(x_t, student(x_t, t, cond), t, edge)
    loss = pseudo_huber(pred, target, huber_c)
    return loss, {"loss": loss.item()}


class PCM(Distillation):
    def __init__(self, cfg, net, encoders):
        if cfg.pcm.target not in ("online", "ema"):
            raise ValueError(f"pcm.target: expected 'online' or 'ema', got {cfg.pcm.target!r}")
        self.uses_target = cfg.pcm.target == "ema"
        super().__init__(cfg, net, encoders)
        c = cfg.pcm
        if c.grid % c.phases:
            raise ValueError(f"pcm.phases: {c.phases} must divide pcm.grid ({c.grid}): phase edges lie on the grid")

    def losses(self, batch, step):
        c, g = self.cfg.pcm, step.generator
        x0, cond = self.encoders.prepare(batch["video"], batch["caption"])
        x1 = torch.randn(x0.shape, generator=g).to(x0)
        per = c.grid // c.phases                                            # grid intervals per phase
        n = torch.randint(1, c.grid + 1, (x0.shape[0],), generator=g)       # t = t_n, in phase ceil(n / per)
        lo = (n - 1) // per * per                                           # the phase's lower edge, in grid units
        t, s, edge = n / c.grid, (n - c.skip).clamp(min=lo) / c.grid, lo / c.grid
        t, s, edge = t.to(x0), s.to(x0), edge.to(x0)
        loss, logs = pcm_loss(step.nets["model"], self.teacher_velocity, interpolate(x0, x1, t), t, s, edge, cond,
                              c.huber_c, target=self.target)
        return LossOut({"model": loss}, logs)
