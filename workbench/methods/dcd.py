"""Discrete-time consistency distillation (DCD), Eq. (3): the Table 2a twin of CCD.

f_theta(x_t, t) is pulled towards f_theta-(x_{t-dt}, t - dt), where x_{t-dt} comes from one Euler step of
the teacher's ODE; that step is the discretisation error CCD avoids.
"""
from __future__ import annotations

import torch

from workbench.flow import denoise
from workbench.methods.base import DistillInputs, Distillation, register
from workbench.methods.parts import teacher_step


def dcd_loss(inputs: DistillInputs):
    """Eq. (3) with d = ||.||^2, w = 1: (loss, F_theta(x_t, t) with its graph, logs)."""
    x_t, t, cond = inputs.x_t, inputs.t, inputs.cond
    with torch.no_grad():
        t_prev = (t - inputs.settings.delta_t).clamp(min=0.0)
        x_prev = teacher_step(inputs.teacher_velocity, x_t, t, t_prev, cond)          # the teacher's Euler step
        f_target = denoise(x_prev, inputs.target(x_prev, t_prev, cond), t_prev)       # f_theta-(x_{t-dt}, t-dt)
    F = inputs.student(x_t, t, cond)
    f = denoise(x_t, F, t)                                                           # f_theta(x_t, t), Eq. (5)
    loss = (f.float() - f_target.float()).pow(2).flatten(1).sum(1).mean()
    return loss, F, {"loss": loss.item()}


@register("dcd")
class DCD(Distillation):
    distill_loss = staticmethod(dcd_loss)
