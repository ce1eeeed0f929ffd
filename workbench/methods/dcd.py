"""Discrete-time consistency distillation (DCD), Eq. (3): the Table 2a twin of CCD.

f_theta(x_t, t) is pulled towards f_theta-(x_{t-dt}, t - dt), where x_{t-dt} comes from one Euler step of
the teacher's ODE; that step is the discretisation error CCD avoids.
"""
from __future__ import annotations

import torch

from workbench.flow import denoise, expand_t
from workbench.methods.base import Distillation


class DCD(Distillation):
    def student_loss(self, x_t, t, cond, step):
        dt = self.cfg.distill.delta_t
        with torch.no_grad():
            t_prev = (t - dt).clamp(min=0.0)
            x_prev = x_t + expand_t(t_prev - t, x_t) * self.teacher_velocity(x_t, t, cond)  # Euler teacher step
            target = denoise(x_prev, self.ema(x_prev, t_prev, cond), t_prev)              # f_theta-(x_{t-dt}, t-dt)
        F = self.net(x_t, t, cond)
        f = denoise(x_t, F, t)                                                             # f_theta(x_t, t), Eq. (5)
        loss = (f.float() - target.float()).pow(2).flatten(1).sum(1).mean()                # Eq. (3), d = ||.||^2, w = 1
        return loss, F, {"loss": loss.item()}
