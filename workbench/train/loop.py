"""The only training loop. It knows no method by name: `build_method` supplies losses per optimizer.

Exact resume: the batch of step s and the step's random generator are pure functions of (seed, s),
and a checkpoint holds model, EMA, optimizers, schedulers and the global RNG, so a run killed at any
point and resumed from its last checkpoint ends bitwise equal to an uninterrupted run (on CPU).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from workbench.config import Config, ConfigError, load_config, to_dict
from workbench.data import build_dataset, collate
from workbench.methods import build_method
from workbench.models import build_backbone
from workbench.train.checkpoint import (CheckpointError, complete_checkpoints, load_checkpoint, prune_checkpoints,
                                       save_checkpoint)
from workbench.train.ema import EMA


class NonFiniteLossError(FloatingPointError):
    pass


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The step's only source of randomness (noise, timesteps, caption dropout) on one process."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


class StepBatchSampler(torch.utils.data.Sampler):
    """This process's share of each step's global batch, drawn from a seeded permutation per epoch.

    The data position is the step: resuming at step s needs nothing else. With `world` processes the
    global batch is world * batch_size clips and process `rank` takes its own slice of it.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 rank: int = 0, world: int = 1):
        self.n, self.seed, self.start, self.end = n, seed, start_step, end_step
        self.b, self.lo = batch_size * world, batch_size * rank
        self.hi = self.lo + batch_size

    def __len__(self):
        return max(0, self.end - self.start)

    def __iter__(self):
        perm, epoch = None, -1
        for step in range(self.start, self.end):
            idx = []
            for pos in range(step * self.b, (step + 1) * self.b):
                if pos // self.n != epoch:
                    epoch = pos // self.n
                    perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
                idx.append(int(perm[pos % self.n]))
            yield idx[self.lo:self.hi]


def lr_lambda(cfg, step: int) -> float:
    tc = cfg.train
    if step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    if tc.schedule == "constant":
        return 1.0
    if tc.schedule == "cosine":
        p = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    raise ValueError(f"train.schedule: expected 'constant' or 'cosine', got {tc.schedule!r}")


def train(cfg: Config, out_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train `cfg.train.method` for `cfg.train.steps` steps; returns the run folder.

    Every input is checked before the run folder is touched. A resumed run ends as an uninterrupted one
    would: same weights, optimizer state, checkpoint set, metrics rows and sample sheets.
    """
    tc = cfg.train
    out = Path(out_dir or cfg.out)
    ckpt_root = out / "checkpoints"
    ckpts = _check_run_folder(out, cfg, resume)

    if not torch.distributed.is_initialized():  # one process (a notebook, a test): each run picks its own precision
        AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=tc.mixed_precision)
    torch.manual_seed(tc.seed)
    net, conditioner = build_backbone(cfg.model)
    method = build_method(cfg, net, conditioner)
    ema = EMA(net, tc.ema_decay)
    method.ema = ema.net
    optimizers = {name: torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
                  for name, params in method.param_groups().items()}
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(cfg, s))
                  for name, opt in optimizers.items()}
    dataset = build_dataset(cfg.data, "train")

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    start = _resume(ckpts, net.transformer, ema.net.transformer, optimizers, schedulers, method.modules_to_save())
    prune_checkpoints(ckpt_root, tc.keep_ckpts)        # a run killed before its pruning left one more
    _truncate_metrics(out / "metrics.jsonl", start)    # rows logged after that checkpoint are logged again
    rank, world = accelerator.process_index, accelerator.num_processes
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(len(dataset), tc.batch_size, tc.seed, start, tc.steps, rank, world),
        collate_fn=collate, num_workers=tc.num_workers,
        generator=torch.Generator().manual_seed(tc.seed))  # its own seed draw: the global RNG stays untouched
    net, *opts = accelerator.prepare(net, *optimizers.values())
    optimizers = dict(zip(optimizers, opts))
    ema.net.to(accelerator.device)
    conditioner.to(accelerator.device)
    method.to(accelerator.device).net = net

    bar = tqdm(total=tc.steps, initial=start, desc=cfg.name, disable=not progress or not accelerator.is_main_process)
    t0 = time.time()
    with open(out / "metrics.jsonl", "a") as metrics:
        for step, batch in zip(range(start, tc.steps), loader):
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with accelerator.autocast():
                res = method.losses(batch, step, step_generator(tc.seed, step, rank))
            for name, loss in res.losses.items():
                if not torch.isfinite(loss):
                    bar.close()
                    kept = complete_checkpoints(ckpt_root)
                    raise NonFiniteLossError(
                        f"step {step}: loss '{name}' is {loss.item()}; run stopped, "
                        + (f"last good checkpoint kept: {kept[-1]}" if kept else "no checkpoint had been written"))
            grad_norms = {}
            for name, loss in res.losses.items():
                opt = optimizers[name]
                opt.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                params = [p for g in opt.param_groups for p in g["params"]]
                if world > 1:
                    _average_grads_outside(net, params)
                if tc.grad_clip > 0:
                    grad_norms[f"grad_norm/{name}"] = accelerator.clip_grad_norm_(params, tc.grad_clip).item()
                opt.step()
                schedulers[name].step()
            ema.update(accelerator.unwrap_model(net))
            done = step + 1
            bar.update(1)
            if done % tc.log_every == 0 or done == tc.steps:
                row = {"step": done, **res.logs, **grad_norms, "lr": schedulers[next(iter(schedulers))].get_last_lr()[0],
                       "elapsed_s": round(time.time() - t0, 3)}
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                bar.set_postfix({k: f"{v:.4g}" for k, v in res.logs.items()})
            # The step's outputs first, its checkpoint last: a run killed in between redoes the step on resume.
            if accelerator.is_main_process and (done == tc.steps or (tc.sample_every and done % tc.sample_every == 0)):
                from workbench.generate import sample_sheet
                sample_sheet(ema.net, conditioner, cfg, out / "samples" / f"step-{done:06d}.png")
            if accelerator.is_main_process and (done % tc.ckpt_every == 0 or done == tc.steps):
                save_checkpoint(ckpt_root, done, accelerator.unwrap_model(net).transformer, ema.net.transformer,
                                optimizers, schedulers, {"name": cfg.name}, keep=tc.keep_ckpts,
                                modules=method.modules_to_save())
    bar.close()
    accelerator.wait_for_everyone()
    return out


# Keys a resumed run may change: they decide what is logged, kept or drawn, not what is trained.
RESUMABLE_CHANGES = {"out", "train.log_every", "train.ckpt_every", "train.keep_ckpts", "train.sample_every",
                     "train.sample_num", "train.sample_steps", "train.num_workers"}


def _check_run_folder(out: Path, cfg: Config, resume: bool) -> list[Path]:
    """The run's complete checkpoints, once `out` is known to be a run folder this call may continue."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: is a file; expected a run folder")
    ckpts = complete_checkpoints(out / "checkpoints")
    if ckpts and not resume:
        raise FileExistsError(f"{out}: already holds checkpoints; pass --resume or choose another --out")
    if ckpts and (out / "config.yaml").is_file():
        saved = _flat(to_dict(load_config(out / "config.yaml")))
        for key, value in _flat(to_dict(cfg)).items():
            if key not in RESUMABLE_CHANGES and saved.get(key) != value:
                raise ConfigError(f"--resume: {key} is {value!r} here but {saved.get(key)!r} in {out / 'config.yaml'}; "
                                  f"a resumed run keeps the config it started with (drop the change, or train into "
                                  f"a new --out)")
    return ckpts


def _flat(d: dict, prefix: str = "") -> dict:
    return {k2: v2 for k, v in d.items()
            for k2, v2 in (_flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])}


def _resume(ckpts: list[Path], model, ema, optimizers: dict, schedulers: dict, modules: dict) -> int:
    """Load the newest readable checkpoint (step 0 if there is none); newer unreadable ones are set aside."""
    errors = []
    for ckpt in reversed(ckpts):
        try:
            step = load_checkpoint(ckpt, model, ema, optimizers, schedulers, modules)["step"]
        except CheckpointError as e:
            errors.append((ckpt, e))
            continue
        for bad, e in errors:  # kept for a look, out of the way of the step that will be saved again
            aside = bad.with_name(f".unreadable-{bad.name}")
            os.replace(bad, aside)
            print(f"warning: {e}; set aside as {aside.name}, resuming from {ckpt.name}", file=sys.stderr)
        return step
    if errors:
        raise errors[0][1]
    return 0


def _average_grads_outside(ddp_net, params) -> None:
    """DDP averages the prepared net's gradients; average a method's own networks' (a discriminator) here."""
    inside = {id(p) for p in ddp_net.parameters()}
    for p in params:
        if id(p) not in inside and p.grad is not None:
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from, so metrics.jsonl has each step once."""
    if path.is_file():
        rows = [r for r in path.read_text().splitlines() if _row_step(r) <= step]
        path.write_text("".join(r + "\n" for r in rows))


def _row_step(row: str) -> float:
    """A metrics row's step; a row torn by a kill mid-write counts as after every checkpoint."""
    try:
        return json.loads(row)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
