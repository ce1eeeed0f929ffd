"""Sample test clips from a trained network: tensors, mp4 files and contact sheets.

Every clip's noise comes from a generator seeded by (seed, clip seed), so any two models, step
counts or batch sizes see the same noise for the same test clip.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import yaml

from workbench.config import Config, load_config, saved_config
from workbench.data import build_dataset, collate
from workbench.data.io import contact_sheet, write_mp4
from workbench.data.synthetic import to_uint8
from workbench.models import build_backbone
from workbench.models.lora import add_lora, merge_lora
from workbench.models.weights import load_weights, tensor_names
from workbench.sampling import euler
from workbench.train.checkpoint import complete_checkpoints


def resolve_weights(path: str | Path) -> tuple[Path, Path]:
    """(weights file, config file) of a run folder, a checkpoint folder, or a shipped model folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint, run or model folder")
    if (p / "checkpoints").is_dir():
        ckpts = complete_checkpoints(p / "checkpoints")
        if not ckpts:
            raise FileNotFoundError(f"{p}: run folder has no complete checkpoint")
        return resolve_weights(ckpts[-1])
    for name in ("ema.safetensors", "model.safetensors"):
        if (p / name).is_file():
            cfg = saved_config(p)
            if cfg is None:
                raise FileNotFoundError(f"{p}: no config.yaml beside the weights or in the run folder")
            return p / name, cfg
    raise FileNotFoundError(f"{p}: expected ema.safetensors or model.safetensors (or a run folder)")


def load_model(path: str | Path, overrides: list[str] = (), merge_lora_weights: bool = True
               ) -> tuple[torch.nn.Module, object, Config]:
    """Network (eval mode) + conditioner + config of a checkpoint, ready to sample (a TA LoRA merged unless asked)."""
    weights, cfg_path = resolve_weights(path)
    cfg = load_config(cfg_path, [f"model.weights={weights}", *overrides])
    if not lora_keys(weights):
        net, conditioner = build_backbone(cfg.model)
        return net.eval().requires_grad_(False), conditioner, cfg
    net, conditioner = build_backbone(dataclasses.replace(cfg.model, weights=""))  # a TA checkpoint: base + LoRA
    add_lora(net.transformer, cfg.dpo.lora_rank, cfg.dpo.lora_alpha, cfg.dpo.lora_targets)
    load_weights(net.transformer, weights, "LoRA checkpoint")
    if merge_lora_weights:
        merge_lora(net.transformer)
    return net.eval().requires_grad_(False), conditioner, cfg


def lora_keys(weights: str | Path) -> list[str]:
    """Names of LoRA tensors in a safetensors state dict (a TA checkpoint holds base + adapter)."""
    return [k for k in tensor_names(weights) if "lora_" in k]


def clip_noise(seeds: list[int], shape_CTHW: tuple[int, ...], seed: int) -> torch.Tensor:
    """x1 per clip from a generator seeded by (seed, clip seed): the same for every model and batch."""
    out = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, s]).generate_state(1)[0]))
        out.append(torch.randn(shape_CTHW, generator=g))
    return torch.stack(out)


@torch.no_grad()
def generate_latents(net, conditioner, batch: dict, steps: int, seed: int = 0, shift: float = 1.0,
                     guidance: float = 1.0) -> torch.Tensor:
    """Latents (B, C, T', H', W') continuing each batch clip's first frame under its caption, on the net's device."""
    device = next(net.parameters()).device
    x0, cond = conditioner.prepare(batch["video"].to(device), batch["caption"])
    noise = clip_noise(batch["seed"], tuple(x0.shape[1:]), seed).to(x0)
    null = conditioner.null_text(x0.shape[0]).to(device) if guidance != 1.0 else None
    return euler(net, noise, cond, steps, shift=shift, guidance=guidance, null_text=null)


@torch.no_grad()
def generate(net, conditioner, batch: dict, steps: int, seed: int = 0, shift: float = 1.0,
             guidance: float = 1.0) -> torch.Tensor:
    """Pixels (B, 3, T, H, W) in [-1, 1] on the CPU (see `generate_latents`)."""
    return conditioner.decode(generate_latents(net, conditioner, batch, steps, seed, shift, guidance)).cpu()


def test_batch(cfg: Config, num: int, start: int = 0) -> dict:
    ds = build_dataset(cfg.data, "test")
    if num > len(ds):
        raise ValueError(f"asked for {num} test clips; data.test_size is {len(ds)}")
    items = [ds[i] for i in range(start, start + num)]
    for i, it in enumerate(items):
        it.setdefault("seed", start + i)
    return collate(items)


def sample_sheet(net, conditioner, cfg: Config, path: Path, steps_list=None, num: int | None = None,
                 seed: int = 0) -> Path:
    """PNG: for each test clip, the real clip then one row per step count."""
    return comparison_sheet({"": (net, conditioner, cfg, steps_list or cfg.train.sample_steps)}, path,
                            num or cfg.train.sample_num, seed)


def comparison_sheet(models: dict, path: Path, num: int, seed: int = 0) -> Path:
    """PNG comparing models on the same test clips and noise.

    `models`: {label: (net, conditioner, cfg, steps_list)}; per clip, the real clip, then a row per
    (model, steps). The first model's config chooses the test clips.
    """
    first_cfg = next(iter(models.values()))[2]
    batch = test_batch(first_cfg, num)
    outs = {}
    for label, (net, conditioner, cfg, steps_list) in models.items():
        was_training = net.training
        net.eval()
        for s in steps_list:
            name = f"{label} {s} steps".strip()
            outs[name] = generate(net, conditioner, batch, s, seed, cfg.sample.shift, cfg.sample.guidance)
        net.train(was_training)
    rows, labels = [], []
    for i in range(batch["video"].shape[0]):
        rows.append(to_uint8(batch["video"][i]))
        labels.append("real")
        for name, video in outs.items():
            rows.append(to_uint8(video[i]))
            labels.append(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, labels).save(path)
    return path


def write_samples(path: str | Path, out: str | Path, steps: int, num: int, seed: int, overrides=()) -> list[Path]:
    """`python -m workbench sample`: mp4 per clip (tiny clips enlarged), a contact sheet, and captions.yaml."""
    if Path(out).exists() and not Path(out).is_dir():
        raise FileExistsError(f"--out {out}: is a file; expected a folder for the clips")
    net, conditioner, cfg = load_model(path, overrides)
    batch = test_batch(cfg, num)
    video = generate(net, conditioner, batch, steps, seed, cfg.sample.shift, cfg.sample.guidance)
    out = Path(out)
    H = video.shape[-2]
    scale = 1 if H >= 128 else 2 * -(-64 // H)  # enlarge tiny clips for viewing, keeping sides even
    files = [write_mp4(out / f"clip-{i:04d}.mp4", to_uint8(v), fps=8, scale=scale) for i, v in enumerate(video)]
    contact_sheet([to_uint8(v) for v in video], [f"{i}" for i in range(num)]).save(out / "contact_sheet.png")
    (out / "captions.yaml").write_text(yaml.safe_dump(
        {f.name: {"caption": c, "seed": s} for f, c, s in zip(files, batch["caption"], batch["seed"])}))
    return files
