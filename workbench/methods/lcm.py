"""Latent consistency distillation (LCM, Luo et al. 2023), in this project's flow convention (t = 0 data).

On the teacher's grid t_n = shift(n / N) (the sampler's schedule, sample.shift): x_t at t = t_n, the teacher's
one Euler step (with guidance) to s = t_{n-k} is the ODE solver, and the student's consistency value
f_theta(x_t, t) = x_t - t F_theta (Eq. 5) is pulled to the target network's at the solver's point, f_theta-(x_s, s),
by a pseudo-Huber loss. At s = 0, f(x, 0) = x: the boundary condition holds by the parameterisation. Samples
with the `consistency` sampler (sample.sampler).
"""
from __future__ import annotations

from workbench.methods.base import Distillation, LossOut, register
from workbench.methods.parts import LCMSettings, grid_batch, lcm_loss


@register("lcm")
class LCM(Distillation):
    """Its loss and grid are parts (`parts.lcm_loss`, `parts.grid_batch`, settings `lcm:`): OSV's stage 2 reads them."""
    sections = {"lcm": LCMSettings}

    def losses(self, batch, step):
        x_t, t, s, cond = grid_batch(self.encoders, batch, self.cfg.lcm, step.generator, self.cfg.sample.shift)
        loss, _, logs = lcm_loss(step.nets["model"], self.target, self.teacher_velocity, x_t, t, s, cond,
                                 self.cfg.lcm.huber_c)
        return LossOut({"model": loss}, logs)
