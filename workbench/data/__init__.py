"""Datasets: the embedded toy benchmark and OpenVid-1M style folders of mp4 clips."""
from __future__ import annotations

import torch

from workbench.data.synthetic import ToyVideoDataset


SPLITS = ("train", "validation", "test")   # validation: for choosing settings; test: only the tables a reader sees


def split_size(data_cfg, split: str) -> int:
    """Clips in a split: data.train_size, data.validation_size or data.test_size (a split of none is refused)."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    n = getattr(data_cfg, f"{split}_size")
    if n == 0:
        raise ValueError(f"data.{split}_size: 0, so there is no {split} split (set it, e.g. "
                         f"--set data.{split}_size=256)")
    return n


def build_dataset(data_cfg, split: str) -> torch.utils.data.Dataset:
    if split == "train" and data_cfg.preferences:
        from workbench.data.preferences import PreferenceDataset
        return PreferenceDataset(data_cfg.preferences)
    if split == "train" and data_cfg.cache:  # the clips' pixels read back from the cache (data/cache.py)
        from workbench.data.cache import CachedDataset
        return CachedDataset(data_cfg)
    n = split_size(data_cfg, split)
    if data_cfg.kind == "toy":
        return ToyVideoDataset(split, n, data_cfg.toy)
    if data_cfg.kind == "videos":
        from workbench.data.videos import VideoCSVDataset
        return VideoCSVDataset(data_cfg.videos, split=split, test_size=data_cfg.test_size,
                               validation_size=data_cfg.validation_size)
    raise ValueError(f"data.kind: expected 'toy' or 'videos', got {data_cfg.kind!r}")


def collate(items: list[dict]) -> dict:
    """Stack tensors (videos B,3,T,H,W; preference latents); keep captions, seeds and ground truth as lists."""
    return {k: torch.stack([it[k] for it in items]) if torch.is_tensor(items[0][k]) else [it[k] for it in items]
            for k in items[0]}
