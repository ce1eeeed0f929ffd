"""Can DA's discriminator see the student's failures at all? Linear probes on frozen features, as JSON.

    python bench/da_probe.py [--model experiments/toy/ccd] [--feature-net toy] [--num 512] [--out FILE]

For train clips, the student's one-step estimate x0_hat = x_t - t F(x_t, t) (Eq. 5; what DA's discriminator reads)
is made at fixed times t; a logistic regression is fitted on frozen features of real clips against x0_hat
(half the clips) and scored on the other half (different clips). Features: the feature net's mean-pooled patch
tokens and CLS of every hidden state the discriminator may read (`--feature-net`, default the toy DINOv2 of DA),
and, as a yardstick, the raw pixels. Accuracy 0.5 = blind; a probe above it before any head is trained says the
information is there. Per t, also the mean |x0_hat - x0| (how far the estimates are from the clips).
"""
from __future__ import annotations

import argparse

import torch

from workbench.data import build_dataset, collate
from workbench.flow import denoise, interpolate
from workbench.methods.parts import frames_of
from workbench.models.dino import frame_tokens, load_feature_net
from workbench.runs import load_model

from _emit import emit  # bench/_emit.py (the script's folder is on sys.path)

TIMES = (0.2, 0.5, 0.8, 1.0)


def probe_accuracy(real_ND: torch.Tensor, fake_ND: torch.Tensor, steps: int = 300) -> float:
    """Held-out accuracy of an L2-regularised logistic regression, real (first half of clips) -> the second half."""
    half = real_ND.shape[0] // 2
    x = torch.cat([real_ND, fake_ND])
    mean, std = x[:half].mean(0), x[:half].std(0) + 1e-6
    z = lambda a: (a - mean) / std  # noqa: E731
    x_tr, y_tr = torch.cat([z(real_ND[:half]), z(fake_ND[:half])]), torch.cat([torch.ones(half), torch.zeros(half)])
    x_te, y_te = torch.cat([z(real_ND[half:]), z(fake_ND[half:])]), torch.cat([torch.ones(len(real_ND) - half),
                                                                              torch.zeros(len(fake_ND) - half)])
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x_tr @ w + b, y_tr) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((x_te @ w + b > 0).float() == y_te).float().mean().item()


def pooled(net, video_BCTHW: torch.Tensor, layers: tuple[int, ...]) -> torch.Tensor:
    """(B, features): per layer, patch tokens and CLS averaged over frames, concatenated."""
    B = video_BCTHW.shape[0]
    toks = frame_tokens(net, frames_of(video_BCTHW), layers)
    return torch.cat([torch.cat([t[:, 1:].mean(1), t[:, 0]], -1).reshape(B, -1, t.shape[-1] * 2).mean(1)
                      for t in toks], -1)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="experiments/toy/ccd")
    ap.add_argument("--feature-net", default="toy")
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--out")
    args = ap.parse_args()
    m = load_model(args.model)
    net = load_feature_net(args.feature_net)
    layers = tuple(range(net.config.num_hidden_layers + 1))
    data = build_dataset(m.config.data, "train")
    gen = torch.Generator().manual_seed(0)
    real, fakes, gaps = [], {t: [] for t in TIMES}, {t: [] for t in TIMES}
    for start in range(0, args.num, 64):
        batch = collate([data[i] for i in range(start, min(start + 64, args.num))])
        x0, cond = m.encoders.prepare(batch["video"], batch["caption"])
        real.append((pooled(net, batch["video"], layers), batch["video"].flatten(1)))
        for t in TIMES:
            t_B = torch.full((x0.shape[0],), t)
            x_t = interpolate(x0, torch.randn(x0.shape, generator=gen), t_B)
            fake = m.encoders.decode(denoise(x_t, m.net(x_t, t_B, cond), t_B))    # x0_hat, B,3,T,H,W
            fakes[t].append((pooled(net, fake, layers), fake.flatten(1)))
            gaps[t].append((fake - batch["video"]).abs().mean().item())
    real_f, real_px = (torch.cat(c) for c in zip(*real))
    out = {"model": args.model, "feature_net": args.feature_net, "clips": args.num, "layers": list(layers),
           "command": f"python bench/da_probe.py --model {args.model} --feature-net {args.feature_net} --num {args.num}",
           "by_t": {}}
    for t in TIMES:
        fake_f, fake_px = (torch.cat(c) for c in zip(*fakes[t]))
        out["by_t"][str(t)] = {"probe_features": probe_accuracy(real_f, fake_f),
                               "probe_pixels": probe_accuracy(real_px, fake_px),
                               "mean_abs_x0_error": sum(gaps[t]) / len(gaps[t])}
    emit(out, args.out)


if __name__ == "__main__":
    main()
