"""Latent consistency distillation (LCM, Luo et al. 2023), in this project's flow convention (t = 0 data).

On the teacher's grid t_n = shift(n / N) (the sampler's schedule, sample.shift): x_t at t = t_n, the teacher's
one Euler step (with guidance) to s = t_{n-k} is the ODE solver, and the student's consistency value
f_theta(x_t, t) = x_t - t F_theta (Eq. 5) is pulled to the target network's at the solver's point, f_theta-(x_s, s),
by a pseudo-Huber loss. At s = 0, f(x, 0) = x: the boundary condition holds by the parameterisation. Samples
with the `consistency` sampler (sample.sampler).
"""
from __future__ import annotations

import torch

from workbench.flow import denoise, expand_t, interpolate, shift_timesteps
from workbench.methods.base import Distillation, LossOut


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """mean of sqrt((a - b)^2 + c^2) - c over elements (diffusers' LCM loss); c = 0 is the mean absolute error."""
    return (torch.sqrt((a.float() - b.float()) ** 2 + c ** 2) - c).mean()


def lcm_loss(student, target, teacher_velocity, x_t, t, s, cond, huber_c: float):
    """(loss, f_theta(x_t, t) = x0_hat with its graph, logs) on latents x_t (B,C,T,H,W) at grid times t (B,) with
    solver targets at s < t."""
    with torch.no_grad():
        x_s = x_t + expand_t(s - t, x_t) * teacher_velocity(x_t, t, cond)   # the teacher's Euler step (ODE solver)
        f_target = denoise(x_s, target(x_s, s, cond), s)                     # f_theta-(x_s, s)
    f = denoise(x_t, student(x_t, t, cond), t)                               # f_theta(x_t, t)
    loss = pseudo_huber(f, f_target, huber_c)
    return loss, f, {"loss": loss.item()}


def grid_batch(encoders, batch: dict, c, generator: torch.Generator, shift: float = 1.0):
    """(x_t, t, s, cond): x0 ~ D, t = t_n on the grid of c.grid points shifted as the sampler's schedule
    (sampling.schedule), s = t_{n - c.skip}; latents B,C,T,H,W."""
    x0, cond = encoders.prepare(batch["video"], batch["caption"])
    x1 = torch.randn(x0.shape, generator=generator).to(x0)
    n = torch.randint(c.skip, c.grid + 1, (x0.shape[0],), generator=generator)   # grid index of t
    t, s = (shift_timesteps(m / c.grid, shift).to(x0) for m in (n, n - c.skip))
    return interpolate(x0, x1, t), t, s, cond


class LCM(Distillation):
    def losses(self, batch, step):
        x_t, t, s, cond = grid_batch(self.encoders, batch, self.cfg.lcm, step.generator, self.cfg.sample.shift)
        loss, _, logs = lcm_loss(step.nets["model"], self.target, self.teacher_velocity, x_t, t, s, cond,
                                 self.cfg.lcm.huber_c)
        return LossOut({"model": loss}, logs)
