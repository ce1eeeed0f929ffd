"""Does the toy FVD see backgrounds? FVD of real test clips against edited copies of themselves, as JSON.

    python bench/fvd_background.py [--num 256] [--extractor toy,toy-ae] > experiments/bench/fvd_background.json

One entry per extractor (`toy`: the supervised toy FVD net; `toy-ae`: the self-supervised toy video autoencoder;
or a weights file), each with its FVDs and every FVD divided by its own real-vs-real floor (`relative_to_floor`):
FVDs of different networks are on different scales, their ratios to the floor are comparable.

Edits: the background under patch noise, blurred (its stripes and checkers smeared), or darkened, with the objects
untouched; and, for scale, the objects' colour changed with the background untouched. The floor is FVD between two
disjoint sets of real clips. A metric that sees backgrounds moves with the first two as much as with the third.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import numpy as np
import torch
from scipy import ndimage

from workbench.config import ToySpec
from workbench.data.synthetic import TEST_SEED_OFFSET, render_clip, to_tensor
from workbench.eval.fvd import fvd, load_extractor
from workbench.eval.oracle import covered


def clips(seeds) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, H, W, 3) uint8 clips and their (N, T, H, W) object masks."""
    out, masks = [], []
    for s in seeds:
        video, _, objs = render_clip(TEST_SEED_OFFSET + s, ToySpec())
        out.append(video)
        masks.append(covered([asdict(o) for o in objs], *video.shape[:3]))
    return np.stack(out), np.stack(masks)


def features(extractor, videos: np.ndarray) -> np.ndarray:
    x = torch.stack([to_tensor(v) for v in videos])
    return np.concatenate([extractor(x[i:i + 64]) for i in range(0, len(x), 64)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--extractor", default="toy,toy-ae", help="comma-separated extractors (load_extractor names)")
    args = ap.parse_args()
    real, mask = clips(range(args.num))
    other, _ = clips(range(args.num, 2 * args.num))
    rng = np.random.default_rng(0)
    noise = rng.integers(-40, 41, real.shape[:4])[..., None]
    noised = np.where(mask[..., None], real, np.clip(real.astype(int) + noise, 0, 255)).astype(np.uint8)
    blurred = np.where(mask[..., None], real, ndimage.uniform_filter(real.astype(float), (1, 1, 5, 5, 1)).round()
                       ).astype(np.uint8)
    darkened = np.where(mask[..., None], real, (real * 0.6).round()).astype(np.uint8)
    recoloured = np.where(mask[..., None], np.roll(real, 1, axis=-1), real)    # objects' RGB channels rotated
    edits = (("background_noised", noised), ("background_blurred", blurred), ("background_darkened", darkened),
             ("objects_recoloured", recoloured))
    report = {"num": args.num}
    for spec in args.extractor.split(","):
        extractor = load_extractor(spec)
        ref = features(extractor, real)
        out = {"extractor": extractor.describe(), "num": args.num,
               "fvd_real_vs_other_real": fvd(features(extractor, other), ref)}
        for name, edited in edits:
            out[f"fvd_{name}"] = fvd(features(extractor, edited), ref)
        floor = out["fvd_real_vs_other_real"]
        out["relative_to_floor"] = {name: round(out[f"fvd_{name}"] / floor, 3) for name, _ in edits}
        report[spec] = {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
