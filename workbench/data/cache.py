"""The frozen encoders' outputs, computed once (FastVideo's preprocess step): `python -m workbench data cache CONFIG
--out DIR` writes them, and `data.cache: DIR` makes training read them instead of running the VAE, UMT5 and CLIP.

Layout (one folder, written under a temporary name and renamed when complete):

    DIR/cache.json                the settings it was made with (encoders, clips), its splits, per clip caption/seed
    DIR/null.safetensors          text (1, L, D): the empty caption's tokens (classifier-free guidance)
    DIR/train-00000.safetensors   per clip: video (3,T,H,W pixels in data.cache_pixels), x0 (C,T',H',W'),
                                  first, mask, text, image (when the model takes image tokens), digest, first_digest
    DIR/test-00000.safetensors    the same without video (sample sheets read the test clips from their source)

Exactly what `Encoders.prepare(video, captions)` returns is stored (x0 latents and the `Conditioning`'s tensors),
so a cached batch is bitwise the live one on CPU. A clip is found by the digest of its pixels as the cache yields
them (sha256 of the float32 bytes), a TA pair's first frame by the digest of that frame: `models.cached.CachedEncoders`
keeps the `prepare` interface, and the methods, the loop and the sample sheets read the cache without knowing it.
The train split's pixels are stored because DA's and OSV's discriminators read the real clips: in float32
(`data.cache_pixels: float32`, the default) training is bitwise training without the cache, at ~292 MB a clip at
480p x 61 frames; in uint8 (experiments/wan/README.md's recipe) a quarter of that, ~73 MB, the discriminator's real
pixels rounded to the 1/127.5 grid an mp4 decodes to (x0 and the conditioning are still the live ones, bitwise).

A cache made with other settings than the config's (the encoders' folders, dtype, the clips) is refused, naming
the first key that differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from workbench.config import ConfigError, flat, to_dict
from workbench.devices import resolve_device
from workbench.files import check_output_folder, output_folder, writing

INDEX = "cache.json"
VERSION = 2                     # 2: data.cache_pixels
COMMAND = "data-cache"
MODEL_KEYS = ("preset", "transformer_path", "vae_path", "text_encoder_path", "image_encoder_path", "dtype")
FIELDS = ("x0", "first", "mask", "text", "image")    # what Encoders.prepare returns: x0 and the Conditioning


def model_settings(model_cfg) -> dict:
    """The encoders a cache was made with (the preset decides the toy text encoder's width)."""
    return {f"model.{k}": getattr(model_cfg, k) for k in MODEL_KEYS}


def data_settings(data_cfg) -> dict:
    """The settings that decide the clips of both splits."""
    source = {"toy": data_cfg.toy, "videos": data_cfg.videos}[data_cfg.kind]
    out = {"data.kind": data_cfg.kind, **flat(to_dict(source), f"data.{data_cfg.kind}."),
           "data.test_size": data_cfg.test_size, "data.cache_pixels": data_cfg.cache_pixels}
    if data_cfg.kind == "toy":  # the toy train split holds train_size seeds; a CSV's split is its rows
        out["data.train_size"] = data_cfg.train_size
    elif data_cfg.validation_size:  # a CSV's validation rows leave its train split (named only where set: the caches
        out["data.validation_size"] = data_cfg.validation_size   # made before the key existed had none)
    return out


def digest(x: torch.Tensor) -> bytes:
    """sha256 of a clip's (3,T,H,W) or a first frame's (3,H,W) float32 bytes: how the cache finds it."""
    return hashlib.sha256(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).digest()


def to_pixels(stored: torch.Tensor) -> torch.Tensor:
    """The train pixels as the cache yields them: float32 as stored, uint8 back to [-1, 1] (data/videos.py's map)."""
    return stored.float().div(127.5).sub(1.0) if stored.dtype == torch.uint8 else stored


def _stored_pixels(video: torch.Tensor, kind: str) -> torch.Tensor:
    """A clip's (3,T,H,W) [-1, 1] pixels as the cache stores them (data.cache_pixels)."""
    video = video.detach().cpu()
    return video if kind == "float32" else video.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def read_index(folder: str | Path) -> dict:
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"data.cache: {folder / INDEX} not found (make it with `python -m workbench data "
                                f"cache CONFIG --out {folder}`)") from None
    except ValueError as e:
        raise ConfigError(f"data.cache: {folder / INDEX} is not valid JSON ({e})") from None
    if index.get("version") != VERSION:
        raise ConfigError(f"data.cache: {folder} is a version {index.get('version')} cache; this workbench reads "
                          f"version {VERSION}: make it again with --force")
    return index


def check_settings(folder: str | Path, index: dict, now: dict) -> None:
    """Refuse a cache made with other settings, naming the first key that differs."""
    saved = index["settings"]
    for key in sorted(now):
        if saved.get(key) != now[key]:
            raise ConfigError(f"data.cache: {folder} was made with {key}={saved.get(key)!r}, but this config has "
                              f"{key}={now[key]!r}; make it again (`python -m workbench data cache CONFIG --out "
                              f"{folder} --force`) or set data.cache=''")


def _shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.safetensors"


# ---------------------------------------------------------------------------------------------------------- write

def write_cache(cfg, encoders, out: str | Path, force: bool = False, shard_size: int = 256, batch_size: int = 8,
                progress: bool = True, device: str = "auto") -> Path:
    """Encode every clip of cfg's train and test splits once with `encoders` (models.Encoders: `prepare`,
    `null_text`) on `device` into a new folder `out` (or, with `force`, in place of an earlier cache there).
    A cache made on a GPU holds that GPU's numbers: bitwise a live run's only on the same kind of device."""
    from workbench.data import build_dataset, collate
    out = Path(out)
    check_output_folder(out, COMMAND, force)
    encoders.to(device := resolve_device(device))
    source = dataclasses.replace(cfg.data, cache="", preferences="")   # the clips themselves
    splits, shapes = {}, {}
    with output_folder(out, COMMAND, force) as tmp:
        for split in ("train", "test"):
            dataset = build_dataset(source, split)
            splits[split], shapes = _write_split(tmp, split, dataset, encoders, shard_size, batch_size, collate,
                                                 progress, device, cfg.data.cache_pixels)
        with writing(tmp / "null.safetensors"):
            save_file({"text": encoders.null_text(1).float().cpu().contiguous()}, str(tmp / "null.safetensors"))
        settings = {**model_settings(cfg.model), **data_settings(cfg.data)}
        (tmp / INDEX).write_text(json.dumps({"version": VERSION, "settings": settings, "shapes": shapes,
                                             "shard_size": shard_size, "splits": splits}, indent=1))
    return out


def _write_split(tmp: Path, split: str, dataset, encoders, shard_size: int, batch_size: int, collate,
                 progress: bool, device, pixels: str) -> tuple[dict, dict]:
    items, rows, shards, shapes = [], [], 0, {}

    def flush():
        nonlocal rows, shards
        tensors = {k: torch.stack([r[k] for r in rows]).contiguous() for k in rows[0]}
        with writing(path := tmp / _shard_name(split, shards)):
            save_file(tensors, str(path))
        if shards == 0:
            _check_disk(path, len(rows), n, split)
        rows, shards = [], shards + 1

    n = len(dataset)
    for lo in tqdm(range(0, n, batch_size), desc=f"cache {split}", disable=not progress, leave=False):
        batch = collate([dataset[i] for i in range(lo, min(n, lo + batch_size))])
        video = batch.pop("video")
        x0, cond = encoders.prepare(video.to(device), batch["caption"])
        parts = {"x0": x0, "first": cond.first_BCTHW, "mask": cond.mask_BMTHW, "text": cond.text_BLD,
                 "image": cond.image_BND}
        shapes = {k: None if v is None else list(v.shape[1:]) for k, v in parts.items()}
        for b in range(video.shape[0]):
            row = {k: v[b].detach().cpu() for k, v in parts.items() if v is not None}
            yielded = video[b]                   # found by the pixels the cache yields: the train split's stored ones
            if split == "train":
                row["video"] = _stored_pixels(video[b], pixels)
                yielded = to_pixels(row["video"])
            row["digest"] = torch.frombuffer(bytearray(digest(yielded)), dtype=torch.uint8)
            row["first_digest"] = torch.frombuffer(bytearray(digest(yielded[:, 0])), dtype=torch.uint8)
            rows.append(row)
            items.append({k: v[b] for k, v in batch.items()})
            if len(rows) == shard_size:
                flush()
    if rows:
        flush()
    return {"clips": n, "shards": shards, "items": items}, shapes


def _check_disk(first_shard: Path, clips: int, total: int, split: str) -> None:
    """Refuse a split the disk cannot hold, judged by its first shard (with a quarter to spare): e.g. the toy's
    default data.train_size of a million clips."""
    need = first_shard.stat().st_size / clips * total * 1.25
    free = shutil.disk_usage(first_shard.parent).free
    if need > free:
        raise ValueError(f"data cache: the {split} split's {total:,} clips need about {need / 2**20:,.1f} MiB, and "
                         f"the disk of {first_shard.parent.parent} has {free / 2**20:,.1f} MiB free (set "
                         f"data.train_size / data.test_size)")


# ----------------------------------------------------------------------------------------------------------- read

class _Shards:
    """Lazily opened shards of one cache folder (opened again in each DataLoader worker)."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size, self._open = folder, shard_size, {}

    def get(self, split: str, i: int, key: str) -> torch.Tensor:
        k, j = divmod(i, self.shard_size)
        if (split, k) not in self._open:
            self._open[(split, k)] = safe_open(str(self.folder / _shard_name(split, k)), "pt")
        return self._open[(split, k)].get_slice(key)[j]


class CachedDataset(torch.utils.data.Dataset):
    """The train split of a cache: items {video, caption, seed, ...} as the source dataset gives them, read from
    the shards (no mp4 decoded)."""

    def __init__(self, data_cfg):
        self.folder = Path(data_cfg.cache)
        index = read_index(self.folder)
        check_settings(self.folder, index, data_settings(data_cfg))
        self.items = index["splits"]["train"]["items"]
        self.shards = _Shards(self.folder, index["shard_size"])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"video": to_pixels(self.shards.get("train", i, "video")), **self.items[i]}


class CacheIndex:
    """Every cached clip's encoder outputs, found by the digest of its pixels or of its first frame."""

    def __init__(self, folder: str | Path, model_cfg):
        self.folder = Path(folder)
        index = read_index(self.folder)
        check_settings(self.folder, index, model_settings(model_cfg))
        self.shapes = index["shapes"]
        self.shards = _Shards(self.folder, index["shard_size"])
        with safe_open(str(self.folder / "null.safetensors"), "pt") as f:
            self.null_text = f.get_tensor("text")                             # 1, L, D
        self.clips, self.firsts = {}, {}
        for split, info in index["splits"].items():
            for k in range(info["shards"]):
                with safe_open(str(self.folder / _shard_name(split, k)), "pt") as f:
                    for name, table in (("digest", self.clips), ("first_digest", self.firsts)):
                        for j, d in enumerate(f.get_tensor(name)):
                            table.setdefault(bytes(d.tolist()), (split, k * index["shard_size"] + j,
                                                                 info["items"][k * index["shard_size"] + j]))

    def rows(self, keys: list[bytes], by_first: bool = False) -> tuple[dict, list[dict]]:
        """({field: stacked B,... tensors}, the clips' items) for clips given by digest (or first-frame digest)."""
        table = self.firsts if by_first else self.clips
        missing = [i for i, k in enumerate(keys) if k not in table]
        if missing:
            what = "first frame" if by_first else "clip"
            raise ValueError(f"data.cache: {self.folder} holds no {what} like batch item {missing[0]} (made from "
                             f"other clips? make it again with the config's data settings)")
        found = [table[k] for k in keys]
        fields = [f for f in FIELDS if self.shapes[f] is not None]
        out = {f: torch.stack([self.shards.get(split, i, f) for split, i, _ in found]) for f in fields}
        return out, [item for _, _, item in found]
