"""Discrete-time consistency distillation (DCD), Eq. (3): the Table 2a twin of CCD.

f_theta(x_t, t) is pulled towards f_theta-(x_{t-dt}, t - dt), where x_{t-dt} comes from one Euler step of
the teacher's ODE; that step is the discretisation error CCD avoids.
"""
from __future__ import annotations

import torch

from workbench.flow import denoise, expand_t
from workbench.methods.base import Distillation


def dcd_loss(student, target, teacher_velocity, x_t, t, cond, step: int, d):
    """Eq. (3) with d = ||.||^2, w = 1: (loss, F_theta(x_t, t) with its graph, logs)."""
    with torch.no_grad():
        t_prev = (t - d.delta_t).clamp(min=0.0)
        x_prev = x_t + expand_t(t_prev - t, x_t) * teacher_velocity(x_t, t, cond)    # the teacher's Euler step
        f_target = denoise(x_prev, target(x_prev, t_prev, cond), t_prev)              # f_theta-(x_{t-dt}, t-dt)
    F = student(x_t, t, cond)
    f = denoise(x_t, F, t)                                                           # f_theta(x_t, t), Eq. (5)
    loss = (f.float() - f_target.float()).pow(2).flatten(1).sum(1).mean()
    return loss, F, {"loss": loss.item()}


class DCD(Distillation):
    distill_loss = staticmethod(dcd_loss)
