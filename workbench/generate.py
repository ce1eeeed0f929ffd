"""Sample test clips from a model: tensors, mp4 files and contact sheets.

A `Model` is a network with its encoders and config; `cfg.sample` names its sampler, shift and guidance,
so every caller samples a model the way its method needs. Every clip's noise comes from a generator seeded by
(seed, clip seed), so any two models, step counts or batch sizes see the same noise for the same test clip.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from workbench.config import Config
from workbench.data import build_dataset, collate
from workbench.data.io import contact_sheet, view_scale, write_mp4
from workbench.data.synthetic import to_uint8
from workbench.devices import Processes, processes
from workbench.files import check_output_folder, output_folder
from workbench.sampling import get_sampler, schedule


@dataclass
class Model:
    """A network ready to sample (eval mode, no grad) with its frozen encoders and the config it was trained by."""
    net: torch.nn.Module
    encoders: object                  # models.Encoders: pixels <-> latents, captions, first frames
    config: Config
    source: Path | None = None        # the weights file it was loaded from

    @property
    def sampler(self) -> str:
        return self.config.sample.sampler


def seeded_generator(*seeds: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(seeds)).generate_state(1)[0]))


def clip_noise(seeds: list[int], shape_CTHW: tuple[int, ...], seed: int, draw: int = 0) -> torch.Tensor:
    """Noise per clip from a generator seeded by (seed, clip seed[, draw]): the same for every model and batch.

    Draw 0 is x1; a stochastic sampler's fresh noise at its step i is draw i + 1.
    """
    keys = [(seed, s) if draw == 0 else (seed, s, draw) for s in seeds]
    return torch.stack([torch.randn(shape_CTHW, generator=seeded_generator(*k)) for k in keys])


@torch.no_grad()
def generate_latents(model: Model, batch: dict, steps: int, seed: int = 0) -> torch.Tensor:
    """Latents (B, C, T', H', W') continuing each batch clip's first frame under its caption, on the net's device."""
    device = next(model.net.parameters()).device
    sc = model.config.sample
    x0, cond = model.encoders.prepare(batch["video"].to(device), batch["caption"])
    shape = tuple(x0.shape[1:])
    noise = clip_noise(batch["seed"], shape, seed).to(x0)
    null = model.encoders.null_text(x0.shape[0]).to(device) if sc.guidance != 1.0 else None
    fresh = lambda i: clip_noise(batch["seed"], shape, seed, draw=i + 1).to(x0)  # noqa: E731
    return get_sampler(sc.sampler)(model.net, noise, cond, schedule(steps, sc.shift), guidance=sc.guidance,
                                   null_text=null, noise_sampler=fresh)


@torch.no_grad()
def generate(model: Model, batch: dict, steps: int, seed: int = 0) -> torch.Tensor:
    """Pixels (B, 3, T, H, W) in [-1, 1] on the CPU (see `generate_latents`)."""
    return model.encoders.decode(generate_latents(model, batch, steps, seed)).cpu()


def test_batch(cfg: Config, num: int, start: int = 0, split: str = "test") -> dict:
    """Clips start..start+num-1 of a split (default the test split). A clip's seed, which keys its noise
    (`clip_noise`), is the toy's clip seed or (real clips) its index in the split: pairs of models stay paired."""
    ds = build_dataset(cfg.data, split)
    if start + num > len(ds):
        raise ValueError(f"asked for {split} clips {start}-{start + num - 1}; the {split} split holds {len(ds)} "
                         f"(data.{split}_size)")
    items = [ds[i] for i in range(start, start + num)]
    for i, it in enumerate(items):
        it.setdefault("seed", start + i)
    return collate(items)


def sample_sheet(model: Model, path: Path, steps_list=None, num: int | None = None, seed: int = 0,
                 procs: Processes = Processes()) -> Path:
    """PNG: for each test clip, the real clip then one row per step count."""
    cfg = model.config
    return comparison_sheet({"": (model, steps_list or cfg.train.sample_steps)}, path, num or cfg.train.sample_num, seed,
                            procs)


def comparison_sheet(models: dict[str, tuple[Model | Callable[[], Model], list[int]]], path: Path, num: int,
                     seed: int = 0, procs: Processes = Processes()) -> Path:
    """PNG comparing models on the same test clips and noise.

    `models`: {label: (model or a function that loads it, steps_list)}; per clip, the real clip, then a row per
    (model, steps). The first model's config chooses the test clips. Under several processes every one calls this:
    row j is sampled by process j % world (a loader runs only where its rows are), the main one writes the PNG.
    """
    rows = [(label, model, s) for label, (model, steps_list) in models.items() for s in steps_list]
    loaded: dict[str, Model] = {}

    def model_of(j: int) -> Model:                     # a loader runs once, on the process that needs it
        label, model, _ = rows[j]
        if label not in loaded:
            loaded[label] = model if isinstance(model, Model) else model()
        return loaded[label]

    batch = procs.broadcast(test_batch(model_of(0).config, num) if procs.main else None)  # the first model's clips
    outs = {}
    for j in procs.mine(len(rows)):
        model = model_of(j)
        was_training = model.net.training
        model.net.eval()
        outs[j] = np.stack([to_uint8(v) for v in generate(model, batch, rows[j][2], seed)])  # gathered as uint8
        model.net.train(was_training)
    videos = procs.gather(outs, len(rows))
    if procs.main:
        _write_sheet({"real": batch["video"], **{f"{label} {s} step{'s' * (s != 1)}".strip(): v
                                                 for (label, _, s), v in zip(rows, videos)}}, path)
    return path


def estimates_sheet(latents: dict[str, torch.Tensor], encoders, path: Path, num: int) -> Path:
    """PNG of a training step's named latents (B,C,T,H,W), decoded: per clip a row per name (DMD2's x0s)."""
    with torch.no_grad():
        return _write_sheet({name: encoders.decode(x[:num].detach()).cpu() for name, x in latents.items()}, path)


def _write_sheet(videos: dict[str, torch.Tensor | np.ndarray], path: Path) -> Path:
    """Per clip i, a row per named video batch (B,3,T,H,W in [-1, 1], or uint8 B,T,H,W,3) with its label."""
    rows, labels = [], []
    for i in range(len(next(iter(videos.values())))):
        for name, video in videos.items():
            rows.append(video[i] if isinstance(video, np.ndarray) else to_uint8(video[i]))
            labels.append(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, labels).save(path)
    return path


def write_samples(model: Model, out: str | Path, steps: int, num: int, seed: int, force: bool = False) -> list[Path]:
    """`python -m workbench sample`: mp4 per clip (tiny clips enlarged), a contact sheet, and captions.yaml, in a
    new folder, or (force) in place of an earlier sample output, keeping files a user added there. One batch: under
    several processes the main one samples and writes it, the others wait until it is there."""
    check_output_folder(out, "sample", force)
    procs = processes()
    names = [f"clip-{i:04d}.mp4" for i in range(num)]
    if not procs.main:
        procs.barrier()
        return [Path(out) / n for n in names]
    batch = test_batch(model.config, num)
    video = generate(model, batch, steps, seed)
    scale = view_scale(*video.shape[-2:])  # tiny clips enlarged for viewing
    with output_folder(out, "sample", force) as tmp:
        for name, v in zip(names, video):
            write_mp4(tmp / name, to_uint8(v), fps=8, scale=scale)
        contact_sheet([to_uint8(v) for v in video], [f"{i}" for i in range(num)]).save(tmp / "contact_sheet.png")
        (tmp / "captions.yaml").write_text(yaml.safe_dump(
            {n: {"caption": c, "seed": s} for n, c, s in zip(names, batch["caption"], batch["seed"])}))
    procs.barrier()
    return [Path(out) / n for n in names]
