"""Trajectory alignment (TA): Flow-DPO (Eq. 11) with the reflow regulariser, LoRA on the transformer.

On a preference pair (x0^w from more Euler steps, x0^l from fewer; data/preferences.py), winner and loser
share t and noise x1; v = x1 - x0 (Eq. 2). x1 is a fresh draw (`dpo.noise: fresh`) or the noise both clips were
sampled from (`paired`): then x_t lies on the straight line from the pair's own x1 to each clip, the coupling of
reflow (Liu et al. 2022) that makes L_RF teach fewer steps to land where more steps did. With
`dpo.region: difference` the DPO errors weigh each element by |x0^w - x0^l| (per clip, mean 1): the preference
then speaks only where the pair differs, and cannot be met by changing what both clips share (a static
background, the given frame), which is left to L_RF. `dpo.lambda_keep` (not in the paper) adds
lambda_keep ||F - F_ref||^2 over the elements where the pair agrees (|x0^w - x0^l| at most its clip mean): what
both clips share, the model keeps from its reference. `dpo.lambda_first` (not in the paper) adds
lambda_first ||x0_hat[:, :, 0] - z_image||^2 on both clips' x0_hat: the given frame is a known answer, not a preference.
The reference v_ref is the same network with its LoRA disabled.
Errors ||v - v(x_t, t)||^2 are per-element means (the Diffusion-DPO convention that beta = 2500 assumes);
`dpo.error: x0` measures them as ||x0 - x0_hat||^2 = t^2 ||v - F||^2 (Eq. 5), without velocity space's 1/t^2
weight on the smallest times.
    L = -log sigmoid(-beta/2 [(e_w - e_w^ref) - (e_l - e_l^ref)]) + lambda_RF e_w
        (+ lambda_keep keep + lambda_first first)
Win Diff = e_w - e_w^ref (Figure 8): above 0, the model fits the preferred trajectories worse than the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch.nn.functional import logsigmoid

from workbench.config import Timesteps
from workbench.flow import denoise, interpolate, sample_timesteps, target_velocity
from workbench.generate import clip_noise
from workbench.methods.base import LossOut, Method, register
from workbench.models.lora import adapters_disabled


@dataclass
class DPOSettings:
    """Trajectory alignment (TA): Flow-DPO (Eq. 11) + reflow regulariser on winners; trains the LoRA of model.lora."""
    beta: float = 2500.0             # beta of Eq. (11); errors are per-element means
    error: Literal["velocity", "x0"] = "velocity"  # "velocity": ||v - F||^2 (Eq. 11); "x0": ||x0 - x0_hat||^2 = t^2 ||v - F||^2
    condition_frame: bool = False    # winner and loser take the condition's latent as frame 0 (the given frame)
    noise: Literal["fresh", "paired"] = "fresh"  # x1 of x_t: "fresh" (a new draw each step) or "paired" (the noise the pair was
                                     # sampled from: reflow's coupling, Liu et al. 2022; sampled winners only)
    region: Literal["all", "difference"] = "all"  # DPO errors over "all" elements or weighted by |x0^w - x0^l| ("difference": the
                                     # preference speaks where the pair differs; reflow still sees every element)
    lambda_rf: float = 2.0           # weight of the reflow loss ||v_w - v_theta(x_t^w, t)||^2 (0 = DPO alone)
    lambda_keep: float = 0.0         # weight of ||F - F_ref||^2 where winner and loser agree (not in the paper; 0 = off)
    lambda_first: float = 0.0        # weight of ||x0_hat's frame 0 - the given frame's latent||^2 (not in the paper)
    timesteps: Timesteps = "uniform"  # t sampler: "uniform" or "logit_normal"
    p_mean: float = 0.0
    p_std: float = 1.0
    RANGES = {"beta": (0, None), "lambda_rf": (0, None), "lambda_keep": (0, None), "lambda_first": (0, None),
              "p_std": (0, None)}


def dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Eq. (11) on per-sample errors (B,): -E log sigmoid(-beta/2 ((e_w - r_w) - (e_l - r_l)))."""
    return -logsigmoid(-0.5 * beta * ((err_w - ref_w) - (err_l - ref_l))).mean()


class PairErrors(NamedTuple):
    """Per-clip errors (B,) of one pair batch: the DPO term's (model, reference; winner, loser), reflow's, and t."""
    err_w: torch.Tensor
    err_l: torch.Tensor
    ref_w: torch.Tensor
    ref_l: torch.Tensor
    reflow_w: torch.Tensor          # the winner's error over every element (= err_w unless dpo.region weighs)
    reflow_ref_w: torch.Tensor      # the reference's, the same way (Win Diff = reflow_w - reflow_ref_w, Figure 8)
    keep: torch.Tensor              # ||F - F_ref||^2 where the pair agrees, both clips (dpo.lambda_keep's term)
    first: torch.Tensor             # x0_hat's frame 0 against the given frame, both clips (dpo.lambda_first's term)
    t: torch.Tensor


def difference_weight(x_w: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
    """|x_w - x_l| per element, scaled to mean 1 per clip (B, C, T, H, W); 0 where a pair is identical."""
    diff = (x_w - x_l).abs().float()
    return diff / diff.flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (diff.dim() - 1))


@register("dpo")
class FlowDPO(Method):
    """Trains the LoRA of model.lora (its only trainable parameters); the reference is the network, adapters off."""
    sections = {"dpo": DPOSettings}

    def __init__(self, cfg, net, encoders):
        super().__init__(cfg, net, encoders)
        if not cfg.model.lora.rank:                 # another section's value: an exported TA model's config says 0
            raise ValueError("model.lora.rank: Flow-DPO trains a LoRA; set a rank >= 1 (e.g. 16)")

    def pair_errors(self, batch, step) -> PairErrors:
        """The model's and the reference's errors on one pair batch (`PairErrors`)."""
        d = self.cfg.dpo
        x_w, x_l = batch["winner"], batch["loser"]                          # B, C, T, H, W latents
        B = x_w.shape[0]
        with torch.no_grad():
            cond = self.encoders.condition(batch["first"], batch["caption"], batch["frames"][0])
        if d.condition_frame:                                               # frame 0 := the given frame
            given = cond.first_BCTHW[:, :, :1].to(x_w)
            x_w, x_l = (torch.cat([given, x[:, :, 1:]], 2) for x in (x_w, x_l))
        if d.noise == "paired":                                             # the x1 both clips were sampled from
            if any(w != "sampled" for w in batch["winners"]):
                raise ValueError("dpo.noise: 'paired' needs sampled winners (these pairs have real clips as "
                                 "winners, which no noise maps to); use dpo.noise=fresh")
            x1 = torch.cat([clip_noise([s], x_w.shape[1:], n) for s, n in zip(batch["seed"], batch["noise_seed"])])
            x1 = x1.to(x_w)
        else:
            x1 = torch.randn(x_w.shape, generator=step.generator).to(x_w)
        t = sample_timesteps(B, d.timesteps, p_mean=d.p_mean, p_std=d.p_std, generator=step.generator).to(x_w)
        x0, x1, t2 = torch.cat([x_w, x_l]), torch.cat([x1, x1]), torch.cat([t, t])  # same t, noise for w and l
        cond = cond.select(torch.arange(B).repeat(2))
        x_t, v = interpolate(x0, x1, t2), target_velocity(x0, x1)
        weight = t2.float().pow(2)[:, None] if d.error == "x0" else 1.0   # x0 - x0_hat = t (v - F)
        F = step.nets["model"](x_t, t2, cond)
        with torch.no_grad(), adapters_disabled(self.net.transformer):     # the reference: base weights
            F_ref = self.net(x_t, t2, cond)
        sq, sq_ref = (weight * (v - f).float().pow(2).flatten(1) for f in (F, F_ref))
        diff = difference_weight(x_w, x_l).flatten(1)
        region = diff.repeat(2, 1) if d.region == "difference" else 1.0
        err, ref = (region * sq).mean(1), (region * sq_ref).mean(1)
        agree = (diff <= 1).float().repeat(2, 1)                          # |x_w - x_l| at most its clip mean
        keep = (agree * weight * (F - F_ref).float().pow(2).flatten(1)).mean(1)
        first = cond.first_frame_error(denoise(x_t, F, t2))                # Eq. (5)'s x0_hat, 2B
        return PairErrors(*err.chunk(2), *ref.chunk(2), reflow_w=sq[:B].mean(1), reflow_ref_w=sq_ref[:B].mean(1),
                          keep=0.5 * sum(keep.chunk(2)), first=0.5 * sum(first.chunk(2)), t=t)

    def losses(self, batch, step):
        d = self.cfg.dpo
        err_w, err_l, ref_w, ref_l, reflow_w, reflow_ref_w, keep, first, _ = self.pair_errors(batch, step)
        loss_dpo = dpo_loss(err_w, err_l, ref_w, ref_l, d.beta)
        loss_rf = reflow_w.mean()                                           # reflow loss on winners
        loss = loss_dpo + d.lambda_rf * loss_rf + d.lambda_keep * keep.mean() + d.lambda_first * first.mean()
        margin = -0.5 * d.beta * ((err_w - ref_w) - (err_l - ref_l))
        return LossOut({"model": loss}, {
            "loss": loss.item(), "loss_dpo": loss_dpo.item(), "loss_rf": loss_rf.item(),
            "loss_keep": keep.mean().item(), "loss_first": first.mean().item(),
            "win_diff": (reflow_w - reflow_ref_w).mean().item(), "lose_diff": (err_l - ref_l).mean().item(),
            "dpo_accuracy": (margin > 0).float().mean().item()})
