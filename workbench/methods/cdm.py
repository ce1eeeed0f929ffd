"""Continuous-time distribution matching (CDM; byliutao/cdm, arXiv 2605.06376), in this project's flow convention
(t = 0 data, t = 1 noise). Data-free: the batch's clips give only the conditioning (first frame, caption) and shapes.

Per batch (scripts/train.py): the student rolls out from noise under no_grad, deterministic Euler on a random-length
continuous schedule ([1] + sorted descending U(sigma_lo, sigma_hi)^(n-1), then 0; n ~ U{1..max_steps}), keeping x_t,
t, v and x0_hat at every point. One trajectory index per sample is shared by all branches (share_latent_indices, the
SD3 preset). The fake teacher ("FT", a trainable copy of the teacher) takes a flow-matching step on the rollout's
detached x0_hat at that index (x0_source "x0_next": all_x0[idx + 1] is the prediction made at x_t[idx]), and after
each FT update the student is EMA-merged into it (ema_from_student). Every `update_ratio`-th step the student takes
one step on the sum of (cdm/training/losses.py):
  CA   CFG augmentation at the trajectory point: the teacher's conditional and null-text x0 at x0_S re-noised to
       tau ~ U[0, t], pushed by g (x0_c - x0_u) / max(mean|x0_c - x0_S|, norm_min)      (compute_cfg_loss)
  DM   on-trajectory distribution matching: teacher (no CFG) and FT at x0_S re-noised to tau ~ U[t_min, t_max],
       pushed by (x0_real - x0_fake) / max(mean|x0_real - x0_S|, norm_min)             (compute_dm_loss)
  CDM  off-trajectory: x_sigma = x_t + (sigma - t) v_traj at sigma ~ U[t_min, t_max] ("trajectory_eps"), the
       student's own x0 there re-noised at an independent sigma' with fresh noise ("student_pred",
       "fresh_independent"), same DM loss.
Each push is a target: MSE(x0_S, sg(x0_S + push)), whose gradient moves x0_S along +push (towards the real
teacher's estimate, away from the fake's: DMD2's x0_S - (x0_fake - x0_real) / norm).
At sample-sheet steps (step.snapshot) it returns the student's x0 at the trajectory point with the real score's
and the fake teacher's x0 at it re-noised (DMD2's collapse check; the loop writes samples/estimates-*.png), drawn
after the losses so a snapshot changes nothing that is trained.
The loop computes every due role's loss before any update, so the student's DM step reads the FT before that step's
FT update, and the FT merge reads the student after its update (the reference updates the FT first).
Samples with plain Euler (sample.sampler: euler).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.flow import denoise, expand_t, interpolate, shift_timesteps
from workbench.methods.base import Distillation, LossOut, Role, register
from workbench.methods.parts import dm_loss
from workbench.models.ema import ema_update, trainable_copy
from workbench.sampling import euler


@dataclass
class CDMSettings:
    """Continuous-time distribution matching (byliutao/cdm: scripts/train.py, cdm/training/losses.py; defaults from
    config/config.py, SD3 preset where it overrides): a random-length continuous student rollout, a fake teacher
    trained on its detached x0 and merged with the student, CFG augmentation + on- and off-trajectory DM."""
    update_ratio: int = 5            # one student step per 5 fake-teacher steps (student.update_ratio; SD3 preset 2)
    fake_lr: float = 5.0e-6          # the fake teacher's lr (fake_teacher.full_learning_rate, SD3; 0 = train.lr)
    fake_ema_decay: float = 0.999    # FT <- student EMA merge after each FT step (fake_teacher.ema_from_student_decay)
    min_steps: int = 1               # rollout length n ~ U{min_steps..max_steps} (sample.random_sigma_num_steps_min)
    max_steps: int = 28              # (sample.random_sigma_num_steps_max)
    sigma_lo: float = 0.25           # inner rollout times ~ U(sigma_lo, sigma_hi), sorted descending (random_sigma_min)
    sigma_hi: float = 0.95           # (random_sigma_max)
    t_min: float = 0.02              # every sampled sigma is clamped to [t_min, t_max] (sigma_min, sigma_max)
    t_max: float = 0.98
    guidance: float = 7.0            # g of CFG augmentation (loss.cfg.guidance_scale); 0 = CA off
    norm_min: float = 0.1            # floor of the per-sample normaliser of every push (norm_clip_min)
    ca_weight: float = 1.0           # loss.cfg.weight
    dm_weight: float = 1.0           # loss.ddm.weight (on-trajectory DM)
    cdm_weight: float = 1.0          # loss.cdm.weight (off-trajectory DM)
    RANGES = {"update_ratio": (1, None), "fake_lr": (0, None), "fake_ema_decay": (0, 1), "min_steps": (1, None),
              "max_steps": (1, 1000), "sigma_lo": (0, 1), "sigma_hi": (0, 1), "t_min": (0, 1), "t_max": (0, 1),
              "guidance": (0, None), "norm_min": (0, None), "ca_weight": (0, None), "dm_weight": (0, None),
              "cdm_weight": (0, None)}

    def problems(self) -> dict[str, str]:
        if not self.min_steps <= self.max_steps:
            return {"min_steps": f"{self.min_steps} must not exceed cdm.max_steps ({self.max_steps})"}
        if not self.sigma_lo <= self.sigma_hi:
            return {"sigma_lo": f"{self.sigma_lo} must not exceed cdm.sigma_hi ({self.sigma_hi})"}
        return {}


def fake_teacher_loss(fake, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
    """Flow matching on detached samples: ||v_fake(x_sigma, sigma) - (noise - sg(x0))||^2 (compute_fake_teacher_
    diffusion_loss)."""
    x0 = x0.detach()
    return ((fake(interpolate(x0, noise, sigma), sigma, cond).float() - (noise - x0).float()) ** 2).mean()


def random_schedule(c, generator: torch.Generator, shift: float = 1.0) -> torch.Tensor:
    """n + 1 times: [1] + n - 1 sorted descending U(sigma_lo, sigma_hi) + [0], n ~ U{min_steps..max_steps}
    (random_sigma_schedule); the sampler's shift is applied as the reference's scheduler does to given sigmas."""
    n = int(torch.randint(c.min_steps, c.max_steps + 1, (1,), generator=generator))
    inner = c.sigma_lo + (c.sigma_hi - c.sigma_lo) * torch.rand(n - 1, generator=generator, dtype=torch.float64)
    ts = torch.cat([torch.ones(1, dtype=torch.float64), inner.sort(descending=True).values,
                    torch.zeros(1, dtype=torch.float64)])
    return shift_timesteps(ts, shift).float()


@dataclass
class Rollout:
    """The student's no_grad Euler trajectory: xs (n + 1, B,C,T,H,W) at times ts (n + 1,), velocities vs and
    x0 estimates x0s = xs - ts vs at the first n points."""
    ts: torch.Tensor
    xs: list[torch.Tensor]
    vs: list[torch.Tensor]
    x0s: list[torch.Tensor]

    def at(self, idx: torch.Tensor):
        """Per-sample (x_t, t, v, x0_hat) at trajectory indices idx (B,)."""
        b = range(len(idx))
        pick = lambda seq: torch.stack([seq[int(i)][j] for j, i in zip(b, idx)])  # noqa: E731
        return pick(self.xs), self.ts[idx].to(self.xs[0]), pick(self.vs), pick(self.x0s)


@torch.no_grad()
def rollout(student, noise: torch.Tensor, cond, ts: torch.Tensor) -> Rollout:
    """Deterministic Euler (sampling.euler) with the student from noise at ts[0] = 1 to ts[-1] = 0, keeping every
    point through the sampler's callback."""
    traj = Rollout(ts, [], [], [])

    def keep(i, x, t_B, v):
        traj.xs.append(x)
        traj.vs.append(v)
        traj.x0s.append(denoise(x, v, t_B))

    traj.xs.append(euler(student, noise, cond, ts, callback=keep))
    return traj


@register("cdm")
class CDM(Distillation):
    uses_target = False                                   # no consistency target; the exported EMA is train.ema_decay
    sections = {"cdm": CDMSettings}

    def __init__(self, cfg, net, encoders):
        super().__init__(cfg, net, encoders)
        self.fake = trainable_copy(self.teacher).float()                  # FT starts as the teacher, in fp32

    def roles(self):
        c, tc = self.cfg.cdm, self.cfg.train
        # "model" first: the loop steps roles in declared order, the student's loss reads the FT (under no_grad).
        return {"model": Role(self.net, ema=tc.ema_decay, export=True, every=c.update_ratio, offset=c.update_ratio - 1),
                "fake": Role(self.fake, lr=c.fake_lr or None)}

    def _uniform(self, n: int, g: torch.Generator, like: torch.Tensor, upper: torch.Tensor | float = 1.0):
        """U[0, upper) clamped to [t_min, t_max] (sample_sigmas: "uniform", or "uniform_capped" with an upper bound)."""
        c = self.cfg.cdm
        return (torch.rand(n, generator=g).to(like) * upper).clamp(c.t_min, c.t_max)

    def _x0(self, net, x0_base, sigma, noise, cond):
        """x0 estimate of `net` at x0_base (detached) re-noised to sigma with `noise`."""
        x = interpolate(x0_base.detach(), noise, sigma)
        return denoise(x, net(x, sigma, cond), sigma)

    def losses(self, batch, step):
        c, g, student, fake = self.cfg.cdm, step.generator, step.nets["model"], step.nets["fake"]
        x0_real_data, cond = self.encoders.prepare(batch["video"], batch["caption"])   # only cond and shapes are used
        B, shape = x0_real_data.shape[0], x0_real_data.shape
        randn = lambda: torch.randn(shape, generator=g).to(x0_real_data)  # noqa: E731
        ts = random_schedule(c, g, self.cfg.sample.shift)
        traj = rollout(student, randn(), cond, ts)
        n = len(ts) - 1
        idx = torch.randint(0, n, (B,), generator=g)                     # one index per sample, shared by all branches
        x_t, t, v_traj, x0_next = traj.at(idx)

        sigma_ft = self._uniform(B, g, x_t)                              # 2) FT flow matching on detached x0_next
        loss_fake = fake_teacher_loss(fake, x0_next, randn(), sigma_ft, cond)
        logs = {"loss_fake": loss_fake.item(), "rollout_steps": float(n),
                "x0_rollout_mean": traj.xs[-1].mean().item(), "x0_rollout_std": traj.xs[-1].std().item()}
        if "model" not in step.due:
            images = self.estimates(fake, x0_next, self._uniform(B, g, x_t), randn(), cond) if step.snapshot else {}
            return LossOut({"fake": loss_fake}, logs, images)

        # 3) the student: CA and DM at the trajectory point (one forward serves both), CDM off the trajectory
        x0_s = denoise(x_t, student(x_t, t, cond), t)
        total = x0_s.new_zeros(())
        with torch.no_grad():
            if c.guidance:                                               # CA, tau ~ U[0, t] ("uniform_capped")
                tau = self._uniform(B, g, x_t, upper=t)
                x_tau = interpolate(x0_s.detach(), randn(), tau)
                null = cond.with_text(self.encoders.null_text(B).to(cond.text_BLD))
                v_c, v_u = self.teacher(torch.cat([x_tau, x_tau]), torch.cat([tau, tau]), cond.stacked(null)).chunk(2)
                x0_c, x0_u = denoise(x_tau, v_c, tau), denoise(x_tau, v_u, tau)
            tau, noise = self._uniform(B, g, x_t), randn()               # DM, tau ~ U[t_min, t_max]
            x0_real, x0_fake = self._x0(self.teacher, x0_s, tau, noise, cond), self._x0(fake, x0_s, tau, noise, cond)
        if c.guidance:
            l_ca, _, n_ca = dm_loss(x0_s, c.guidance * (x0_c - x0_u), x0_c, c.norm_min)   # CFG augmentation
            total = total + c.ca_weight * l_ca
            logs.update({"loss_ca": l_ca.item(), "norm_ca": n_ca.mean().item()})
        l_dm, _, n_dm = dm_loss(x0_s, x0_real - x0_fake, x0_real, c.norm_min)

        sigma = self._uniform(B, g, x_t)                                 # CDM: extrapolate along v_traj to sigma
        x_sigma = x_t + expand_t(sigma - t, x_t) * v_traj
        x0_off = denoise(x_sigma, student(x_sigma, sigma, cond), sigma)
        with torch.no_grad():
            sigma2, noise = self._uniform(B, g, x_t), randn()            # fresh_independent sigma' and noise
            x0_real2, x0_fake2 = (self._x0(self.teacher, x0_off, sigma2, noise, cond),
                                  self._x0(fake, x0_off, sigma2, noise, cond))
        l_cdm, _, n_cdm = dm_loss(x0_off, x0_real2 - x0_fake2, x0_real2, c.norm_min)
        total = total + c.dm_weight * l_dm + c.cdm_weight * l_cdm
        logs.update({"loss": total.item(), "loss_dm": l_dm.item(), "loss_cdm": l_cdm.item(),
                     "norm_dm": n_dm.mean().item(), "norm_cdm": n_cdm.mean().item(),
                     "x0_student_mean": x0_s.mean().item(), "x0_student_std": x0_s.std().item(),
                     "x0_real_fake_gap": (x0_real - x0_fake).abs().mean().item()})
        images = ({"student x0": x0_s.detach(), "real score x0": x0_real, "fake teacher x0": x0_fake}
                  if step.snapshot else {})
        return LossOut({"model": total, "fake": loss_fake}, logs, images)

    @torch.no_grad()
    def estimates(self, fake, x0_student, tau, noise, cond) -> dict[str, torch.Tensor]:
        """The student's x0 and the real score's and fake teacher's x0 at it re-noised to tau (as the DM branch)."""
        return {"student x0": x0_student, "real score x0": self._x0(self.teacher, x0_student, tau, noise, cond),
                "fake teacher x0": self._x0(fake, x0_student, tau, noise, cond)}

    def after_update(self, step):
        if "fake" in step.due:                                          # FT <- student merge after each FT update
            ema_update(step.nets["fake"], step.nets["model"], self.cfg.cdm.fake_ema_decay)
