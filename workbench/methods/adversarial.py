"""Distribution alignment (DA): a hinge GAN against real clips on top of a distillation loss (Eq. 10).

The discriminator reads x0_hat = x_t - t F_theta(x_t, t) (Eq. 5), decoded to pixels, and real clips x0
through a frozen DINOv2 (a local `Dinov2Model`; at toy scale the shipped experiments/toy/dino), with
trainable StyleGAN-T style heads: per chosen layer, a spatial head over each frame's patch tokens and a
temporal head over the sequence of per-frame CLS tokens (`parts.AdversarialTerm`, OSV's too). The generator's
adversarial term (weight lambda_adv) joins the distillation loss after N_warmup steps, when the discriminator role
starts to update. `adversarial.distill` names the registered method whose `distill_loss` DA is added to.
With `adversarial.t_min` > 0 the discriminator reads x0_hat made at its own t ~ U[t_min, 1] (one more student
forward): the distillation's logit-normal times are mostly small, where x0_hat is close to x0 and the toy's
frozen features hardly tell it from a real clip (bench/da_heads.py), while one-step averaging shows at large t.
`adversarial.latent_frames` lets D read a prefix of the clip (the decode with gradients of 81 frames at 480p is
DA's largest cost). `adversarial.lambda_first` (not in the paper) adds lambda_first ||x0_hat[:, :, 0] - z_image||^2 on that x0_hat:
the given frame is known, and the GAN's push reaches frame 0 through the shared weights.
"""
from __future__ import annotations

import torch

from workbench.flow import denoise, interpolate
from workbench.methods.base import METHODS, DistillInputs, Distillation, LossOut, Role, register
from workbench.methods.parts import AdversarialSettings, AdversarialTerm


def no_distillation(inputs: DistillInputs):
    """DA alone (Table 2a): no distillation term; the student's velocity only feeds x0_hat."""
    F = inputs.student(inputs.x_t, inputs.t, inputs.cond)
    return F.sum() * 0.0, F, {}


def distillation_loss(name: str):
    """The loss DA is added to (adversarial.distill): that registered method's (`ccd`: CCD's, `dcd`: DCD's), found
    by name in the registry as the loop finds a method, or none."""
    return no_distillation if name == "none" else METHODS[name].distill_loss


@register("adversarial")
class Adversarial(Distillation):
    """L^G = L_distill + lambda_adv * hinge_G, L^D = hinge_D (Eq. 10); the discriminator joins after N_warmup."""
    sections = {"adversarial": AdversarialSettings}

    @classmethod
    def config_problems(cls, cfg):
        """The rules of the distillation DA is added to (CCD's: its JVP fits the net)."""
        return {} if cfg.adversarial.distill == "none" else METHODS[cfg.adversarial.distill].config_problems(cfg)

    def __init__(self, cfg, net, encoders):
        super().__init__(cfg, net, encoders)
        self.distill_loss = distillation_loss(cfg.adversarial.distill)   # a choice the loader checked
        self.adversarial = AdversarialTerm(cfg.adversarial)

    def roles(self):
        a = self.cfg.adversarial
        return {**super().roles(),
                "disc": Role(self.adversarial.disc, lr=a.lr or None, when=lambda step: step >= a.warmup)}

    def frozen(self):
        return {**super().frozen(), "features": self.adversarial.features}

    def losses(self, batch, step):
        a = self.cfg.adversarial
        x0, x_t, t, cond = self.noisy_batch(batch, step.generator)
        distill_loss, F, logs = self.student_loss(step.nets["model"], x_t, t, cond, step.index)
        logs["loss_distill"] = distill_loss.item()
        if "disc" not in step.due:                                        # N_warmup: distillation only
            return LossOut({"model": distill_loss}, logs)
        if a.t_min > 0:                                                   # D's own times, same clips
            t = a.t_min + (1 - a.t_min) * torch.rand(t.shape, generator=step.generator).to(t)
            x_t = interpolate(x0, torch.randn(x0.shape, generator=step.generator).to(x0), t)
            F = step.nets["model"](x_t, t, cond)
        x0_hat = denoise(x_t, F, t)                                       # B, C, T, H, W latents
        first = cond.first_frame_error(x0_hat).mean()
        if a.latent_frames:                                               # DA's frame subset (480p memory)
            x0_hat = x0_hat[:, :, :a.latent_frames]
        fake = self.encoders.decode(x0_hat)                               # x0_hat in pixels, B,3,T,H,W
        real = batch["video"][:, :, :fake.shape[2]]                       # as many real frames
        adv_g, fake_tokens = self.adversarial.generator_loss(step.nets["disc"], fake)
        loss_d, d_logs = self.adversarial.discriminator_loss(step.nets["disc"], real, fake_tokens)
        logs.update({"loss_adv_g": adv_g.item(), "loss_d": loss_d.item(), "loss_first": first.item(), **d_logs})
        model_loss = distill_loss + a.lambda_adv * adv_g + a.lambda_first * first
        return LossOut({"model": model_loss, "disc": loss_d}, logs)
