"""Probes of a toy model, as JSON: does it read and obey the caption's direction word, and in which frames does
it fail?

    python -m workbench.eval.probes MODEL [--num 16] [--t 0.95,0.7,0.4]
    python -m workbench.eval.probes MODEL --follow [--num 64] [--steps 25] [--seeds 0]
    python -m workbench.eval.probes MODEL --per-frame [--num 64] [--steps 25] [--seeds 0,1,2]

For test clips with their direction removed from the caption, the one-step estimate x0_hat = x_t - t F(x_t, t)
(Eq. 5) is computed from the same x_t under "... moving left" and "... moving right" and under the empty
caption. `left_vs_right` is the mean |difference| of the first pair; `caption_vs_empty` that of the second.
A model that reads the word moves the object's pixels: an exact one by about 0.2 at high t on the toy; the
shipped teacher, which obeys it in 92-100% of samples (`--follow`), by 0.05.

`--follow`: each test clip is sampled four times, its caption stating each direction word in turn for every
object; per word, the share of objects whose first move (frame 0 -> 1) goes the way that word makes an object at
the clip's start go (away from a wall it starts against). The eval's `direction_agree` asks the same only of the
clips whose caption states their own direction; this asks it of every clip under every word. Chance is about 0.25.

`--per-frame`: the share of objects that are solid (oracle.py's `solid`) in each generated frame 1..T-1, over
test clips and noise seeds, to see where in the clip a sampler breaks objects.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from workbench.data.synthetic import DIRECTIONS, ObjectTruth, caption_of, path, to_uint8
from workbench.eval.oracle import first_move_follows, solid_by_frame
from workbench.flow import denoise, interpolate
from workbench.generate import Model, clip_noise, generate, test_batch
from workbench.runs import load_model


def _captions(truths: list[list[dict]], direction: str | None) -> list[str]:
    """Each clip's caption stating `direction` for every object (None: no direction), never the speed."""
    return [caption_of([ObjectTruth(**{**o, "direction": direction or o["direction"],
                                       "direction_stated": direction is not None, "speed_stated": False})
                        for o in truth]) for truth in truths]


@torch.no_grad()
def direction_sensitivity(net, encoders, batch: dict, ts=(0.95, 0.7, 0.4), seed: int = 0) -> dict:
    """{t: {"left_vs_right", "caption_vs_empty"}} of x0_hat on one batch of toy clips."""
    x0, _ = encoders.prepare(batch["video"], _captions(batch["truth"], None))
    x1 = clip_noise(batch["seed"], tuple(x0.shape[1:]), seed).to(x0)
    conds = {k: encoders.prepare(batch["video"], caps)[1] for k, caps in {
        "left": _captions(batch["truth"], "left"), "right": _captions(batch["truth"], "right"),
        "empty": [""] * x0.shape[0]}.items()}
    out = {}
    for t in ts:
        t_B = torch.full((x0.shape[0],), float(t), device=x0.device)
        x_t = interpolate(x0, x1, t_B)
        x0_hat = {k: denoise(x_t, net(x_t, t_B, c), t_B) for k, c in conds.items()}  # Eq. 5
        out[float(t)] = {"left_vs_right": (x0_hat["left"] - x0_hat["right"]).abs().mean().item(),
                         "caption_vs_empty": (x0_hat["left"] - x0_hat["empty"]).abs().mean().item()}
    return out


def follows_word(videos_THWC: list[np.ndarray], truths: list[list[dict]], word: str) -> float:
    """Share of objects whose first move is the one `word` gives an object at their start (walls included)."""
    hits = []
    for video, truth in zip(videos_THWC, truths):
        hi = video.shape[2] - np.array([o["size"] for o in truth])
        hits += [first_move_follows(video, o, path(*o["xy"][0], word, o["speed"], h, 2)) for o, h in zip(truth, hi)]
    return float(np.mean(hits))


def sampled_clips(model: Model, batch: dict, steps: int, seed: int) -> list[np.ndarray]:
    """The batch's samples as uint8 (T, H, W, 3) clips, with the model's own sampler, shift and guidance."""
    return [to_uint8(v) for v in generate(model, batch, steps, seed)]


def direction_following(model: Model, batch: dict, steps: int, seeds=(0,)) -> dict[str, float]:
    """{word: share of objects that follow it} with every clip's caption stating `word`, over the seeds."""
    out = {}
    for word in DIRECTIONS:
        worded = dict(batch, caption=_captions(batch["truth"], word))
        out[word] = float(np.mean([follows_word(sampled_clips(model, worded, steps, seed),
                                                batch["truth"], word) for seed in seeds]))
    return out


def solid_per_frame(model: Model, batch: dict, steps: int, seeds=(0,)) -> list[float]:
    """Share of solid objects in each generated frame 1..T-1, averaged over the batch's clips and the seeds."""
    rows = [solid_by_frame(clip, truth) for seed in seeds
            for clip, truth in zip(sampled_clips(model, batch, steps, seed), batch["truth"])]
    return np.mean(rows, axis=0).round(3).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run, checkpoint or shipped model folder")
    ap.add_argument("--num", type=int, default=None, help="test clips (default 16; 64 with --follow or --per-frame)")
    ap.add_argument("--t", default="0.95,0.7,0.4")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--follow", action="store_true", help="share of sampled first moves that obey each word")
    mode.add_argument("--per-frame", action="store_true", help="solid share per generated frame")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seeds", default=None, help="noise seeds (default 0,1,2 with --per-frame, 0 with --follow)")
    args = ap.parse_args()
    model = load_model(args.model)  # eval mode, no grad
    num = args.num or (64 if args.per_frame or args.follow else 16)
    batch = test_batch(model.config, num)
    seeds = [int(x) for x in (args.seeds or ("0,1,2" if args.per_frame else "0")).split(",")]
    if args.per_frame:
        solid = solid_per_frame(model, batch, args.steps, seeds)
        out = {"steps": args.steps, "seeds": seeds, "solid_by_frame": dict(enumerate(solid, start=1))}
    elif args.follow:
        follows = direction_following(model, batch, args.steps, seeds)
        out = {"steps": args.steps, "seeds": seeds, "follows_word": follows,
               "mean": float(np.mean(list(follows.values())))}
    else:
        out = {"x0_hat_mean_abs_diff": direction_sensitivity(model.net, model.encoders, batch,
                                                             [float(x) for x in args.t.split(",")])}
    print(json.dumps({"model": args.model, "num": num, **out}, indent=1))


if __name__ == "__main__":
    main()
