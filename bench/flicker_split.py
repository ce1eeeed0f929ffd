"""Where do the temporal flickering and motion smoothness proxies' errors come from? Objects or background, as JSON.

    python bench/flicker_split.py [--models experiments/toy/ccd,experiments/toy/da] [--steps 1,2,4] [--num 64]
                                  [--seeds 0,1,2] [--out FILE]

VBench's temporal flickering is (255 - mean_t mean |x_t - x_{t-1}|) / 255 over every pixel. On the toy a moving
object changes the pixels it enters and leaves, so a solid object costs the proxy more than a faded one. This
splits the mean frame difference (in [0, 255], averaged over the same pixels as the proxy) into the share from
background pixels (outside every true object and every object-coloured pixel of the clip in both frames: the
oracle's background mask) and the rest (objects, wherever the model drew them), for the real test clips and each
model's samples with the evaluation's noise (mean over seeds, and `*_std` their std). Motion smoothness (255 - mean
|interp(x_even) - x_odd|) / 255 is split the same way (`smooth_*`): its mean interpolation error, from background
pixels (background in the odd frame and both even frames beside it) and from the rest.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from workbench.data.synthetic import to_uint8
from workbench.eval.oracle import background_mask
from workbench.eval.vbench import interpolation_error, temporal_flickering
from workbench.generate import generate, test_batch
from workbench.runs import load_model

from _emit import emit  # bench/_emit.py (the script's folder is on sys.path)


def split(clips_BTHWC: np.ndarray, truths: list) -> dict[str, float]:
    """The proxies' errors, each split into the background's share and the rest (they sum to it): the flickering
    proxy's mean |x_t - x_{t-1}| (255 (1 - temporal_flickering)) and the smoothness proxy's mean interpolation
    error (255 (1 - motion_smoothness_proxy))."""
    px_BTCHW = torch.from_numpy(clips_BTHWC).permute(0, 1, 4, 2, 3).float()
    flicker = float(temporal_flickering(px_BTCHW).mean())
    interp_BKHW = interpolation_error(px_BTCHW).numpy()       # odd frames 1, 3, ..., 2k - 1
    background, smooth_background = 0.0, 0.0
    for clip, truth, interp in zip(clips_BTHWC, truths, interp_BKHW):
        diff = np.abs(clip[1:].astype(np.float32) - clip[:-1].astype(np.float32)).mean(-1)      # T-1, H, W
        bg = background_mask(clip, truth)                                                         # T, H, W
        background += float((diff * (bg[1:] & bg[:-1])).sum() / diff.size)
        k = interp.shape[0]
        still = bg[0:2 * k:2] & bg[1:2 * k:2] & bg[2:2 * k + 1:2]                                 # k, H, W
        smooth_background += float((interp * still).mean())
    n = len(clips_BTHWC)
    total, smooth = 255 * (1 - flicker), float(interp_BKHW.mean())
    return {"frame_diff": total, "from_background": background / n, "from_objects": total - background / n,
            "temporal_flickering": flicker, "smooth_err": smooth, "smooth_from_background": smooth_background / n,
            "smooth_from_objects": smooth - smooth_background / n, "motion_smoothness_proxy": 1 - smooth / 255}


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="experiments/toy/ccd,experiments/toy/da")
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out")
    args = ap.parse_args()
    models, steps, seeds = args.models.split(","), [int(s) for s in args.steps.split(",")], \
        [int(s) for s in args.seeds.split(",")]
    out = {"command": f"python bench/flicker_split.py --models {args.models} --steps {args.steps} "
                      f"--num {args.num} --seeds {args.seeds}", "models": {}}
    for path in models:
        m = load_model(path)
        batch = test_batch(m.config, args.num)
        reals = np.stack([to_uint8(v) for v in batch["video"]])
        out.setdefault("real", split(reals, batch["truth"]))
        rows = {}
        for k in steps:
            per_seed = [split(np.stack([to_uint8(v) for v in generate(m, batch, k, s)]), batch["truth"])
                        for s in seeds]
            rows[str(k)] = {key: float(np.mean([p[key] for p in per_seed])) for key in per_seed[0]}
            if len(seeds) > 1:                                       # the spread over seeds, as the tables' ±
                rows[str(k)].update({f"{key}_std": float(np.std([p[key] for p in per_seed], ddof=1))
                                     for key in per_seed[0]})
        out["models"][path] = rows
    emit(out, args.out)


if __name__ == "__main__":
    main()
