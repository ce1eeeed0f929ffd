"""Does a toy model read the caption's direction word? A probe of the velocity field, as JSON.

    python -m workbench.eval.probes MODEL [--num 16] [--t 0.95,0.7,0.4]

For test clips with their direction removed from the caption, the one-step estimate x0_hat = x_t - t F(x_t, t)
(Eq. 5) is computed from the same x_t under "... moving left" and "... moving right" and under the empty
caption. `left_vs_right` is the mean |difference| of the first pair; `caption_vs_empty` that of the second.
A model that obeys the word moves the object's pixels: on the toy that is a difference near 0.2 at high t.
"""
from __future__ import annotations

import argparse
import json

import torch

from workbench.data.synthetic import ObjectTruth, caption_of
from workbench.flow import denoise, interpolate
from workbench.generate import clip_noise, load_model, test_batch


def _captions(truths: list[list[dict]], direction: str | None) -> list[str]:
    """Each clip's caption stating `direction` for every object (None: no direction), never the speed."""
    return [caption_of([ObjectTruth(**{**o, "direction": direction or o["direction"],
                                       "direction_stated": direction is not None, "speed_stated": False})
                        for o in truth]) for truth in truths]


@torch.no_grad()
def direction_sensitivity(net, conditioner, batch: dict, ts=(0.95, 0.7, 0.4), seed: int = 0) -> dict:
    """{t: {"left_vs_right", "caption_vs_empty"}} of x0_hat on one batch of toy clips."""
    x0, _ = conditioner.prepare(batch["video"], _captions(batch["truth"], None))
    x1 = clip_noise(batch["seed"], tuple(x0.shape[1:]), seed).to(x0)
    conds = {k: conditioner.prepare(batch["video"], caps)[1] for k, caps in {
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run, checkpoint or shipped model folder")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--t", default="0.95,0.7,0.4")
    args = ap.parse_args()
    net, conditioner, cfg = load_model(args.model)
    res = direction_sensitivity(net, conditioner, test_batch(cfg, args.num), [float(x) for x in args.t.split(",")])
    print(json.dumps({"model": args.model, "num": args.num, "x0_hat_mean_abs_diff": res}, indent=1))


if __name__ == "__main__":
    main()
