"""The loop's side of a method's roles: each trained network with its optimizer, LR schedule, EMA and loss scale,
and one update of the roles due at a step (methods/base.py's `Role` is the method's side).

An update: the due roles' losses from `method.losses` under train.mixed_precision's autocast, then each due role's
update in declared order (zero_grad, backward, grad averaging over processes, clip, AdamW, LR schedule in its own
updates, EMA), then the method's `after_update`. Roles not due have requires_grad off, so no graph is built
through them. Mixed precision is torch's autocast (and for fp16 a loss scaler per role), set per run: accelerate's
own setting is fixed once per process, and a notebook trains runs of different precisions in one.
"""
from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from torch.distributed.tensor import DTensor

from workbench.methods import LossOut, Role, TrainStep
from workbench.models.ema import ema_update, frozen_copy
from workbench.train.fsdp import reshard, shard_role, whole

def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The step's only source of randomness (noise, timesteps, caption dropout) on one process."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(mixed_precision: str, device: torch.device):
    """train.mixed_precision as torch's autocast on `device` (a no-op for "no")."""
    dtype = AUTOCAST[mixed_precision]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def lr_lambda(tc, updates: int, total: int) -> float:
    """The LR factor after `updates` of a role's own updates, out of the `total` it makes in the run."""
    if updates < tc.warmup_steps:
        return (updates + 1) / tc.warmup_steps
    if tc.schedule == "constant":
        return 1.0
    if tc.schedule == "cosine":
        p = (updates - tc.warmup_steps) / max(1, total - tc.warmup_steps)
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    raise ValueError(f"train.schedule: expected 'constant' or 'cosine', got {tc.schedule!r}")


@dataclass
class Trained:
    """The loop's side of a role: its prepared network, optimizer, LR schedule (in its own updates), EMA and loss
    scale. A checkpoint holds each of these (train/checkpoint.py), the role's unwrapped network and its EMA as weights."""
    role: Role
    net: torch.nn.Module                      # role.net wrapped by accelerate (DDP), or sharded in place (FSDP)
    params: list[torch.nn.Parameter]          # role.params, or their sharded replacements (train.fsdp)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: torch.nn.Module | None
    scaler: torch.amp.GradScaler | None = None  # train.mixed_precision fp16 only


def build_trained(roles: dict[str, Role], tc, accelerator) -> dict[str, Trained]:
    """An AdamW and LR schedule per role (its settings over train's), every role prepared by accelerate: wrapped
    in DDP, or (train.fsdp, several processes) sharded with its EMA by FSDP2 and only its optimizer prepared."""
    fsdp = tc.fsdp and accelerator.num_processes > 1
    out = {}
    for name, role in roles.items():
        total = sum(role.due(s) for s in range(tc.steps))
        ema = frozen_copy(role.net) if role.ema is not None else None
        transformer = getattr(role.net, "transformer", None)
        if tc.activation_checkpointing and transformer is not None:
            transformer.enable_gradient_checkpointing()      # diffusers: each block recomputed in backward
        params = role.params
        if fsdp:                                             # fully_shard replaces the parameters: find them by name
            names = {id(p): n for n, p in role.net.named_parameters()}
            shard_role(role.net)
            if ema is not None:
                shard_role(ema)                              # sharded the same way: its update lerps local shards
            now = dict(role.net.named_parameters())
            params = [now[names[id(p)]] for p in role.params]
        opt = torch.optim.AdamW(params, lr=tc.lr if role.lr is None else role.lr,
                                betas=role.betas or tc.betas,
                                weight_decay=tc.weight_decay if role.weight_decay is None else role.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u, total=total: lr_lambda(tc, u, total))
        scaler = torch.amp.GradScaler(accelerator.device.type) if tc.mixed_precision == "fp16" else None
        out[name] = Trained(role, role.net, params, opt, sched, ema, scaler)
    nets = [] if fsdp else [t.net for t in out.values()]
    prepared = accelerator.prepare(*nets, *[t.optimizer for t in out.values()])
    prepared = prepared if isinstance(prepared, tuple) else (prepared,)
    for i, t in enumerate(out.values()):
        t.optimizer = prepared[len(nets) + i]
        t.net = prepared[i] if nets else t.net
        if t.ema is not None:
            t.ema.to(accelerator.device)
    return out


def update_roles(method, trained: dict[str, Trained], batch: dict, step: TrainStep, accelerator, tc) -> LossOut:
    """One step: the due roles' losses, then each due role's update in declared order; the losses, the logs
    (with grad norms) and the method's images.

    DDP's own gradient hooks are off (no_sync): they fail on a net run several times before one backward (DMD2's
    fake score) or reached by another role's backward; `average_grads` does their averaging instead."""
    with ExitStack() as local:
        for t in trained.values():
            local.enter_context(accelerator.no_sync(t.net))
        return _update_roles(method, trained, batch, step, accelerator, tc)


def _update_roles(method, trained: dict[str, Trained], batch: dict, step: TrainStep, accelerator, tc) -> LossOut:
    for name, t in trained.items():  # no graph through a role that does not update now ...
        for p in t.params:
            p.requires_grad_(name in step.due)
    try:
        with autocast(tc.mixed_precision, accelerator.device):
            res = method.losses(batch, step)
    finally:                         # ... and every role trainable again once the graph is built
        for t in trained.values():
            for p in t.params:
                p.requires_grad_(True)
            reshard(t.net)           # FSDP: a root gathered without a backward to come would go stale
    if set(res.losses) != set(step.due):
        raise RuntimeError(f"{type(method).__name__}.losses returned losses for {sorted(res.losses)} at step "
                           f"{step.index}, but the roles due are {sorted(step.due)}")
    logs = dict(res.logs)
    for name, t in trained.items():
        if name not in step.due:
            continue
        t.optimizer.zero_grad(set_to_none=True)
        accelerator.backward(res.losses[name] if t.scaler is None else t.scaler.scale(res.losses[name]))
        average_grads(t.params, accelerator)
        if t.scaler is not None:
            t.scaler.unscale_(t.optimizer)   # the clip and AdamW see the true gradients
        clip = tc.grad_clip if t.role.grad_clip is None else t.role.grad_clip
        if clip > 0:
            logs[f"grad_norm/{name}"] = whole(accelerator.clip_grad_norm_(t.params, clip)).item()
        if t.scaler is None:
            t.optimizer.step()
        else:                                # skips the step on an inf/NaN gradient, then adapts the scale
            t.scaler.step(t.optimizer)
            t.scaler.update()
        t.scheduler.step()
        if t.ema is not None:
            ema_update(t.ema, t.role.net, t.role.ema)
    method.after_update(step)
    return LossOut(res.losses, logs, res.images)


def average_grads(params: list[torch.nn.Parameter], accelerator, bucket: int = 1 << 25) -> None:
    """Each gradient <- its mean over processes (what DDP's reducer does), in buckets of `bucket` elements.
    A sharded gradient (FSDP) is left alone: its backward has reduce-scattered the mean already."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
    while grads:
        n, size = 0, 0
        while n < len(grads) and (n == 0 or size + grads[n].numel() <= bucket):
            size += grads[n].numel()
            n += 1
        flat = torch.cat([g.reshape(-1) for g in grads[:n]])
        torch.distributed.all_reduce(flat)
        flat /= accelerator.num_processes
        for g, part in zip(grads[:n], flat.split([g.numel() for g in grads[:n]])):
            g.copy_(part.view_as(g))
        grads = grads[n:]


def train_step(trained: dict[str, Trained], index: int, generator: torch.Generator, snapshot: bool = False
               ) -> TrainStep:
    """Step `index` as a method sees it: the prepared nets and the roles due now."""
    return TrainStep(index, generator, {n: t.net for n, t in trained.items()},
                     frozenset(n for n, t in trained.items() if t.role.due(index)), snapshot)


def steps_on_batch(method, tc, batch: dict, steps: int, generator=None) -> list[dict]:
    """The loop's update `steps` times on one fixed batch: no data loader, checkpoints or files (tests, notebooks).

    `generator(i)` gives step i's generator (default: the loop's step_generator)."""
    accelerator = Accelerator(cpu=True)
    trained = build_trained(method.roles(), tc, accelerator)
    logs = []
    for i in range(steps):
        step = train_step(trained, i, generator(i) if generator else step_generator(tc.seed, i))
        logs.append(update_roles(method, trained, batch, step, accelerator, tc).logs)
    return logs


