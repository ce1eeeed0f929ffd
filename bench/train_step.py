"""Toy training and sampling speed on this machine, as JSON.

    python bench/train_step.py [--steps 20] [--batch 32]
Times flow-matching steps of the toy teacher (forward + backward + AdamW + EMA, data included) and
one Euler sampling step, and derives the wall time of the shipped teacher's recipe (the steps of every stage
of experiments/toy/teacher_recipe.yaml; the stages share the network and batch, so a step costs the same).
CPU timings on a shared machine are noisy: run it alone.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from workbench.data import build_dataset, collate
from workbench.methods import TrainStep, build_method, load_config
from workbench.models import PRESETS, build_backbone
from workbench.pipeline import load_pipeline
from workbench.models.ema import ema_update, frozen_copy
from workbench.sampling import euler, schedule
from workbench.train.roles import step_generator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="experiments/toy/teacher.yaml")
    ap.add_argument("--recipe", default="experiments/toy/teacher_recipe.yaml", help="pipeline whose steps are summed")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    cfg = load_config(args.config, [f"train.batch_size={args.batch}"])
    recipe_steps = sum(load_config(s.config, s.set).train.steps for s in load_pipeline(args.recipe).stages)
    torch.manual_seed(0)
    net, cond = build_backbone(cfg.model)
    method = build_method(cfg, net, cond)
    ema = frozen_copy(net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr)
    ds = build_dataset(cfg.data, "train")

    def train_step(step: int) -> None:
        batch = collate([ds[i] for i in range(step * args.batch, (step + 1) * args.batch)])
        loss = method.losses(batch, TrainStep(step, step_generator(0, step), {"model": net}, frozenset({"model"})))
        opt.zero_grad()
        loss.losses["model"].backward()
        opt.step()
        ema_update(ema, net, cfg.train.ema_decay)

    train_step(0)  # warm-up
    t0 = time.perf_counter()
    for s in range(1, args.steps + 1):
        train_step(s)
    sec_step = (time.perf_counter() - t0) / args.steps

    batch = collate([ds[i] for i in range(args.batch)])
    x0, c = cond.prepare(batch["video"], batch["caption"])
    with torch.no_grad():
        euler(net, torch.randn_like(x0), c, schedule(1))
        t0 = time.perf_counter()
        euler(net, torch.randn_like(x0), c, schedule(10))
        sec_euler = (time.perf_counter() - t0) / 10
    tokens = 1
    for n, p in zip(x0.shape[2:], PRESETS[cfg.model.preset]["patch_size"]):
        tokens *= n // p
    print(json.dumps({
        "config": args.config, "threads": torch.get_num_threads(), "batch": args.batch, "tokens_per_clip": tokens,
        "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
        "train_sec_per_step": round(sec_step, 4), "train_clips_per_sec": round(args.batch / sec_step, 1),
        "recipe": args.recipe, "recipe_steps": recipe_steps, "recipe_minutes": round(recipe_steps * sec_step / 60, 1),
        "euler_step_sec_per_clip": round(sec_euler / args.batch, 5),
        "ratio_train_step_to_euler_step": round(sec_step / sec_euler, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
