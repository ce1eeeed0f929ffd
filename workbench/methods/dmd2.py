"""DMD2 (Yin et al. 2024; tianweiy/DMD2 main/sd_guidance.py), in this project's flow convention (t = 0 data).

The student makes x0_hat from noise (backward simulation for a multi-step student: its own no_grad rollout with the
`consistency` sampler to a random time of its step list, then one prediction with grad). Roles:
  fake   every step: a trainable copy of the teacher (the fake score) trained by flow matching on the student's
         detached samples, plus a GAN classifier head on one of its blocks, real clips against samples, both
         re-noised (non-saturating; weight gan_fake_weight).
  model  every student_every-th step (the two time-scale rule): the distribution-matching loss
         grad = (x0_fake - x0_real) / mean_{CTHW} |x0_hat - x0_real|, L_DM = 0.5 MSE(x0_hat, sg(x0_hat - grad)),
         at x_t = (1 - t) x0_hat + t eps, t ~ U[min_t, max_t], x0_real from the frozen teacher (distill.guidance),
         x0_fake from the fake score; plus gan_weight x the generator's non-saturating GAN loss.
The model role is declared first: its loss runs through the fake score, which must not have stepped yet.
Memory at Wan scale: distill.teacher_dtype bfloat16 holds the real score in bf16 (a full fake score is its fp32
copy); dmd2.fake_lora_rank > 0 makes the fake score a LoRA on the teacher's own base, which then stays fp32.
Weights as published (SDXL recipe: gen_cls_loss_weight 5e-3, guidance_cls_loss_weight 1e-2), not balanced.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import mse_loss, softplus

from workbench.flow import denoise, interpolate
from workbench.methods.base import Distillation, LossOut, Role, register
from workbench.methods.parts import BlockHeads, dm_loss
from workbench.models.ema import trainable_copy
from workbench.models.lora import adapters_disabled, add_lora
from workbench.models.wan import block_features
from workbench.sampling import consistency, schedule


@dataclass
class DMD2Settings:
    """DMD2 (Yin et al. 2024; tianweiy/DMD2, main/sd_guidance.py): distribution matching against a trainable fake
    score (a copy of the teacher trained by flow matching on the student's detached samples), a GAN classifier
    head on the fake score's block features, the two time-scale rule and backward simulation."""
    student_every: int = 5           # the student updates every 5th step, the fake score every step (dfake_gen_update_ratio)
    fake_lr: float = 0.0             # the fake score's (and its head's) lr (0 = train.lr; the official SD recipes use the same lr)
    denoising_steps: int = 4         # the student's step list = schedule(denoising_steps) (backward simulation; 1 = one step)
    min_t: float = 0.02              # score times t ~ U[min_t, max_t] (min/max_step_percent)
    max_t: float = 0.98
    gan_weight: float = 5.0e-3       # the generator's GAN weight (gen_cls_loss_weight, SDXL recipe)
    gan_fake_weight: float = 1.0e-2  # the classifier's weight in the fake score's loss (guidance_cls_loss_weight)
    gan_block: int = -1              # the fake score's transformer block the classifier head reads (-1 = the middle one)
    fake_lora_rank: int = 0          # > 0: the fake score is a LoRA of this rank on the teacher's own frozen weights
                                     # (one base in memory; model.lora's alpha and targets), 0: a full trainable copy
    RANGES = {"student_every": (1, None), "fake_lr": (0, None), "denoising_steps": (1, None), "min_t": (0, 1),
              "max_t": (0, 1), "gan_weight": (0, None), "gan_fake_weight": (0, None), "fake_lora_rank": (0, None)}

    def problems(self) -> dict[str, str]:
        return {} if self.min_t < self.max_t else {"min_t": f"{self.min_t} must be below dmd2.max_t ({self.max_t})"}


class FakeScore(nn.Module):
    """The fake score (a FlowNet) and its classifier head on block `block`; one role, one optimizer."""

    def __init__(self, flow, block: int, head_width: int = 64):
        super().__init__()
        self.flow, self.block = flow, block
        self.head = BlockHeads(flow, 1, head_width)

    def forward(self, x_t, t, cond, classify: bool = False):
        """The fake velocity, or (classify) the head's logits (B, L) on the block's tokens."""
        if not classify:
            return self.flow(x_t, t, cond)
        return self.head(block_features(self.flow, x_t, t, cond, (self.block,)))[0]


@register("dmd2")
class DMD2(Distillation):
    uses_target = False
    sections = {"dmd2": DMD2Settings}

    def __init__(self, cfg, net, encoders):
        super().__init__(cfg, net, encoders)
        c, depth = cfg.dmd2, len(net.transformer.blocks)
        block = c.gan_block if c.gan_block >= 0 else depth // 2
        if block >= depth:
            raise ValueError(f"dmd2.gan_block: {c.gan_block} must be a block 0..{depth - 1} (or -1, the middle one)")
        if c.fake_lora_rank:                    # a LoRA on the teacher's frozen base: the teacher runs without it
            lora = cfg.model.lora
            add_lora(self.teacher.transformer, c.fake_lora_rank, lora.alpha, lora.targets)
            self.fake = FakeScore(self.teacher, block)
        else:                                   # a full trainable copy of the teacher, as DMD2's, in fp32
            self.fake = FakeScore(trainable_copy(self.teacher).float(), block)

    def teacher_is_frozen(self):
        return not self.cfg.dmd2.fake_lora_rank  # a LoRA fake score's base is a role's network: it stays fp32

    def roles(self):
        c = self.cfg.dmd2
        return {"model": Role(self.net, ema=self.cfg.train.ema_decay, export=True, every=c.student_every,
                              offset=c.student_every - 1),
                "fake": Role(self.fake, lr=c.fake_lr or None)}

    def teacher_velocity(self, x_t, t, cond):
        """The real score: the teacher, without the fake score's adapter when the two share a base."""
        if not self.cfg.dmd2.fake_lora_rank:
            return super().teacher_velocity(x_t, t, cond)
        with adapters_disabled(self.teacher.transformer):
            return super().teacher_velocity(x_t, t, cond)

    def times(self, n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        c = self.cfg.dmd2
        return (c.min_t + (c.max_t - c.min_t) * torch.rand(n, generator=generator)).to(like)

    def generate(self, student, cond, shape, generator: torch.Generator, grad: bool) -> torch.Tensor:
        """x0_hat (B,C,T,H,W): the student's no_grad rollout over a random number k of its steps (backward
        simulation, fresh noise at each re-noising as its `consistency` sampler), then one prediction."""
        ts = schedule(self.cfg.dmd2.denoising_steps, self.cfg.sample.shift)
        k = int(torch.randint(0, len(ts) - 1, (1,), generator=generator))
        with torch.no_grad():                   # the sampler's first k steps: x at ts[k]
            noise = torch.randn(shape, generator=generator).to(cond.first_BCTHW)
            x = consistency(student, noise, cond, ts[:k + 1], generator=generator)
        t_B = ts[k].expand(shape[0]).to(x)
        with torch.set_grad_enabled(grad):
            return denoise(x, student(x, t_B, cond), t_B)

    def losses(self, batch, step):
        c, g, fake = self.cfg.dmd2, step.generator, step.nets["fake"]
        x0_real, cond = self.encoders.prepare(batch["video"], batch["caption"])
        B = x0_real.shape[0]
        train_student = "model" in step.due
        x0_hat = self.generate(step.nets["model"], cond, x0_real.shape, g, grad=train_student).to(x0_real)
        sample = x0_hat.detach()

        # the fake score: flow matching on the detached samples, and its classifier (real clips vs samples)
        t, eps = self.times(B, g, sample), torch.randn(sample.shape, generator=g).to(sample)
        loss_fm = mse_loss(fake(interpolate(sample, eps, t), t, cond).float(), (eps - sample).float())
        t_cls, eps_cls = self.times(B, g, sample), torch.randn(sample.shape, generator=g).to(sample)
        logit_real = fake(interpolate(x0_real, eps_cls, t_cls), t_cls, cond, classify=True)
        logit_fake = fake(interpolate(sample, eps_cls, t_cls), t_cls, cond, classify=True)
        loss_cls = softplus(-logit_real).mean() + softplus(logit_fake).mean()
        losses = {"fake": loss_fm + c.gan_fake_weight * loss_cls}
        logs = {"loss_fake_fm": loss_fm.item(), "loss_cls": loss_cls.item(),
                "logit_real": logit_real.mean().item(), "logit_fake": logit_fake.mean().item(),
                "x0_hat_std": sample.flatten(2).std(2).mean().item()}   # spatial-temporal spread: ~0 = solid colour
        images = {}

        if train_student or step.snapshot:     # the real and fake scores' x0 at the student's re-noised sample
            t, eps = self.times(B, g, sample), torch.randn(sample.shape, generator=g).to(sample)
            x_t = interpolate(sample, eps, t)
            with torch.no_grad():
                x0_from_teacher = denoise(x_t, self.teacher_velocity(x_t, t, cond), t)
                x0_from_fake = denoise(x_t, fake(x_t, t, cond), t)
            if step.snapshot:                   # the DMD2 authors' collapse check: look at all three
                images = {"student x0": sample, "real score x0": x0_from_teacher, "fake score x0": x0_from_fake}
        if train_student:                       # distribution matching (+ the generator's GAN term)
            loss_dm, grad, _ = dm_loss(x0_hat, x0_from_teacher.float() - x0_from_fake.float(), x0_from_teacher,
                                       scale=0.5)                       # grad = (x0_fake - x0_real) / norm
            t_gan, eps_gan = self.times(B, g, sample), torch.randn(sample.shape, generator=g).to(sample)
            loss_gan = softplus(-fake(interpolate(x0_hat, eps_gan, t_gan), t_gan, cond, classify=True)).mean()
            losses["model"] = loss_dm + c.gan_weight * loss_gan
            logs.update({"loss": losses["model"].item(), "loss_dm": loss_dm.item(), "loss_gan": loss_gan.item(),
                         "dm_grad_norm": grad.flatten(1).norm(dim=1).mean().item()})
        return LossOut(losses, logs, images)
