"""Does DA's discriminator learn to tell x0_hat from real clips? Its heads trained alone, as JSON.

    python bench/da_heads.py [--config experiments/toy/da.yaml] [--steps 300] [--set adversarial.lr=1e-3 ...]

The discriminator of `--config` (Eq. 10's hinge L^D, its feature net, layers, heads and lr) trains against the
frozen student of model.weights: x0_hat = x_t - t F(x_t, t) at DA's times (the distill sampler's, U[t_min, 1] with
adversarial.t_min > 0, or `--t`), decoded,
against the batch's real clips, as in DA but with the generator held still. Every 50 steps: the mean logit on real
clips and on x0_hat, their gap, and the share of held-out clips (and their x0_hat) on the right side of zero.
A gap that stays near 0 means DA's generator term has nothing to follow.
"""
from __future__ import annotations

import argparse

import torch

from workbench.data import build_dataset, collate
from workbench.flow import denoise, interpolate
from workbench.methods import build_method, load_config
from workbench.models import build_backbone

from _emit import emit  # bench/_emit.py (the script's folder is on sys.path)


def fakes(method, batch, gen, t_fixed: float | None):
    x0, x_t, t, cond = method.noisy_batch(batch, gen)
    t_min = method.cfg.adversarial.t_min
    if t_fixed is not None or t_min > 0:
        t = torch.full_like(t, t_fixed) if t_fixed is not None else t_min + (1 - t_min) * torch.rand(t.shape, generator=gen)
        x_t = interpolate(x0, torch.randn(x0.shape, generator=gen), t)
    with torch.no_grad():
        return method.encoders.decode(denoise(x_t, method.net(x_t, t, cond), t))        # x0_hat, B,3,T,H,W


def logits(adv, disc, video_BCTHW) -> torch.Tensor:
    with torch.no_grad():
        out = disc(adv.tokens(video_BCTHW), video_BCTHW.shape[0])
    B = video_BCTHW.shape[0]
    return torch.stack([o.reshape(B, -1).mean(1) for o in out], 1).mean(1)                # per clip, over heads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="experiments/toy/da.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--t", type=float, help="read x0_hat at this t only (default: the distill sampler's times)")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    torch.manual_seed(0)
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    adv, disc = method.adversarial, method.adversarial.disc
    opt = torch.optim.AdamW(disc.parameters(), lr=cfg.adversarial.lr or cfg.train.lr, betas=cfg.train.betas,
                            weight_decay=0.0)
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    held = collate([test[i] for i in range(64)])
    gen, b, curve = torch.Generator().manual_seed(0), cfg.train.batch_size, []
    held_fake = fakes(method, held, torch.Generator().manual_seed(1), args.t)
    for step in range(1, args.steps + 1):
        batch = collate([train[i] for i in range(step * b, (step + 1) * b)])
        fake_tokens = adv.tokens(fakes(method, batch, gen, args.t))
        loss_d, _ = adv.discriminator_loss(disc, batch["video"], fake_tokens)
        opt.zero_grad()
        loss_d.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps:
            real, fake = logits(adv, disc, held["video"]), logits(adv, disc, held_fake)
            curve.append({"step": step, "loss_d": loss_d.item(), "logit_real": real.mean().item(),
                          "logit_fake": fake.mean().item(), "gap": (real.mean() - fake.mean()).item(),
                          "held_out_accuracy": ((real > 0).float().mean() + (fake < 0).float().mean()).item() / 2})
    emit({"config": args.config, "set": args.set, "t": args.t, "curve": curve}, args.out)


if __name__ == "__main__":
    main()
