"""Datasets: the embedded toy benchmark and OpenVid-1M style folders of mp4 clips."""
from __future__ import annotations

import torch

from workbench.data.synthetic import ToyVideoDataset


def build_dataset(data_cfg, split: str) -> torch.utils.data.Dataset:
    n = data_cfg.train_size if split == "train" else data_cfg.test_size
    if data_cfg.kind == "toy":
        return ToyVideoDataset(split, n, data_cfg.toy)
    if data_cfg.kind == "videos":
        from workbench.data.videos import VideoCSVDataset
        return VideoCSVDataset(data_cfg.videos, split=split, test_size=data_cfg.test_size)
    raise ValueError(f"data.kind: expected 'toy' or 'videos', got {data_cfg.kind!r}")


def collate(items: list[dict]) -> dict:
    """Stack videos (B, 3, T, H, W); keep captions, seeds and ground truth as lists."""
    out = {"video": torch.stack([it["video"] for it in items]), "caption": [it["caption"] for it in items]}
    for key in ("seed", "truth", "path"):
        if key in items[0]:
            out[key] = [it[key] for it in items]
    return out
