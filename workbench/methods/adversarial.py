"""Distribution alignment (DA): a hinge GAN against real clips on top of a distillation loss (Eq. 10).

The discriminator reads x0_hat = x_t - t F_theta(x_t, t) (Eq. 5), decoded to pixels, and real clips x0
through a frozen DINOv2 (a local `Dinov2Model`; at toy scale the shipped experiments/toy/dino), with
trainable StyleGAN-T style heads: per chosen layer, a spatial head over each frame's patch tokens and a
temporal head over the sequence of per-frame CLS tokens (`AdversarialTerm`). The generator's adversarial term
(weight lambda_adv) joins the distillation loss after N_warmup steps, when the discriminator role starts to update.
With `adversarial.t_min` > 0 the discriminator reads x0_hat made at its own t ~ U[t_min, 1] (one more student
forward): the distillation's logit-normal times are mostly small, where x0_hat is close to x0 and the toy's
frozen features hardly tell it from a real clip (bench/da_heads.py), while one-step averaging shows at large t.
`adversarial.lambda_first` (not in the paper) adds lambda_first ||x0_hat[:, :, 0] - z_image||^2 on that x0_hat:
the given frame is known, and the GAN's push reaches frame 0 through the shared weights.
"""
from __future__ import annotations

import torch
from torch.nn.functional import layer_norm
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from workbench.flow import denoise, interpolate
from workbench.methods.base import Distillation, LossOut, Role
from workbench.methods.ccd import ccd_loss
from workbench.methods.dcd import dcd_loss
from workbench.models.dino import frame_tokens, load_feature_net


def hinge_generator(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Eq. (10), L^G's adversarial term: sum_k E[max(0, 1 - D_k(x0_hat))]."""
    return sum(torch.relu(1 - f).mean() for f in fake_logits)


def hinge_discriminator(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Eq. (10), L^D: sum_k E[max(0, 1 - D_k(x0))] + E[max(0, 1 + D_k(x0_hat))]."""
    return sum(torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits))


def conv_head(dim: int, width: int, kernel: int) -> nn.Sequential:
    """1-D conv head (StyleGAN-T's DiscHead without BatchNorm): features (N, D, L) -> logits (N, 1, L)."""
    return nn.Sequential(spectral_norm(nn.Conv1d(dim, width, 1)), nn.LeakyReLU(0.2),
                         spectral_norm(nn.Conv1d(width, width, kernel, padding=kernel // 2)), nn.LeakyReLU(0.2),
                         spectral_norm(nn.Conv1d(width, 1, 1)))


class Discriminator(nn.Module):
    """Trainable heads over frozen per-frame tokens: spatial (per frame), temporal (across frames) and motion
    (per patch, on the change of its token between consecutive frames)."""

    def __init__(self, dim: int, layers: tuple[int, ...], width: int = 64, temporal: bool = True,
                 motion_layers: tuple[int, ...] = ()):
        super().__init__()
        self.layers, self.motion_layers = tuple(layers), tuple(motion_layers)
        self.reads = tuple(sorted({*self.layers, *self.motion_layers}))  # hidden states `forward` is given
        self.spatial = nn.ModuleList(conv_head(dim, width, 3) for _ in layers)
        self.temporal = nn.ModuleList(conv_head(dim, width, 3) for _ in layers) if temporal else nn.ModuleList()
        self.motion = nn.ModuleList(conv_head(dim, width, 3) for _ in self.motion_layers)

    def forward(self, tokens: list[torch.Tensor], B: int) -> list[torch.Tensor]:
        """tokens[k]: hidden state self.reads[k], (B*T, 1 + L, D), CLS first -> logits per head: spatial
        (B*T, L), temporal (B, T), motion (B*(T-1), L)."""
        normed = {k: layer_norm(tok, tok.shape[-1:]) for k, tok in zip(self.reads, tokens)}  # as DINOv2's output
        logits = [head(normed[k][:, 1:].transpose(1, 2)).flatten(1) for head, k in zip(self.spatial, self.layers)]
        for head, k in zip(self.temporal, self.layers):
            cls_BDT = normed[k][:, 0].reshape(B, -1, normed[k].shape[-1]).transpose(1, 2)
            logits.append(head(cls_BDT).flatten(1))
        for head, k in zip(self.motion, self.motion_layers):
            patches_BTLD = normed[k][:, 1:].unflatten(0, (B, -1))
            change_NLD = (patches_BTLD[:, 1:] - patches_BTLD[:, :-1]).flatten(0, 1)   # 0 where a patch is still
            logits.append(head(change_NLD.transpose(1, 2)).flatten(1))
        return logits


class BlockHeads(nn.Module):
    """One 1x1-conv head per transformer block of a FlowNet like `net`, over the block's tokens (`block_features`):
    (B, L, D) per block -> logits (B, L) per block (PCM's and DMD2's discriminators)."""

    def __init__(self, net, blocks: int, width: int):
        super().__init__()
        dim = net.transformer.config.num_attention_heads * net.transformer.config.attention_head_dim
        self.heads = nn.ModuleList(conv_head(dim, width, 1) for _ in range(blocks))

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(layer_norm(tok, tok.shape[-1:]).transpose(1, 2)).flatten(1) for head, tok in zip(self.heads, tokens)]


def frames_of(video_BCTHW: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B*T, 3, H, W), frame-major per clip."""
    B, C, T, H, W = video_BCTHW.shape
    return video_BCTHW.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)


class AdversarialTerm:
    """Hinge GAN over frozen features (Eq. 10): the discriminator (a role of its method) and both hinge losses.

    Reusable by any method whose generator makes pixels: DA here; OSV's and DMD2's GAN heads.
    """

    def __init__(self, a):
        self.features = load_feature_net(a.feature_net)                  # frozen: eval, requires_grad False
        depth = self.features.config.num_hidden_layers
        for key, layers in (("layers", a.layers), ("motion_layers", a.motion_layers)):
            if (key == "layers" and not layers) or not all(0 <= k <= depth for k in layers):
                raise ValueError(f"adversarial.{key}: {list(layers)} must be hidden states 0..{depth} of {a.feature_net}")
        self.disc = Discriminator(self.features.config.hidden_size, a.layers, a.head_width, a.temporal_heads,
                                  a.motion_layers)

    def tokens(self, video_BCTHW: torch.Tensor) -> list[torch.Tensor]:
        return frame_tokens(self.features, frames_of(video_BCTHW), self.disc.reads)

    def generator_loss(self, disc, fake_BCTHW: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(hinge_G on the fakes, their feature tokens); the graph reaches the generator through frozen features."""
        fake_tokens = self.tokens(fake_BCTHW)
        return hinge_generator(disc(fake_tokens, fake_BCTHW.shape[0])), fake_tokens

    def discriminator_loss(self, disc, real_BCTHW: torch.Tensor, fake_tokens: list[torch.Tensor]
                           ) -> tuple[torch.Tensor, dict]:
        """(hinge_D on real clips and the detached fakes, logs with the mean logits)."""
        B = real_BCTHW.shape[0]
        with torch.no_grad():
            real_tokens = self.tokens(real_BCTHW)
        real_logits = disc(real_tokens, B)
        fake_logits = disc([tok.detach() for tok in fake_tokens], B)
        return hinge_discriminator(real_logits, fake_logits), {
            "logit_real": torch.cat([r.flatten() for r in real_logits]).mean().item(),
            "logit_fake": torch.cat([f.flatten() for f in fake_logits]).mean().item()}


def no_distillation(student, target, teacher_velocity, x_t, t, cond, step, d):
    """DA alone (Table 2a): no distillation term; the student's velocity only feeds x0_hat."""
    F = student(x_t, t, cond)
    return F.sum() * 0.0, F, {}


DISTILL_LOSSES = {"ccd": ccd_loss, "dcd": dcd_loss, "none": no_distillation}


class Adversarial(Distillation):
    """L^G = L_distill + lambda_adv * hinge_G, L^D = hinge_D (Eq. 10); the discriminator joins after N_warmup."""

    def __init__(self, cfg, net, encoders):
        super().__init__(cfg, net, encoders)
        a = cfg.adversarial
        if a.distill not in DISTILL_LOSSES:
            raise KeyError(f"adversarial.distill: expected one of {', '.join(DISTILL_LOSSES)}, got {a.distill!r}")
        self.distill_loss = DISTILL_LOSSES[a.distill]
        self.adversarial = AdversarialTerm(a)

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
        fake = self.encoders.decode(x0_hat)                               # x0_hat in pixels, B,3,T,H,W
        adv_g, fake_tokens = self.adversarial.generator_loss(step.nets["disc"], fake)
        loss_d, d_logs = self.adversarial.discriminator_loss(step.nets["disc"], batch["video"], fake_tokens)
        logs.update({"loss_adv_g": adv_g.item(), "loss_d": loss_d.item(), "loss_first": first.item(), **d_logs})
        model_loss = distill_loss + a.lambda_adv * adv_g + a.lambda_first * first
        return LossOut({"model": model_loss, "disc": loss_d}, logs)
