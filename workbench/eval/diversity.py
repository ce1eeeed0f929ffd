"""Diversity across noise seeds, per first frame: what a mode-collapsed few-step sampler loses (issue 37).

For one model at one step count, the clips its noise seeds continue from the same first frame:
  pixel_spread         mean over seed pairs of the RMS distance between their clips, frames 1..T-1, in [0, 255]
  direction_agreement  toy: share of seed pairs whose first moves (frame 0 -> 1, as workbench/eval/oracle.py reads
                       them; 'none' for an object not seen moving) are the same, over the objects whose caption states
                       no direction (the teacher ~0.34; a collapsed model 1); NaN for a clip with no such object
Both are per (model, steps), not per seed; a real clip has one continuation, so it has neither.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

from workbench.data.synthetic import DIRECTIONS
from workbench.eval.oracle import first_move_follows


def first_move(video_THWC: np.ndarray, obj: dict) -> str:
    """The oracle's first move of `obj` in a clip: the direction whose one-step path it follows, else 'none'."""
    return next((d for d, step in DIRECTIONS.items() if first_move_follows(video_THWC, obj, [(0, 0), step])), "none")


def pixel_spread(clips_STHWC: np.ndarray) -> float:
    """Mean over seed pairs of the RMS distance between two continuations of one first frame, frames 1..T-1."""
    x = clips_STHWC[:, 1:].astype(np.float32)
    return float(np.mean([np.sqrt(((x[i] - x[j]) ** 2).mean()) for i, j in combinations(range(len(x)), 2)]))


def direction_agreement(clips_STHWC: np.ndarray, truth: list[dict]) -> float:
    """Share of seed pairs with the same first move, averaged over the objects whose caption states no direction."""
    free = [obj for obj in truth if not obj["direction_stated"]]
    if not free:
        return float("nan")
    shares = []
    for obj in free:
        moves = [first_move(clip, obj) for clip in clips_STHWC]
        shares.append(np.mean([a == b for a, b in combinations(moves, 2)]))
    return float(np.mean(shares))


def diversity(clips_SNTHWC: np.ndarray, truths: list[list[dict]] | None = None) -> dict[str, np.ndarray]:
    """Per first frame (N,): pixel_spread and, given the toy's ground truth, direction_agreement, across the S
    seeds' clips (uint8, S x N x T x H x W x 3). NaN everywhere with fewer than two seeds."""
    S, N = clips_SNTHWC.shape[:2]
    by_clip = [clips_SNTHWC[:, n] for n in range(N)]                 # (S, T, H, W, 3) per first frame
    none = np.full(N, np.nan)                                         # one seed: nothing to spread over
    out = {"pixel_spread": np.array([pixel_spread(c) for c in by_clip]) if S > 1 else none}
    if truths:
        out["direction_agreement"] = (np.array([direction_agreement(c, t) for c, t in zip(by_clip, truths)])
                                      if S > 1 else none)
    return out
