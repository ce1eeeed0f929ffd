"""Reading the preference dataset of trajectory alignment (TA): {caption, first frame, x0^w, x0^l}.

Built by workbench/preferences.py (`python -m workbench preferences`).

Layout (one folder):

    folder/  pairs.json  pairs-00000.safetensors (winner B,C,T,H,W; loser; first B,3,H,W) ...
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open


class PreferenceDataset(torch.utils.data.Dataset):
    """Items {winner, loser: latents C,T,H,W; first: 3,H,W; caption; frames} of a `build_preferences` folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / "pairs.json"
        if not index.is_file():
            raise FileNotFoundError(f"data.preferences: {index} not found (build it with `python -m workbench "
                                    f"preferences MODEL --out {self.folder}`)")
        data = json.loads(index.read_text())
        self.meta, self.items = data["meta"], data["items"]
        self.offsets = {}                                                  # shard -> index of its first item
        for i, it in enumerate(self.items):
            self.offsets.setdefault(it["shard"], i)
        self._open: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _shard(self, k: int):
        if k not in self._open:
            self._open[k] = safe_open(str(self.folder / f"pairs-{k:05d}.safetensors"), "pt")
        return self._open[k]

    def __getitem__(self, i: int) -> dict:
        it = self.items[i]
        f, j = self._shard(it["shard"]), i - self.offsets[it["shard"]]
        return {k: f.get_slice(k)[j] for k in ("winner", "loser", "first")} | {
            "caption": it["caption"], "frames": self.meta["frames"], "seed": it["clip"],
            "noise_seed": self.meta["seed"], "winners": self.meta["winners"]}   # the pair's x1: clip_noise(seed, clip)
