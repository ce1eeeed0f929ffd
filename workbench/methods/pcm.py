"""Phased consistency distillation (PCM, Wang et al. 2024), in this project's flow convention (t = 0 data).

The teacher's grid t_n = shift(n / N) (the sampler's schedule, sample.shift) is cut into K phases with edges
e_j = shift(j / K). For x_t inside phase (e_lo, e_hi], the student's jump to the phase's lower edge,
x_t + (e_lo - t) F_theta(x_t, t) (the flow's DDIM step), is pulled to the same jump from the teacher's Euler step
x_s (s = t_{n-k}, not below e_lo) taken by the online student under no_grad (the official code keeps no EMA
target; pcm.target: ema uses one), by pseudo-Huber or L2 (pcm.loss, the official code's loss_type). A phase's
consistency ends at its own edge, not at 0, so the model samples deterministically with Euler on the K + 1 edges
(`euler`, K steps: sampling.schedule(K, sample.shift) is the edges); one model per K.
pcm.adversarial adds the official consistency-GAN (train_pcm_lora_sd3_adv.py, discriminator_sd3.py): the jump
(fake) and its target (real) are re-noised inside the phase and read by the frozen teacher's transformer blocks,
one trainable head per block, hinge losses. The official code alternates G and D steps; here both step every step,
as DA's, so the student keeps the CCD budget of updates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn.functional import mse_loss

from workbench.flow import expand_t, interpolate, shift_timesteps
from workbench.methods.base import Distillation, LossOut, Role, register
from workbench.methods.parts import BlockHeads, hinge_discriminator, hinge_generator, pseudo_huber, teacher_step
from workbench.models.wan import block_features


@dataclass
class PCMSettings:
    """Phased consistency (Wang et al. 2024; the official SD3 flow-matching code): K phases with edges on the
    teacher's grid, consistency within a phase to its lower edge, the online student (no_grad) as the target."""
    phases: int = 4                  # K; the model samples with Euler on the K + 1 phase edges (one model per K)
    grid: int = 48                   # N points of the teacher's schedule; K must divide N (48: K = 1, 2, 3, 4, 6, 8)
    skip: int = 1                    # solver step in grid intervals (not across a phase edge)
    loss: Literal["huber", "l2"] = "huber"  # "huber" (pseudo-Huber with huber_c, the official default) or "l2" (MSE)
    huber_c: float = 0.001           # pseudo-Huber c (0 = L1-like)
    target: Literal["online", "ema"] = "online"  # "online": the student under no_grad (the official code); "ema": distill.target_decay
    adversarial: bool = False        # the official consistency-GAN: heads on the frozen teacher's block features
    adv_weight: float = 0.1          # its generator weight (the official SD3 run.sh)
    adv_lr: float = 1.0e-5           # its heads' learning rate (run.sh)
    adv_blocks: tuple[int, ...] = ()  # teacher blocks read, one head each (() = every block, as the official code)
    adv_head_width: int = 64
    RANGES = {"phases": (1, None), "grid": (1, 1000), "skip": (1, None), "huber_c": (0, None), "adv_weight": (0, None),
              "adv_lr": (0, None), "adv_head_width": (1, None)}

    def problems(self) -> dict[str, str]:
        if self.grid % self.phases:
            return {"phases": f"{self.phases} must divide pcm.grid ({self.grid}): phase edges lie on the grid"}
        return {}


def jump(x, F, t, edge):
    """x_t + (edge - t) F: the flow's step from t straight to the phase edge."""
    return x + expand_t(edge - t, x) * F


def consistency_distance(kind: str, huber_c: float):
    """distance(a, b) -> scalar, the official code's loss_type (pcm.loss): "huber" (pseudo-Huber with c) or "l2" (MSE)."""
    return {"huber": lambda a, b: pseudo_huber(a, b, huber_c), "l2": lambda a, b: mse_loss(a.float(), b.float())}[kind]


def phase_times(n: torch.Tensor, c, shift: float = 1.0):
    """(t, s, edge) for grid indices n (B,) in 1..N: t = t_n, the solver's s = t_{n-skip} not below the phase's lower
    edge, that edge; every time shift(index / N), on the sampler's schedule."""
    per = c.grid // c.phases                                            # grid intervals per phase
    lo = (n - 1) // per * per                                           # the phase's lower edge, in grid units
    return tuple(shift_timesteps(m / c.grid, shift) for m in (n, (n - c.skip).clamp(min=lo), lo))


def pcm_loss(student, teacher_velocity, x_t, t, s, edge, cond, distance, target=None):
    """(loss, the student's jump with its graph, the target jump, logs): distance(the student's jump from (x_t, t),
    the no_grad jump from the teacher's Euler step of `target` (default: the online student, as the official code))."""
    with torch.no_grad():
        x_s = teacher_step(teacher_velocity, x_t, t, s, cond)               # the teacher's Euler step
        target_jump = jump(x_s, (target or student)(x_s, s, cond), s, edge)
    pred = jump(x_t, student(x_t, t, cond), t, edge)
    loss = distance(pred, target_jump)
    return loss, pred, target_jump, {"loss": loss.item()}


def renoise_in_phase(x_edge, noise, edge, sigma):
    """((1 - sigma) x + (sigma - edge) noise) / (1 - edge): a point at the phase edge taken up to sigma in the phase
    (the official code's re-noising of real and fake for the discriminator)."""
    return (expand_t(1 - sigma, x_edge) * x_edge + expand_t(sigma - edge, x_edge) * noise) / expand_t(1 - edge, x_edge)


@register("pcm")
class PCM(Distillation):
    sections = {"pcm": PCMSettings}

    def __init__(self, cfg, net, encoders):
        self.uses_target = cfg.pcm.target == "ema"
        super().__init__(cfg, net, encoders)
        c = cfg.pcm
        self.distance = consistency_distance(c.loss, c.huber_c)
        depth = len(net.transformer.blocks)
        self.blocks = tuple(c.adv_blocks) or tuple(range(depth))
        if not all(0 <= b < depth for b in self.blocks):
            raise ValueError(f"pcm.adv_blocks: {list(c.adv_blocks)} must be blocks 0..{depth - 1} of the transformer")
        self.heads = BlockHeads(net, len(self.blocks), c.adv_head_width) if c.adversarial else None

    def roles(self):
        extra = {"disc": Role(self.heads, lr=self.cfg.pcm.adv_lr)} if self.heads is not None else {}
        return {**super().roles(), **extra}

    def losses(self, batch, step):
        c, g = self.cfg.pcm, step.generator
        x0, cond = self.encoders.prepare(batch["video"], batch["caption"])
        x1 = torch.randn(x0.shape, generator=g).to(x0)
        shift = self.cfg.sample.shift
        n = torch.randint(1, c.grid + 1, (x0.shape[0],), generator=g)       # t = t_n, in phase ceil(n K / N)
        t, s, edge = (x.to(x0) for x in phase_times(n, c, shift))
        loss, pred, target, logs = pcm_loss(step.nets["model"], self.teacher_velocity, interpolate(x0, x1, t), t, s,
                                            edge, cond, self.distance, target=self.target)
        if self.heads is None:
            return LossOut({"model": loss}, logs)
        lo = (n - 1) // (c.grid // c.phases) / c.phases                    # the lower edge before the shift
        sigma = shift_timesteps(lo + torch.rand(lo.shape, generator=g) / c.phases, shift).to(x0)   # in the phase
        noise = torch.randn(x0.shape, generator=g).to(x0)
        fake = self.teacher_blocks(renoise_in_phase(pred, noise, edge, sigma), sigma, cond)
        with torch.no_grad():                                              # "real" is the consistency target
            real = self.teacher_blocks(renoise_in_phase(target, noise, edge, sigma), sigma, cond)
        adv_g = hinge_generator(step.nets["disc"](fake))
        loss_d = hinge_discriminator(step.nets["disc"](real), step.nets["disc"]([f.detach() for f in fake]))
        logs.update({"loss_consistency": loss.item(), "loss_adv_g": adv_g.item(), "loss_d": loss_d.item()})
        total = loss + c.adv_weight * adv_g
        logs["loss"] = total.item()
        return LossOut({"model": total, "disc": loss_d}, logs)

    def teacher_blocks(self, x_t, t, cond) -> list[torch.Tensor]:
        """The frozen teacher's block features at (x_t, t) in x_t's dtype (the teacher may be bf16:
        distill.teacher_dtype)."""
        return [f.to(x_t.dtype) for f in block_features(self.teacher, x_t, t, cond, self.blocks)]
