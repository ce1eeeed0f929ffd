"""Flow matching (Eq. 2): the teacher's objective, ||v - v_theta(x_t, t)||^2."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.config import Timesteps
from workbench.flow import interpolate, sample_timesteps, target_velocity
from workbench.methods.base import LossOut, Method, register


@dataclass
class FlowMatchingSettings:
    """The teacher's training times and caption dropout."""
    timesteps: Timesteps = "logit_normal"  # "uniform" or "logit_normal"
    p_mean: float = 0.0              # logit-normal location
    p_std: float = 1.0               # logit-normal scale
    caption_dropout: float = 0.1     # chance to train on the empty caption (enables guidance)
    RANGES = {"p_std": (0, None), "caption_dropout": (0, 1)}


def drop_captions(captions: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by "" with probability p (trains the unconditional branch for guidance)."""
    keep = torch.rand(len(captions), generator=generator) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


@register("flow_matching")
class FlowMatching(Method):
    sections = {"flow_matching": FlowMatchingSettings}

    def losses(self, batch, step):
        fm, g = self.cfg.flow_matching, step.generator
        x0, cond = self.encoders.prepare(batch["video"], drop_captions(batch["caption"], fm.caption_dropout, g))
        x1 = torch.randn(x0.shape, generator=g).to(x0)
        t = sample_timesteps(x0.shape[0], fm.timesteps, p_mean=fm.p_mean, p_std=fm.p_std, generator=g).to(x0)
        v = step.nets["model"](interpolate(x0, x1, t), t, cond)
        loss = (v.float() - target_velocity(x0, x1).float()).pow(2).mean()  # Eq. (2)
        return LossOut({"model": loss}, {"loss": loss.item()})
