"""Frozen evaluation networks: the toy FVD net (trained here, shipped) and per-frame feature nets for VBench.

`ToyFVDNet` is the toy benchmark's stand-in for I3D and DINO. From a clip it classifies the object's shape,
colour, first visible direction of motion and speed; per frame it classifies shape and colour and predicts a
6 x 6 thumbnail of the background. Its 64-d video embedding (what the linear video heads read) is the FVD
feature; its per-frame subject embedding and background thumbnail are the toy's frame features for the
VBench-style dimensions. Features are max-pooled over space (small objects on textured backgrounds).
It is an evaluation network only: no method trains against it (the adversarial stage builds its own frozen
feature net), so a student cannot fit the metric. It trains on clips from seeds FEATURE_SEED_OFFSET + i,
disjoint from the train (0..) and test (10^9..) splits, drawn from a wider spec than the benchmark's (free
positions, speeds 1-4, sizes 6-10) so that off-grid, slow or odd-sized objects are in its training data too.
Rebuild the shipped weights: python -m workbench features train --out experiments/toy/fvd
"""
from __future__ import annotations

import abc
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as nnf
from safetensors.torch import save_file
from torch import nn

from workbench.data.synthetic import (COLOURS, DIRECTIONS, FEATURE_SPEC, SHAPES, ToySpec, coverage, render_clip,
                                      to_tensor)
from workbench.models.fit import fit
from workbench.models.weights import WeightsError, load_weights

FEATURE_SEED_OFFSET = 2_000_000_000       # toy FVD net clips; train/test splits use seeds from 0 and from 10^9
VAL_SEED_OFFSET = FEATURE_SEED_OFFSET + 100_000_000
SPEEDS = (1, 2, 3, 4)


@dataclass
class ToyFVDNetConfig:
    widths: tuple[int, int, int] = (16, 32, 64)  # per-frame conv trunk: 24 -> 12 -> 6 px
    video_widths: tuple[int, int] = (48, 64)    # 3-D convs over the trunk's (T, 6, 6) maps
    embed: int = 64                             # video (FVD) and per-frame subject embedding
    frames: int = 8                             # input clips are resized to frames x size x size
    size: int = 24


class ToyFVDNet(nn.Module):
    def __init__(self, cfg: ToyFVDNetConfig = ToyFVDNetConfig()):
        super().__init__()
        self.cfg, self.frames, self.size = cfg, cfg.frames, cfg.size
        w0, w1, w2 = cfg.widths
        self.trunk = nn.Sequential(nn.Conv2d(3, w0, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(w0, w1, 3, stride=2, padding=1), nn.ReLU(),
                                   nn.Conv2d(w1, w2, 3, stride=2, padding=1), nn.ReLU())
        self.subject = nn.Linear(w2, cfg.embed)
        self.background = nn.Conv2d(w2, 3, 1)
        v0, v1 = cfg.video_widths
        self.temporal = nn.Sequential(nn.Conv3d(w2, v0, 3, padding=1), nn.ReLU(),
                                      nn.Conv3d(v0, v1, 3, stride=(1, 2, 2), padding=1), nn.ReLU())
        self.video = nn.Linear(v1, cfg.embed)
        self.heads = nn.ModuleDict({"frame_shape": nn.Linear(cfg.embed, len(SHAPES)),
                                    "frame_colour": nn.Linear(cfg.embed, len(COLOURS)),
                                    "shape": nn.Linear(cfg.embed, len(SHAPES)),
                                    "colour": nn.Linear(cfg.embed, len(COLOURS)),
                                    "direction": nn.Linear(cfg.embed, len(DIRECTIONS)),
                                    "speed": nn.Linear(cfg.embed, len(SPEEDS))})

    def resize(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """Clips of any size -> frames x size x size (trilinear), the input the net was trained on."""
        target = (self.frames, self.size, self.size)
        if tuple(video_BCTHW.shape[2:]) == target:
            return video_BCTHW.float()
        return nnf.interpolate(video_BCTHW.float(), size=target, mode="trilinear", align_corners=False)

    def frame_maps(self, frames_N3HW: torch.Tensor) -> torch.Tensor:
        if tuple(frames_N3HW.shape[-2:]) != (self.size, self.size):
            frames_N3HW = nnf.interpolate(frames_N3HW.float(), size=(self.size, self.size), mode="bilinear",
                                        align_corners=False)
        return self.trunk(frames_N3HW.float())                                     # N, w2, 6, 6

    def frame_features(self, frames_N3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per frame: subject embedding (N, embed) and background thumbnail (N, 3*6*6)."""
        maps = self.frame_maps(frames_N3HW)
        return {"subject": self.subject(maps.amax((2, 3))), "background": self.background(maps).flatten(1)}

    def forward(self, video_BCTHW: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.resize(video_BCTHW)
        B, C, T, H, W = x.shape
        maps = self.frame_maps(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W))  # B*T, w2, h, w
        subject = self.subject(maps.amax((2, 3)))                                  # max-pool: small objects
        vol = maps.reshape(B, T, *maps.shape[1:]).permute(0, 2, 1, 3, 4)          # B, w2, T, h, w
        video = self.video(self.temporal(vol).amax((2, 3, 4)))
        out = {"video": video, "subject": subject.reshape(B, T, -1),
               "background": self.background(maps).reshape(B, T, 3, *maps.shape[2:])}
        out.update({k: head(subject if k.startswith("frame_") else video) for k, head in self.heads.items()})
        return out


def load_frozen_net(path: str | Path, net_class, config_class) -> nn.Module:
    """A frozen evaluation net from a safetensors file whose metadata holds its config (the toy FVD nets)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"--fvd-extractor {path}: not a readable safetensors file ({e})") from None
    cfg = json.loads(meta.get("config", "{}"))
    net = net_class(config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}))
    load_weights(net, path, "--fvd-extractor")
    return net.eval().requires_grad_(False)


def load_toy_fvd_net(path: str | Path) -> ToyFVDNet:
    return load_frozen_net(path, ToyFVDNet, ToyFVDNetConfig)


def _seen_direction(xy: list[tuple[int, int]]) -> int:
    """Index of the first visible move's direction: an object starting at a wall has already bounced."""
    for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
        dx, dy = x1 - x0, y1 - y0
        if dx or dy:
            return list(DIRECTIONS.values()).index((int(np.sign(dx)), 0) if dx else (0, int(np.sign(dy))))
    return 0


def _labels(video_THWC: np.ndarray, truth) -> dict:
    """Class targets of the first object and the 6 x 6 background thumbnail (pixels no object covers)."""
    o = truth[0]
    T, H, W, _ = video_THWC.shape
    free = (~coverage(truth, T, H))[..., None]
    n = free.sum(0)
    bg = np.where(n > 0, (video_THWC * free).sum(0) / np.maximum(n, 1), video_THWC.mean(0))
    thumb = bg.reshape(6, H // 6, 6, W // 6, 3).mean((1, 3)) / 127.5 - 1
    return {"shape": SHAPES.index(o.shape), "colour": list(COLOURS).index(o.colour),
            "direction": _seen_direction(o.xy), "speed": SPEEDS.index(o.speed),
            "background": torch.from_numpy(thumb.transpose(2, 0, 1)).float()}


def toy_batch(seeds: list[int], spec: ToySpec = FEATURE_SPEC) -> tuple[torch.Tensor, dict]:
    """Clips (B, 3, T, H, W) and their targets."""
    videos, labels = [], []
    for s in seeds:
        video, _, truth = render_clip(int(s), spec)
        videos.append(to_tensor(video))
        labels.append(_labels(video.astype(np.float32), truth))
    targets = {k: torch.stack([torch.as_tensor(lb[k]) for lb in labels]) for k in labels[0]}
    return torch.stack(videos), targets


def _losses(out: dict, y: dict) -> tuple[torch.Tensor, dict]:
    T = out["subject"].shape[1]
    logs = {k: nnf.cross_entropy(out[k], y[k]) for k in ("shape", "colour", "direction", "speed")}
    for k in ("shape", "colour"):
        logs[f"frame_{k}"] = nnf.cross_entropy(out[f"frame_{k}"], y[k].repeat_interleave(T))
    logs["background"] = nnf.mse_loss(out["background"], y["background"][:, None].expand_as(out["background"])) * 10
    return sum(logs.values()), logs


@torch.no_grad()
def accuracy(net: ToyFVDNet, num: int = 512, batch_size: int = 128, spec: ToySpec = FEATURE_SPEC) -> dict[str, float]:
    """Held-out accuracy per head (and background thumbnail MAE in [0, 255]) on validation seeds."""
    hits, mae, n = {}, 0.0, 0
    for start in range(0, num, batch_size):
        x, y = toy_batch(range(VAL_SEED_OFFSET + start, VAL_SEED_OFFSET + min(start + batch_size, num)), spec)
        out = net(x)
        for k in ("shape", "colour", "direction", "speed"):
            hits[k] = hits.get(k, 0) + (out[k].argmax(-1) == y[k]).sum().item()
            fk = f"frame_{k}" if k in ("shape", "colour") else None
            if fk:
                pred = out[fk].argmax(-1).reshape(len(x), -1)
                hits[fk] = hits.get(fk, 0) + (pred == y[k][:, None]).float().mean(1).sum().item()
        mae += (out["background"] - y["background"][:, None]).abs().mean((1, 2, 3, 4)).sum().item() * 127.5
        n += len(x)
    return {**{f"acc_{k}": round(v / n, 4) for k, v in hits.items()}, "background_mae": round(mae / n, 2)}


def train_toy_fvd_net(out: str | Path, steps: int = 1000, batch_size: int = 48, lr: float = 2e-3,
                      seed: int = 0) -> Path:
    """Train the toy FVD net on FEATURE_SPEC clips and write toy_fvd.safetensors (+ info.json) to `out`."""
    torch.manual_seed(seed)
    cfg = ToyFVDNetConfig()
    net = ToyFVDNet(cfg)

    def loss_of_step(step: int) -> tuple[torch.Tensor, dict]:
        x, y = toy_batch(range(FEATURE_SEED_OFFSET + step * batch_size, FEATURE_SEED_OFFSET + (step + 1) * batch_size))
        loss, logs = _losses(net(x), y)
        return loss, {"dir": logs["direction"]}

    fit(net.parameters(), loss_of_step, steps, lr, weight_decay=1e-4, desc="toy FVD net",
        shown={"loss": ".3f", "dir": ".2f"})
    net.eval()
    info = {"command": f"python -m workbench features train --out {out} --steps {steps} --batch {batch_size} "
                       f"--seed {seed}", "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "train_seeds": f"{FEATURE_SEED_OFFSET} + [0, {steps * batch_size})",
            "val_seeds": f"{VAL_SEED_OFFSET} + [0, 512)", "spec": asdict(FEATURE_SPEC), **accuracy(net),
            "benchmark_spec_accuracy": accuracy(net, spec=ToySpec())}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "toy_fvd.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"config": json.dumps(asdict(cfg)), "info": json.dumps(info)})
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return path


class FrameFeatures(abc.ABC):
    """Interface for VBench: frames (N, 3, H, W) in [-1, 1] -> features (N, D); `name` names net and weights."""

    name: str

    @abc.abstractmethod
    def __call__(self, frames_N3HW: torch.Tensor) -> torch.Tensor:
        """Features of the input (see the class docstring)."""


class ToyFrameFeatures(FrameFeatures):
    """The toy FVD net per frame: its subject embedding (stands in for DINO) or background thumbnail (for CLIP)."""

    def __init__(self, net: ToyFVDNet, kind: str, weight_hash: str):
        if kind not in ("subject", "background"):
            raise ValueError(f"kind must be 'subject' or 'background', got {kind!r}")
        self.net, self.kind, self.name = net, kind, f"toy-fvd-{kind}@{weight_hash}"

    @torch.no_grad()
    def __call__(self, frames_N3HW: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        return self.net.frame_features(frames_N3HW.to(device))[self.kind].float().cpu()


class Dinov2FrameFeatures(FrameFeatures):
    """DINOv2 (transformers `Dinov2Model`, local folder): CLS after the final norm, frames resized to 224 x 224."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import Dinov2Model
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: DINOv2 folder not found (a local transformers Dinov2Model folder)")
        self.model = Dinov2Model.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype).to(device).eval()
        self.device, self.dtype, self.name = device, dtype, f"dinov2:{Path(path).name}"

    @torch.no_grad()
    def __call__(self, frames_N3HW: torch.Tensor) -> torch.Tensor:
        x = nnf.interpolate(frames_N3HW.float(), size=(224, 224), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.MEAN).view(1, 3, 1, 1)
        std = torch.tensor(self.STD).view(1, 3, 1, 1)
        x = (((x.clamp(-1, 1) + 1) / 2 - mean) / std).to(self.device, self.dtype)
        return self.model(pixel_values=x).pooler_output.float().cpu()
