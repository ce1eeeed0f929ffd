"""Datasets: the embedded toy benchmark and OpenVid-1M style folders of mp4 clips."""
from __future__ import annotations

import torch

from workbench.data.synthetic import ToyVideoDataset


def build_dataset(data_cfg, split: str) -> torch.utils.data.Dataset:
    if split == "train" and data_cfg.preferences:
        from workbench.data.preferences import PreferenceDataset
        return PreferenceDataset(data_cfg.preferences)
    if split == "train" and data_cfg.cache:  # the clips' pixels read back from the cache (data/cache.py)
        from workbench.data.cache import CachedDataset
        return CachedDataset(data_cfg)
    n = data_cfg.train_size if split == "train" else data_cfg.test_size
    if data_cfg.kind == "toy":
        return ToyVideoDataset(split, n, data_cfg.toy)
    if data_cfg.kind == "videos":
        from workbench.data.videos import VideoCSVDataset
        return VideoCSVDataset(data_cfg.videos, split=split, test_size=data_cfg.test_size)
    raise ValueError(f"data.kind: expected 'toy' or 'videos', got {data_cfg.kind!r}")


def collate(items: list[dict]) -> dict:
    """Stack tensors (videos B,3,T,H,W; preference latents); keep captions, seeds and ground truth as lists."""
    return {k: torch.stack([it[k] for it in items]) if torch.is_tensor(items[0][k]) else [it[k] for it in items]
            for k in items[0]}
