"""Flow matching (Eq. 2): the teacher's objective, ||v - v_theta(x_t, t)||^2; for a diffusion (VP) network, DDPM's.

A VP network (model.vp_schedule) is trained as diffusers trains one (DDPM's L_simple, Ho et al. 2020): the MSE of
its own prediction (epsilon, v or x0), with `timesteps: ddpm` its timesteps uniform over the schedule. Through the
bridge (vp.py) that is the flow-matching MSE at the same point of the path, weighted by vp.prediction_weight(t).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from workbench.flow import expand_t, interpolate, sample_timesteps, target_velocity
from workbench.methods.base import LossOut, Method, register
from workbench.vp import prediction_weight


@dataclass
class FlowMatchingSettings:
    """The teacher's training times and caption dropout."""
    timesteps: Literal["uniform", "logit_normal", "ddpm"] = "logit_normal"  # t: "uniform", "logit_normal", or
                                     # "ddpm" (a VP network: its timesteps, uniform, at their flow times)
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

    @classmethod
    def config_problems(cls, cfg):
        if cfg.flow_matching.timesteps == "ddpm" and not cfg.model.vp_schedule:
            return {"flow_matching.timesteps": "ddpm draws a VP network's timesteps: set model.vp_schedule"}
        return {}

    def losses(self, batch, step):
        fm, g, net = self.cfg.flow_matching, step.generator, self.net
        x0, cond = self.encoders.prepare(batch["video"], drop_captions(batch["caption"], fm.caption_dropout, g))
        x1 = torch.randn(x0.shape, generator=g).to(x0)
        if fm.timesteps == "ddpm":                 # s ~ U{0, ..., N-1}, at its flow time sigma / (alpha + sigma)
            t = net.vp.flow_times[torch.randint(len(net.vp.flow_times), (x0.shape[0],), generator=g)].to(x0)
        else:
            t = sample_timesteps(x0.shape[0], fm.timesteps, p_mean=fm.p_mean, p_std=fm.p_std, generator=g).to(x0)
        loss = flow_matching_loss(step.nets["model"], net, x0, x1, t, cond)
        return LossOut({"model": loss}, {"loss": loss.item()})


def flow_matching_loss(model, net, x0: torch.Tensor, x1: torch.Tensor, t_B: torch.Tensor, cond) -> torch.Tensor:
    """Eq. (2) on latents B,C,T,H,W through `model` (net as the loop prepared it); for a VP `net`, the MSE of its
    own prediction (module docstring)."""
    error = (model(interpolate(x0, x1, t_B), t_B, cond).float() - target_velocity(x0, x1).float()).pow(2)
    if net.vp is not None:
        error = error * expand_t(prediction_weight(net.vp_time(t_B).float(), net.prediction), error)
    return error.mean()
