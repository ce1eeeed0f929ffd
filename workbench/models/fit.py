"""The small fitting loop of the toy feature nets (the toy FVD net, the toy video autoencoder, the toy DINOv2).

AdamW under a linear-warmup cosine schedule, on the CPU, with a progress bar: no accelerator, no checkpoints, no
EMA. The methods train in the one training loop (workbench.train.loop); this one only pre-trains the frozen nets
that evaluate them or that the adversarial stage reads. The caller's `loss_of_step` draws the step's batch (from
seeds, or from a generator it holds) and runs the net, so the loop itself draws no random numbers.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm


def warmup_cosine(step: int, steps: int) -> float:
    """LR factor at `step` of `steps`: linear warmup over the first steps // 20 (at least 1), times a cosine from
    1 at step 0 to 0 at `steps`."""
    warm = max(1, steps // 20)
    return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))


def fit(params: Iterable[torch.nn.Parameter],
        loss_of_step: Callable[[int], tuple[torch.Tensor, dict[str, torch.Tensor]]],
        steps: int, lr: float, weight_decay: float, *, desc: str, shown: dict[str, str]) -> list[float]:
    """Minimise `loss_of_step(step)` for step = 0 .. steps - 1 with AdamW(lr, weight_decay) under warmup_cosine;
    return the loss of every step.

    `loss_of_step` returns the step's loss and named parts of it to show. Every 20 steps the bar shows the
    entries of `shown` (label -> format spec): "loss" is the loss, any other label the part of that name."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps))
    losses = []
    bar = tqdm(range(steps), desc=desc)
    for step in bar:
        loss, parts = loss_of_step(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(**{k: format(losses[-1] if k == "loss" else parts[k].item(), spec)
                               for k, spec in shown.items()})
    return losses
