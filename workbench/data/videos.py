"""Real clips: an OpenVid-1M style CSV of mp4 files and captions.

The last `test_size` rows are the test split, the `validation_size` rows before them the validation split, the
rest the train split (a CSV with no more rows than `test_size` and no validation split serves both). A clip that
cannot be read, or is too short, is skipped with a logged warning and counted in `skipped`; the next readable clip
is returned, so training never stops on one bad file.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
from torch.nn import functional as nnf

from workbench.data.io import VideoReadError, read_frames

log = logging.getLogger(__name__)


class VideoCSVDataset(torch.utils.data.Dataset):
    def __init__(self, spec, split: str = "train", test_size: int = 0, validation_size: int = 0):
        csv = Path(spec.csv)
        if not csv.is_file():
            raise FileNotFoundError(f"data.videos.csv: {csv} does not exist (expected an OpenVid-1M style CSV)")
        try:
            table = pd.read_csv(csv)
        except pd.errors.EmptyDataError:
            raise ValueError(f"{csv}: empty CSV, no clips") from None
        for col in (spec.path_column, spec.caption_column):
            if col not in table.columns:
                raise ValueError(f"{csv}: no column {col!r} (columns: {', '.join(map(str, table.columns))})")
        if table.empty:
            raise ValueError(f"{csv}: no clips")
        table = table.iloc[slice(*_rows(len(table), split, test_size, validation_size, csv))]
        self.root = Path(spec.root) if spec.root else (csv.parent / "videos" if (csv.parent / "videos").is_dir()
                                                       else csv.parent)
        self.paths = [str(p) for p in table[spec.path_column]]
        self.captions = [str(c) if isinstance(c, str) else "" for c in table[spec.caption_column]]
        self.spec, self.csv = spec, csv
        self.skipped: Counter[str] = Counter()
        self._check_one_readable(split)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> torch.Tensor:
        """(3, T, H, W) in [-1, 1]: T frames at the stride, short side resized, centre-cropped."""
        s = self.spec
        frames = read_frames(self.root / self.paths[i], [k * s.stride for k in range(s.frames)])
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # T, 3, H, W
        scale = max(s.height / x.shape[2], s.width / x.shape[3])
        size = (max(s.height, round(x.shape[2] * scale)), max(s.width, round(x.shape[3] * scale)))
        x = nnf.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = (size[0] - s.height) // 2, (size[1] - s.width) // 2
        x = x[:, :, top:top + s.height, left:left + s.width]
        return x.permute(1, 0, 2, 3).div(127.5).sub(1.0).clamp(-1, 1)

    def _check_one_readable(self, split: str) -> None:
        """Refuse, before any work and without a warning per clip, a split where no clip can be read."""
        reasons: Counter[str] = Counter()
        first_error = None
        for j in range(len(self)):
            try:
                self.load(j)
                return
            except VideoReadError as e:
                reasons[_reason(e)] += 1
                first_error = first_error or e
        counts = ", ".join(f"{n} {r}" for r, n in reasons.items())
        raise ValueError(f"{self.csv}: none of the {len(self)} {split} clips can be read ({counts}; first: {first_error})")

    def __getitem__(self, i: int) -> dict:
        for k in range(len(self)):
            j = (i + k) % len(self)
            try:
                return {"video": self.load(j), "caption": self.captions[j], "path": self.paths[j]}
            except VideoReadError as e:
                self.skipped[_reason(e)] += 1
                log.warning("skipping clip %s (%s)", self.root / self.paths[j], e)
        raise ValueError(f"{self.csv}: none of its {len(self)} clips can be read")


def _rows(n: int, split: str, test_size: int, validation_size: int, csv: Path) -> tuple[int, int]:
    """(first, end) rows of a split of a CSV of n rows: train | validation | test, in that order."""
    val_start, test_start = n - test_size - validation_size, n - test_size
    if val_start > 0:
        return {"train": (0, val_start), "validation": (val_start, test_start), "test": (test_start, n)}[split]
    if validation_size:
        raise ValueError(f"data.validation_size: {validation_size} validation and {test_size} test rows leave no train "
                         f"rows in {csv} ({n} rows)")
    return 0, n                                          # no more rows than test_size: every split is the whole CSV


def _reason(e: VideoReadError) -> str:
    return "too short" if "frames, needs" in str(e) else "unreadable"
