"""The pieces several methods share, each written once; a method file imports these, never another method.

    teacher_step      the teacher's Euler step, the ODE solver of DCD (Eq. 3), LCM and PCM
    pseudo_huber      LCM's and PCM's distance
    LCMSettings, grid_batch, lcm_loss   LCM's consistency on the teacher's grid (`lcm:`), OSV's stage 2
    dm_loss           distribution matching's normalised push (DMD2; CDM's DM, CDM and CA terms)
    hinge_generator, hinge_discriminator, conv_head, BlockHeads   GAN losses and heads (DA, OSV, PCM, DMD2)
    AdversarialSettings, Discriminator, AdversarialTerm           DA's GAN over frozen features (`adversarial:`), OSV's
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.functional import layer_norm, mse_loss
from torch.nn.utils.parametrizations import spectral_norm

from workbench.flow import denoise, expand_t, interpolate, shift_timesteps
from workbench.models.dino import frame_tokens, load_feature_net


def teacher_step(teacher_velocity, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond) -> torch.Tensor:
    """x_s = x_t + (s - t) dx_t/dt: the teacher's Euler step from t to s (B,) on latents x_t (B,C,T,H,W)."""
    return x_t + expand_t(s - t, x_t) * teacher_velocity(x_t, t, cond)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """mean of sqrt((a - b)^2 + c^2) - c over elements (diffusers' LCM loss); c = 0 is the mean absolute error."""
    return (torch.sqrt((a.float() - b.float()) ** 2 + c ** 2) - c).mean()


# --- consistency on the teacher's grid (LCM; OSV's stage 2) ------------------------------------------------------

@dataclass
class LCMSettings:
    """Latent consistency distillation (Luo et al. 2023; diffusers examples/consistency_distillation): the teacher's
    one Euler step on a grid as the ODE solver, consistency to the target network (distill.target_decay) there.
    Guidance is fixed (distill.guidance) and distilled in: Wan has no guidance input to condition on."""
    grid: int = 50                   # N points of the teacher's schedule, t_n = n / N (diffusers: 50 DDIM steps)
    skip: int = 1                    # k: the solver jumps from t_n to t_{n-k} (the skipping-step grid)
    huber_c: float = 0.001           # pseudo-Huber sqrt(d^2 + c^2) - c per element; our units are ~[-1, 1] as SD latents
    RANGES = {"grid": (1, 1000), "skip": (1, None), "huber_c": (0, None)}


def grid_batch(encoders, batch: dict, c: LCMSettings, generator: torch.Generator, shift: float = 1.0):
    """(x_t, t, s, cond): x0 ~ D, t = t_n on the grid of c.grid points shifted as the sampler's schedule
    (sampling.schedule), s = t_{n - c.skip}; latents B,C,T,H,W."""
    x0, cond = encoders.prepare(batch["video"], batch["caption"])
    x1 = torch.randn(x0.shape, generator=generator).to(x0)
    n = torch.randint(c.skip, c.grid + 1, (x0.shape[0],), generator=generator)   # grid index of t
    t, s = (shift_timesteps(m / c.grid, shift).to(x0) for m in (n, n - c.skip))
    return interpolate(x0, x1, t), t, s, cond


def lcm_loss(student, target, teacher_velocity, x_t, t, s, cond, huber_c: float):
    """(loss, f_theta(x_t, t) = x0_hat with its graph, logs) on latents x_t (B,C,T,H,W) at grid times t (B,) with
    solver targets at s < t."""
    with torch.no_grad():
        x_s = teacher_step(teacher_velocity, x_t, t, s, cond)               # the teacher's Euler step (ODE solver)
        f_target = denoise(x_s, target(x_s, s, cond), s)                     # f_theta-(x_s, s)
    f = denoise(x_t, student(x_t, t, cond), t)                               # f_theta(x_t, t)
    loss = pseudo_huber(f, f_target, huber_c)
    return loss, f, {"loss": loss.item()}


# --- distribution matching ------------------------------------------------------------------------------------------

def dm_loss(x0_hat: torch.Tensor, push: torch.Tensor, anchor: torch.Tensor, norm_min: float = 0.0,
            scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale x MSE(x0_hat, sg(x0_hat - grad)), grad, n): grad = -push / n, n = max(mean_{C,T,H,W} |sg(x0_hat) -
    anchor|, norm_min) per sample (B,), NaN set to 0; the loss's gradient moves x0_hat along +push by
    2 scale push / (n numel). One function for both methods, which differ in two numbers:
      DMD2 (sd_guidance.py): push = x0_real - x0_fake, anchor = x0_real, norm_min 0, scale 0.5 (gradient grad / numel)
      CDM (losses.py: compute_dm_loss, compute_cfg_loss): norm_min 0.1 (norm_clip_min), scale 1; DM as DMD2's,
          CFG augmentation push = g (x0_cond - x0_uncond), anchor = x0_cond."""
    norm = (x0_hat.detach().float() - anchor.float()).abs().flatten(1).mean(1).clamp(min=norm_min)
    grad = torch.nan_to_num(-push.float() / expand_t(norm, x0_hat))
    return scale * mse_loss(x0_hat.float(), (x0_hat.float() - grad).detach()), grad, norm


# --- GAN losses and heads -------------------------------------------------------------------------------------------

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


class BlockHeads(nn.Module):
    """One 1x1-conv head per transformer block of a FlowNet like `net`, over the block's tokens (`block_features`):
    (B, L, D) per block -> logits (B, L) per block (PCM's and DMD2's discriminators)."""

    def __init__(self, net, blocks: int, width: int):
        super().__init__()
        dim = net.transformer.config.num_attention_heads * net.transformer.config.attention_head_dim
        self.heads = nn.ModuleList(conv_head(dim, width, 1) for _ in range(blocks))

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(layer_norm(tok, tok.shape[-1:]).transpose(1, 2)).flatten(1) for head, tok in zip(self.heads, tokens)]


# --- DA's GAN over frozen features (DA; OSV) -----------------------------------------------------------------------

@dataclass
class AdversarialSettings:
    """Distribution alignment (DA): hinge GAN on real clips over frozen features (Eq. 10)."""
    distill: Literal["ccd", "dcd", "none"] = "ccd"  # the distillation loss DA is added to: "ccd", "dcd" or "none" (DA alone)
    lambda_adv: float = 0.01         # weight of the generator's hinge loss
    warmup: int = 1000               # N_warmup: distillation-only steps before DA starts
    feature_net: str = "toy"         # frozen DINOv2: "toy" (shipped experiments/toy/dino) or a local Dinov2Model folder
    layers: tuple[int, ...] = (2, 4)  # hidden states (0 = embeddings) read by one spatial and one temporal head each
    head_width: int = 64             # channels of each discriminator head
    temporal_heads: bool = True      # add temporal heads over the frame sequence (False: spatial heads only)
    motion_layers: tuple[int, ...] = ()  # hidden states read by a motion head each: per patch, the change of its token
                                     # between consecutive frames (not in the paper; () = off). 0 = the patch
                                     # embeddings, local to each patch, so a still background changes by exactly 0
    lr: float = 0.0                  # discriminator learning rate (0 = train.lr)
    t_min: float = 0.0               # 0: D reads x0_hat at the distillation's t; > 0: at its own t ~ U[t_min, 1]
    lambda_first: float = 0.0        # weight of ||x0_hat's frame 0 - the given frame's latent||^2 at D's x0_hat
                                     # (not in the paper; 0 = off)
    latent_frames: int = 0           # D reads the first n latent frames of x0_hat, decoded, against as many real
                                     # frames (0 = all). Wan's VAE is causal in time: their decode is exactly the
                                     # full decode's first 1 + 4 (n - 1) frames, at a fraction of its memory (480p)
    RANGES = {"lambda_adv": (0, None), "warmup": (0, None), "head_width": (1, None), "lr": (0, None),
              "t_min": (0, 1), "lambda_first": (0, None), "latent_frames": (0, None)}


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


def frames_of(video_BCTHW: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B*T, 3, H, W), frame-major per clip."""
    B, C, T, H, W = video_BCTHW.shape
    return video_BCTHW.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)


class AdversarialTerm:
    """Hinge GAN over frozen features (Eq. 10): the discriminator (a role of its method) and both hinge losses.

    Reusable by any method whose generator makes pixels: DA; OSV's GAN.
    """

    def __init__(self, a: AdversarialSettings):
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
