"""The second toy FVD network: a self-supervised 3-D conv video autoencoder whose encoder sees the whole frame.

Why a second one: the toy FVD net (feature_nets.ToyFVDNet) learns from labels (shape, colour, direction, speed)
and so hardly weighs the background (bench/fvd_background.py: background noise and darkening move its FVD by 8
and 12 against 131 between two sets of real clips). Here no label decides what is ignored: the net is trained
only to reconstruct clips through a small bottleneck, and the background is most of every pixel it must redraw.

Encoder: three 3-D convs, 8 x 24 x 24 -> (16, 8, 24, 24) -> (32, 8, 12, 12) -> (latent, 4, 6, 6); decoder: the
mirror image with transposed convs. FVD feature: the activations of all three encoder stages (after the ReLU; the
latent as it is), each mean-pooled and max-pooled over (T, H, W), concatenated (2 x (16 + 32 + 64) = 224-d). The
means carry the background's colours and texture energy, the maxima the bright object. Each stage's block is
centred and scaled to a total variance of 100 over 1,024 held-out FEATURE_SPEC clips (buffers shipped with the
weights), so that every stage weighs the same in the Frechet distance: the pixel-level first stage is what sees
background noise and blur, the latent what sees the whole clip; unscaled, the latent's large variance drowns the
first stage. Measured with bench/fvd_background.py (experiments/bench/fvd_background.json). Like the toy FVD net
it is an evaluation network only (no method trains against it), and it trains on clips from seeds
FEATURE_SEED_OFFSET + i of the wider FEATURE_SPEC, disjoint from the train and test splits.
Rebuild the shipped weights: python -m workbench features train --kind ae --out experiments/toy/fvd_ae
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as nnf

from workbench.data.synthetic import FEATURE_SPEC, ToySpec, render_clip, to_tensor
from workbench.eval.feature_nets import FEATURE_SEED_OFFSET, VAL_SEED_OFFSET, load_frozen_net
from workbench.models.fit import fit


@dataclass
class ToyVideoAEConfig:
    widths: tuple[int, int] = (16, 32)  # encoder convs: 8x24x24 -> 8x12x12 -> 4x6x6 (decoder mirrors them)
    latent: int = 64                    # channels of the (4, 6, 6) latent
    frames: int = 8                     # input clips are resized to frames x size x size
    size: int = 24


class ToyVideoAE(nn.Module):
    def __init__(self, cfg: ToyVideoAEConfig = ToyVideoAEConfig()):
        super().__init__()
        self.cfg, self.frames, self.size = cfg, cfg.frames, cfg.size
        w0, w1 = cfg.widths
        self.encoder = nn.Sequential(nn.Conv3d(3, w0, 3, padding=1), nn.ReLU(),
                                     nn.Conv3d(w0, w1, (3, 4, 4), stride=(1, 2, 2), padding=1), nn.ReLU(),
                                     nn.Conv3d(w1, cfg.latent, 4, stride=2, padding=1))
        dim = 2 * (w0 + w1 + cfg.latent)  # mean + max of every stage
        self.register_buffer("feature_shift", torch.zeros(dim))  # set by calibrate(): per-stage centring and scale
        self.register_buffer("feature_scale", torch.ones(dim))
        self.decoder = nn.Sequential(nn.ReLU(), nn.ConvTranspose3d(cfg.latent, w1, 4, stride=2, padding=1), nn.ReLU(),
                                     nn.ConvTranspose3d(w1, w0, (3, 4, 4), stride=(1, 2, 2), padding=1), nn.ReLU(),
                                     nn.Conv3d(w0, 3, 3, padding=1))

    def resize(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """Clips of any size -> frames x size x size (trilinear), the input the net was trained on."""
        target = (self.frames, self.size, self.size)
        if tuple(video_BCTHW.shape[2:]) == target:
            return video_BCTHW.float()
        return nnf.interpolate(video_BCTHW.float(), size=target, mode="trilinear", align_corners=False)

    def encode(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.resize(video_BCTHW))                          # B, latent, T/2, H/4, W/4

    def pooled(self, video_BCTHW: torch.Tensor) -> list[torch.Tensor]:
        """Per encoder stage (ReLU outputs of the first two convs, then the latent): [mean, max] over (T, H, W)."""
        x, out = self.resize(video_BCTHW), []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in (1, 3, len(self.encoder) - 1):
                out.append(torch.cat([x.mean((2, 3, 4)), x.amax((2, 3, 4))], 1))
        return out

    def embed(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """The FVD feature (B, 2 * (w0 + w1 + latent)): every stage's pooled block, centred and scaled."""
        return (torch.cat(self.pooled(video_BCTHW), 1) - self.feature_shift) * self.feature_scale

    @torch.no_grad()
    def calibrate(self, video_BCTHW: torch.Tensor, variance: float = 100.0) -> None:
        """Centre each stage's pooled block on these clips and scale it to total variance `variance`."""
        blocks = self.pooled(video_BCTHW)
        self.feature_shift.copy_(torch.cat([b.mean(0) for b in blocks]))
        self.feature_scale.copy_(torch.cat([torch.full((b.shape[1],), (variance / b.var(0).sum().item()) ** 0.5)
                                            for b in blocks]))

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """Reconstruction (B, 3, frames, size, size) in [-1, 1] units."""
        return self.decoder(self.encode(video_BCTHW))


def load_toy_video_ae(path: str | Path) -> ToyVideoAE:
    return load_frozen_net(path, ToyVideoAE, ToyVideoAEConfig)


def clips(seeds, spec: ToySpec = FEATURE_SPEC) -> torch.Tensor:
    """Clips (B, 3, T, H, W) in [-1, 1] from their seeds."""
    return torch.stack([to_tensor(render_clip(int(s), spec)[0]) for s in seeds])


@torch.no_grad()
def reconstruction_error(net: ToyVideoAE, num: int = 256, spec: ToySpec = FEATURE_SPEC) -> float:
    """Mean absolute reconstruction error in [0, 255] on validation seeds."""
    x = clips(range(VAL_SEED_OFFSET, VAL_SEED_OFFSET + num), spec)
    return round(float((net(x) - x).abs().mean()) * 127.5, 2)


CALIBRATION_SEEDS = range(VAL_SEED_OFFSET + 1000, VAL_SEED_OFFSET + 2024)  # FEATURE_SPEC clips for calibrate()


def train_toy_video_ae(out: str | Path, steps: int = 1500, batch_size: int = 32, lr: float = 2e-3,
                       seed: int = 0) -> Path:
    """Train the autoencoder on FEATURE_SPEC clips (L1 + MSE), round its weights to float16 (what is shipped),
    calibrate the feature scale and write toy_fvd_ae.safetensors (+ info.json)."""
    torch.manual_seed(seed)
    cfg = ToyVideoAEConfig()
    net = ToyVideoAE(cfg)

    def loss_of_step(step: int) -> tuple[torch.Tensor, dict]:
        x = clips(range(FEATURE_SEED_OFFSET + step * batch_size, FEATURE_SEED_OFFSET + (step + 1) * batch_size))
        y = net(x)
        return nnf.mse_loss(y, x) + nnf.l1_loss(y, x), {}

    t0 = time.perf_counter()
    fit(net.parameters(), loss_of_step, steps, lr, weight_decay=1e-4, desc="toy video AE", shown={"loss": ".4f"})
    seconds = time.perf_counter() - t0
    net.eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.half().float())
    net.calibrate(clips(CALIBRATION_SEEDS))
    info = {"command": f"python -m workbench features train --kind ae --out {out} --steps {steps} "
                       f"--batch {batch_size} --seed {seed}", "steps": steps, "batch_size": batch_size, "lr": lr,
            "seed": seed, "train_seconds": round(seconds), "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in net.parameters()),
            "feature": f"{len(net.feature_scale)}-d: mean + max over (T, H, W) of each encoder stage, each stage "
                       f"scaled to total variance 100 on calibration clips",
            "calibration_seeds": f"{CALIBRATION_SEEDS.start} + [0, {len(CALIBRATION_SEEDS)})",
            "train_seeds": f"{FEATURE_SEED_OFFSET} + [0, {steps * batch_size})",
            "val_seeds": f"{VAL_SEED_OFFSET} + [0, 256)", "spec": asdict(FEATURE_SPEC),
            "recon_mae": reconstruction_error(net),
            "benchmark_spec_recon_mae": reconstruction_error(net, spec=ToySpec())}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "toy_fvd_ae.safetensors"
    params = dict(net.named_parameters())
    save_file({k: v.half().contiguous() if k in params else v.contiguous() for k, v in net.state_dict().items()},
              str(path),
              metadata={"config": json.dumps(asdict(cfg)), "info": json.dumps(info)})
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return path
