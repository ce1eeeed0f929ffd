"""Seconds per training step of each toy method against CCD's, from one run, as JSON.

    python bench/method_steps.py [--steps 10] [--out experiments/bench/method_steps.json]

Each method trains from its shipped config (the CCD student's budget: batch 16) through the training loop's own
update (every role due, its optimizer, EMA and target updates; `steps_on_batch`) on one fixed batch, so the data
loader is out of the timing and every method sees the same clips. One warm-up step, then `--steps` timed steps.
The ratios to CCD, not the seconds, are what carries to another machine. Run it alone (pin it with taskset).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from workbench.config import load_config
from workbench.data import build_dataset, collate
from workbench.methods import build_method
from workbench.models import build_backbone
from workbench.train import steps_on_batch

METHODS = {  # label: (config, overrides)
    "ccd": ("experiments/toy/ccd.yaml", []),
    "lcm": ("experiments/toy/lcm.yaml", []),
    "pcm": ("experiments/toy/pcm.yaml", []),
    "pcm_adversarial": ("experiments/toy/pcm.yaml", ["pcm.adversarial=true"]),
    "osv_stage2": ("experiments/toy/osv.yaml", ["osv.stage1_steps=0"]),
    "ccd_da": ("experiments/toy/da.yaml", []),
}


def seconds_per_step(config: str, overrides: list[str], steps: int) -> float:
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    ds = build_dataset(cfg.data, "train")
    batch = collate([ds[i] for i in range(cfg.train.batch_size)])
    steps_on_batch(method, cfg.train, batch, 1)                       # warm-up (and the optimizers' state)
    t0 = time.perf_counter()
    steps_on_batch(method, cfg.train, batch, steps)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    sec = {name: seconds_per_step(cfg, sets, args.steps) for name, (cfg, sets) in METHODS.items()}
    out = {"threads": torch.get_num_threads(), "steps": args.steps, "batch": 16,
           "configs": {k: " ".join([c, *(f"--set {s}" for s in sets)]) for k, (c, sets) in METHODS.items()},
           "sec_per_step": {k: round(v, 3) for k, v in sec.items()},
           "ratio_to_ccd": {k: round(v / sec["ccd"], 2) for k, v in sec.items()}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
