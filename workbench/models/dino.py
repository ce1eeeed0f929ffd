"""The frozen per-frame feature net of the adversarial (distribution-alignment) stage: a `transformers.Dinov2Model`.

At real scale it is a DINOv2 folder; at toy scale it is a tiny Dinov2Model trained here and shipped in
experiments/toy/dino, so the discriminator reads the same hidden states through the same code at both scales.
It is separate from the toy FVD net (its own weights, trained on clips from seeds FEATURE_NET_SEED_OFFSET + i),
so a student trained against it cannot fit the evaluation metric. Its pre-training heads (per-patch pixel
coverage mask and mean colour, per-image shape and colour) make its features tell a solid, crisp shape of the
right colour from a fragmented or blurred one; the heads are dropped, only the backbone is shipped.
Rebuild the shipped weights: python -m workbench features train --kind dino
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn import functional as nnf
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from workbench import shipped
from workbench.data.synthetic import COLOURS, FEATURE_SPEC, SHAPES, ToySpec, coverage, render_clip, to_tensor
from workbench.models.fit import fit

FEATURE_NET_SEED_OFFSET = 3_000_000_000   # its clips; FVD net 2e9.., train split 0.., test 1e9..
VAL_SEED_OFFSET = FEATURE_NET_SEED_OFFSET + 100_000_000
TOY_FOLDER = "experiments/toy/dino"   # shipped (workbench.shipped: the repository, or $WORKBENCH_HOME)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def toy_dino_config() -> Dinov2Config:
    """24 px frames, 4 px patches (36 patch tokens + CLS), width 64, 4 layers of 4 heads, MLP 128."""
    return Dinov2Config(image_size=24, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=4,
                        num_attention_heads=4, mlp_ratio=2)


def preprocess(frames_N3HW: torch.Tensor, image_size: int) -> torch.Tensor:
    """Frames in [-1, 1] -> ImageNet-normalised pixel values (N, 3, image_size, image_size); differentiable."""
    x_N3HW = (frames_N3HW.float().clamp(-1, 1) + 1) / 2                           # [0, 1]
    if tuple(x_N3HW.shape[-2:]) != (image_size, image_size):
        x_N3HW = nnf.interpolate(x_N3HW, size=(image_size, image_size), mode="bicubic", align_corners=False,
                               antialias=True)
    mean = x_N3HW.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x_N3HW.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x_N3HW - mean) / std


def load_feature_net(path: str | Path) -> Dinov2Model:
    """A frozen Dinov2Model (eval mode, no grads) from a local folder; "toy" is the shipped experiments/toy/dino."""
    folder = shipped(TOY_FOLDER) if str(path) == "toy" else Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: feature net not found (expected a local transformers Dinov2Model folder)")
    return Dinov2Model.from_pretrained(str(folder), local_files_only=True).eval().requires_grad_(False)


def frame_tokens(net: Dinov2Model, frames_N3HW: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """Hidden states `layers` (0 = embeddings) of frames in [-1, 1], each (N, 1 + L, D) with CLS first."""
    size = net.config.image_size
    size = size if isinstance(size, int) else size[0]
    pixels_N3SS = preprocess(frames_N3HW, size).to(net.dtype)
    hidden = net(pixel_values=pixels_N3SS, output_hidden_states=True).hidden_states
    return [hidden[i] for i in layers]


def _patches(x_NCHW: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, C * p * p): row-major patches, the order of the Dinov2 patch tokens."""
    N, C, H, W = x_NCHW.shape
    x = x_NCHW.reshape(N, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(N, (H // p) * (W // p), C * p * p)


def toy_frames(seeds: range, spec: ToySpec, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """One frame per clip (random with `gen`, else the first) and its targets: coverage mask, shape, colour."""
    frames, masks, shapes, colours = [], [], [], []
    for s in seeds:
        video, _, truth = render_clip(int(s), spec)
        f = int(torch.randint(spec.frames, (1,), generator=gen)) if gen is not None else 0
        frames.append(to_tensor(video[f:f + 1])[:, 0])
        masks.append(torch.from_numpy(coverage(truth, spec.frames, spec.size)[f]).float())
        shapes.append(SHAPES.index(truth[0].shape))
        colours.append(list(COLOURS).index(truth[0].colour))
    return torch.stack(frames), {"mask": torch.stack(masks)[:, None], "shape": torch.tensor(shapes),
                                 "colour": torch.tensor(colours)}


class _Heads(nn.Module):
    """Pre-training heads: per patch p*p mask logits + mean RGB; from the pooled CLS shape and colour logits."""

    def __init__(self, width: int, patch: int):
        super().__init__()
        self.patch = patch
        self.mask = nn.Linear(width, patch * patch)
        self.rgb = nn.Linear(width, 3)
        self.shape = nn.Linear(width, len(SHAPES))
        self.colour = nn.Linear(width, len(COLOURS))

    def forward(self, out) -> dict[str, torch.Tensor]:
        tokens_NLD = out.last_hidden_state[:, 1:]                                  # final layernorm, patches
        return {"mask": self.mask(tokens_NLD), "rgb": self.rgb(tokens_NLD),
                "shape": self.shape(out.pooler_output), "colour": self.colour(out.pooler_output)}


def _losses(pred: dict, frames_N3HW: torch.Tensor, y: dict, patch: int) -> tuple[torch.Tensor, dict]:
    logs = {"mask": nnf.binary_cross_entropy_with_logits(pred["mask"], _patches(y["mask"], patch)),
            "rgb": nnf.mse_loss(pred["rgb"], _patches(frames_N3HW, patch).unflatten(2, (3, -1)).mean(-1)) * 10,
            "shape": nnf.cross_entropy(pred["shape"], y["shape"]),
            "colour": nnf.cross_entropy(pred["colour"], y["colour"])}
    return sum(logs.values()), logs


@torch.no_grad()
def _metrics(net: Dinov2Model, heads: _Heads, num: int = 512, batch_size: int = 128) -> dict[str, float]:
    """Held-out shape and colour accuracy and mean per-image mask IoU (first frames of validation clips)."""
    hits_shape = hits_colour = iou = 0.0
    for start in range(0, num, batch_size):
        frames, y = toy_frames(range(VAL_SEED_OFFSET + start, VAL_SEED_OFFSET + min(start + batch_size, num)),
                               FEATURE_SPEC)
        pred = heads(net(pixel_values=preprocess(frames, net.config.image_size)))
        hits_shape += (pred["shape"].argmax(-1) == y["shape"]).sum().item()
        hits_colour += (pred["colour"].argmax(-1) == y["colour"]).sum().item()
        mask_NL = pred["mask"] > 0
        gt_NL = _patches(y["mask"], heads.patch) > 0.5
        iou += ((mask_NL & gt_NL).sum((1, 2)) / (mask_NL | gt_NL).sum((1, 2)).clamp(min=1)).sum().item()
    return {"acc_shape": round(hits_shape / num, 4), "acc_colour": round(hits_colour / num, 4),
            "mask_iou": round(iou / num, 4)}


def train_toy_dino(out: str | Path, steps: int = 3000, batch_size: int = 64, lr: float = 1e-3,
                   seed: int = 0) -> Path:
    """Pre-train the toy Dinov2Model on single frames of FEATURE_SPEC clips; save the backbone folder to `out`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = Dinov2Model(toy_dino_config())
    heads = _Heads(net.config.hidden_size, net.config.patch_size)

    def loss_of_step(step: int) -> tuple[torch.Tensor, dict]:
        seeds = range(FEATURE_NET_SEED_OFFSET + step * batch_size, FEATURE_NET_SEED_OFFSET + (step + 1) * batch_size)
        frames, y = toy_frames(seeds, FEATURE_SPEC, gen)
        pred = heads(net(pixel_values=preprocess(frames, net.config.image_size)))
        return _losses(pred, frames, y, net.config.patch_size)

    start = time.time()
    fit([*net.parameters(), *heads.parameters()], loss_of_step, steps, lr, weight_decay=0.01, desc="toy DINOv2",
        shown={"loss": ".3f", "mask": ".3f", "shape": ".2f"})
    net.eval()
    info = {"command": f"python -m workbench features train --kind dino --out {out} --steps {steps} "
                       f"--batch {batch_size} --seed {seed}", "steps": steps, "batch_size": batch_size, "lr": lr,
            "seed": seed, "train_seeds": f"{FEATURE_NET_SEED_OFFSET} + [0, {steps * batch_size}), a random frame each",
            "val_seeds": f"{VAL_SEED_OFFSET} + [0, 512), first frame each", "spec": asdict(FEATURE_SPEC),
            "train_seconds": round(time.time() - start), **_metrics(net, heads)}
    out = Path(out)
    net.save_pretrained(out, safe_serialization=True)
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return out
