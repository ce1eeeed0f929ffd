from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field

import torch

from workbench.flow import interpolate, sample_timesteps
from workbench.models import check_prediction_fits
from workbench.models.weights import load_weights
from workbench.sampling import guided_velocity


@dataclass
class LossOut:
    losses: dict[str, torch.Tensor]              # optimizer name -> scalar loss to minimise
    logs: dict[str, float] = field(default_factory=dict)


class Method(abc.ABC):
    """The trained network is `self.net`; the loop sets `self.ema` to its EMA copy before step 0."""

    def __init__(self, cfg, net, conditioner):
        self.cfg, self.net, self.cond = cfg, net, conditioner
        self.ema: torch.nn.Module | None = None

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"model": [p for p in self.net.parameters() if p.requires_grad]}

    def modules_to_save(self) -> dict[str, torch.nn.Module]:
        """The method's own trained networks besides `net` (a discriminator, say): checkpointed and resumed."""
        return {}

    def to(self, device) -> "Method":
        """Move the method's own frozen networks (a teacher, say); the loop places net and EMA itself."""
        for name, value in vars(self).items():
            if isinstance(value, torch.nn.Module) and name not in ("net", "ema"):
                value.to(device)
        return self

    @abc.abstractmethod
    def losses(self, batch: dict, step: int, generator: torch.Generator) -> LossOut:
        """Scalar loss per optimizer for one batch; `generator` is the step's only source of randomness."""


class Distillation(Method):
    """A student distilled from a frozen teacher F_pretrain: `distill.teacher`, else `model.weights` (Alg. 1 line 2).

    A distillation method implements `student_loss` on one noisy batch and returns the student's velocity
    F_theta(x_t, t) with it, so that other losses on the same forward (DA's x0_hat) can reuse it.
    """

    def __init__(self, cfg, net, conditioner):
        super().__init__(cfg, net, conditioner)
        self.teacher = copy.deepcopy(net).requires_grad_(False).eval()
        if cfg.distill.teacher:                           # e.g. DA after CCD: the student is the CCD model
            load_weights(self.teacher.transformer, cfg.distill.teacher, "distill.teacher")
            check_prediction_fits(cfg.distill.teacher, cfg.model.prediction, "distill.teacher")

    def losses(self, batch, step, generator):
        _, x_t, t, cond = self.noisy_batch(batch, generator)
        loss, _, logs = self.student_loss(x_t, t, cond, step)
        return LossOut({"model": loss}, logs)

    @abc.abstractmethod
    def student_loss(self, x_t, t, cond, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(distillation loss, F_theta(x_t, t) with its graph, logs) for latents x_t (B,C,T,H,W) at times t (B,)."""

    def noisy_batch(self, batch: dict, generator: torch.Generator):
        """x0 ~ D, x1 ~ N(0, I), t ~ the distill sampler, x_t (Algorithm 1 lines 4-5); latents B,C,T,H,W."""
        d = self.cfg.distill
        x0, cond = self.cond.prepare(batch["video"], batch["caption"])
        x1 = torch.randn(x0.shape, generator=generator).to(x0)
        t = sample_timesteps(x0.shape[0], d.timesteps, p_mean=d.p_mean, p_std=d.p_std, generator=generator).to(x0)
        return x0, interpolate(x0, x1, t), t, cond

    @torch.no_grad()
    def teacher_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """dx_t/dt = F_pretrain(x_t, t), with classifier-free guidance when distill.guidance != 1."""
        w = self.cfg.distill.guidance
        null = self.cond.null_text(x_t.shape[0]) if w != 1.0 else None
        return guided_velocity(self.teacher, x_t, t, cond, w, null)
