"""Distribution alignment (DA): a hinge GAN against real clips on top of a distillation loss (Eq. 10).

The discriminator reads x0_hat = x_t - t F_theta(x_t, t) (Eq. 5), decoded to pixels, and real clips x0
through a frozen DINOv2 (a local `Dinov2Model`; at toy scale the shipped experiments/toy/dino), with
trainable StyleGAN-T style heads: per chosen layer, a spatial head over each frame's patch tokens and a
temporal head over the sequence of per-frame CLS tokens. The generator's adversarial term (weight
lambda_adv) joins the distillation loss after N_warmup steps; both optimizers step every step after that.
"""
from __future__ import annotations

import torch
from torch.nn.functional import layer_norm
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from workbench.flow import denoise
from workbench.methods.base import Distillation, LossOut
from workbench.methods.ccd import CCD
from workbench.methods.dcd import DCD
from workbench.models.features import frame_tokens, load_feature_net


def hinge_generator(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Eq. (10), L^G's adversarial term: sum_k E[max(0, 1 - D_k(x0_hat))]."""
    return sum(torch.relu(1 - f).mean() for f in fake_logits)


def hinge_discriminator(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Eq. (10), L^D: sum_k E[max(0, 1 - D_k(x0))] + E[max(0, 1 + D_k(x0_hat))]."""
    return sum(torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits))


def _head(dim: int, width: int, kernel: int) -> nn.Sequential:
    """1-D conv head (StyleGAN-T's DiscHead without BatchNorm): features (N, D, L) -> logits (N, 1, L)."""
    return nn.Sequential(spectral_norm(nn.Conv1d(dim, width, 1)), nn.LeakyReLU(0.2),
                         spectral_norm(nn.Conv1d(width, width, kernel, padding=kernel // 2)), nn.LeakyReLU(0.2),
                         spectral_norm(nn.Conv1d(width, 1, 1)))


class Discriminator(nn.Module):
    """Trainable heads over frozen per-frame tokens: spatial (per frame) and temporal (across frames)."""

    def __init__(self, dim: int, layers: tuple[int, ...], width: int = 64, temporal: bool = True):
        super().__init__()
        self.layers = tuple(layers)
        self.spatial = nn.ModuleList(_head(dim, width, 3) for _ in layers)
        self.temporal = nn.ModuleList(_head(dim, width, 3) for _ in layers) if temporal else nn.ModuleList()

    def forward(self, tokens: list[torch.Tensor], B: int) -> list[torch.Tensor]:
        """tokens[k]: (B*T, 1 + L, D), CLS first -> logits per head: spatial (B*T, L), temporal (B, T)."""
        tokens = [layer_norm(tok, tok.shape[-1:]) for tok in tokens]    # unit scale per token, as DINOv2's output
        logits = [head(tok[:, 1:].transpose(1, 2)).flatten(1) for head, tok in zip(self.spatial, tokens)]
        for head, tok in zip(self.temporal, tokens):
            cls_BDT = tok[:, 0].reshape(B, -1, tok.shape[-1]).transpose(1, 2)
            logits.append(head(cls_BDT).flatten(1))
        return logits


def frames_of(video_BCTHW: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B*T, 3, H, W), frame-major per clip."""
    B, C, T, H, W = video_BCTHW.shape
    return video_BCTHW.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)


class Adversarial(Distillation):
    """L^G = L_distill + lambda_adv * hinge_G (after N_warmup steps), L^D = hinge_D (Eq. 10)."""

    def __init__(self, cfg, net, conditioner):
        super().__init__(cfg, net, conditioner)
        a = cfg.adversarial
        distill = {"ccd": CCD.student_loss, "dcd": DCD.student_loss, "none": Adversarial._no_distillation}
        if a.distill not in distill:
            raise KeyError(f"adversarial.distill: expected one of {', '.join(distill)}, got {a.distill!r}")
        self._distill = distill[a.distill]
        self.features = load_feature_net(a.feature_net)                  # frozen: eval, requires_grad False
        depth = self.features.config.num_hidden_layers
        if not a.layers or not all(0 <= k <= depth for k in a.layers):
            raise ValueError(f"adversarial.layers: {list(a.layers)} must be hidden states 0..{depth} of {a.feature_net}")
        self.disc = Discriminator(self.features.config.hidden_size, a.layers, a.head_width, a.temporal_heads)

    def _no_distillation(self, x_t, t, cond, step):
        """DA alone (Table 2a): no distillation term; the student's velocity only feeds x0_hat."""
        F = self.net(x_t, t, cond)
        return F.sum() * 0.0, F, {}

    def student_loss(self, x_t, t, cond, step):
        return self._distill(self, x_t, t, cond, step)

    def param_groups(self):
        lr = self.cfg.adversarial.lr or self.cfg.train.lr
        return {**super().param_groups(), "disc": [{"params": list(self.disc.parameters()), "lr": lr}]}

    def modules_to_save(self):
        return {"disc": self.disc}

    def tokens(self, video_BCTHW: torch.Tensor) -> list[torch.Tensor]:
        return frame_tokens(self.features, frames_of(video_BCTHW), self.disc.layers)

    def losses(self, batch, step, generator):
        a = self.cfg.adversarial
        x0, x_t, t, cond = self.noisy_batch(batch, generator)
        distill_loss, F, logs = self.student_loss(x_t, t, cond, step)
        if step < a.warmup:                                               # N_warmup: distillation only
            return LossOut({"model": distill_loss}, {**logs, "loss_distill": distill_loss.item()})
        B = x0.shape[0]
        fake = self.cond.decode(denoise(x_t, F, t))                       # x0_hat in pixels, B,3,T,H,W
        fake_tokens = self.tokens(fake)                                   # graph to theta through frozen features
        adv_g = hinge_generator(self.disc(fake_tokens, B))
        with torch.no_grad():
            real_tokens = self.tokens(batch["video"])
        real_logits = self.disc(real_tokens, B)
        fake_logits = self.disc([tok.detach() for tok in fake_tokens], B)
        loss_d = hinge_discriminator(real_logits, fake_logits)
        loss_g = distill_loss + a.lambda_adv * adv_g
        logs.update({"loss_distill": distill_loss.item(), "loss_adv_g": adv_g.item(), "loss_d": loss_d.item(),
                     "logit_real": torch.cat([r.flatten() for r in real_logits]).mean().item(),
                     "logit_fake": torch.cat([f.flatten() for f in fake_logits]).mean().item()})
        return LossOut({"model": loss_g, "disc": loss_d}, logs)
