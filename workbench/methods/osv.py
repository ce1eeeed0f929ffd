"""OSV† (Mao et al., CVPR 2025, "One Step is Enough"): GAN pre-training against real clips, then consistency + GAN.

No public code exists; this is our implementation (the dagger, as in the SwiftVideo paper's Table 1).
From the paper: two stages; stage 1 trains the few-step student (initialised from the teacher) against real
videos with a hinge GAN whose discriminator is a frozen DINOv2 with trainable heads; stage 2 adds consistency
distillation from the teacher to the GAN; 1-step generation with optional multi-step refinement.
Guessed (no code, the text is thin): the stage order (sources disagree; GAN first, as the paper's TL;DR reads);
one run with a step switch (osv.stage1_steps) so the discriminator carries over; the discriminator reads decoded
pixels through DA's frozen features and spatial + temporal heads (`AdversarialTerm`) instead of the paper's
latent upsampler (at toy scale latents are pixels: the two coincide); LCM's consistency loss on its grid (lcm.*,
EMA target distill.target_decay) as stage 2's distillation; the `consistency` sampler (re-noise with fresh
noise) instead of the paper's Time Travel Sampler, which is not specified enough to reproduce.
The GAN's fake is x0_hat = f_theta(x_t, t) at grid times t (Eq. 5), so every sampler step is trained.
"""
from __future__ import annotations

from dataclasses import dataclass

from workbench.flow import denoise
from workbench.methods.base import Distillation, LossOut, Role, register
from workbench.methods.parts import AdversarialSettings, AdversarialTerm, LCMSettings, grid_batch, lcm_loss


@dataclass
class OSVSettings:
    """OSV (Mao et al. 2025; no public code, our implementation): a hinge GAN against real clips (adversarial.*:
    features, heads, lr, lambda_adv), alone for the first stage1_steps, then with LCM's consistency loss (lcm.*)."""
    stage1_steps: int = 250          # stage 1 (GAN only) length; stage 2 (consistency + GAN) runs to train.steps
    RANGES = {"stage1_steps": (0, None)}


@register("osv")
class OSV(Distillation):
    sections = {"osv": OSVSettings, "lcm": LCMSettings, "adversarial": AdversarialSettings}  # lcm, adversarial: parts

    def __init__(self, cfg, net, encoders):
        super().__init__(cfg, net, encoders)
        self.adversarial = AdversarialTerm(cfg.adversarial)

    def roles(self):
        return {**super().roles(), "disc": Role(self.adversarial.disc, lr=self.cfg.adversarial.lr or None)}

    def frozen(self):
        return {**super().frozen(), "features": self.adversarial.features}

    def losses(self, batch, step):
        a, student = self.cfg.adversarial, step.nets["model"]
        x_t, t, s, cond = grid_batch(self.encoders, batch, self.cfg.lcm, step.generator, self.cfg.sample.shift)
        if step.index < self.cfg.osv.stage1_steps:                        # stage 1: the GAN alone
            x0_hat, consistency, logs = denoise(x_t, student(x_t, t, cond), t), None, {}
        else:                                                             # stage 2: + consistency distillation
            consistency, x0_hat, logs = lcm_loss(student, self.target, self.teacher_velocity, x_t, t, s, cond,
                                                 self.cfg.lcm.huber_c)
            logs = {"loss_consistency": logs["loss"]}
        fake = self.encoders.decode(x0_hat)                               # B,3,T,H,W pixels
        adv_g, fake_tokens = self.adversarial.generator_loss(step.nets["disc"], fake)
        loss_d, d_logs = self.adversarial.discriminator_loss(step.nets["disc"], batch["video"], fake_tokens)
        loss = a.lambda_adv * adv_g if consistency is None else consistency + a.lambda_adv * adv_g
        logs.update({"loss": loss.item(), "loss_adv_g": adv_g.item(), "loss_d": loss_d.item(), **d_logs})
        return LossOut({"model": loss, "disc": loss_d}, logs)
