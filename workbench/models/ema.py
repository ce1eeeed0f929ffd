"""Exponential moving average of a network: theta^- <- mu theta^- + (1 - mu) theta (Algorithm 1 line 11)."""
from __future__ import annotations

import copy

import torch
from torch.distributed.tensor import DTensor


def frozen_copy(net: torch.nn.Module) -> torch.nn.Module:
    """A copy that trains nothing: the start of an EMA, a target or a teacher."""
    return copy.deepcopy(net).requires_grad_(False).eval()


def trainable_copy(net: torch.nn.Module) -> torch.nn.Module:
    """A copy that trains: a fake score starting as the teacher (DMD2, CDM)."""
    return copy.deepcopy(net).requires_grad_(True).train()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) net, parameter by parameter (a DDP wrapper has the same parameters).

    FSDP (train.fsdp): an EMA sharded like `net` lerps its local shards; an unsharded one (CCD's target) lerps
    towards each parameter all-gathered (a collective: every process calls this)."""
    for ema_p, p in zip(ema.parameters(), net.parameters()):
        src = p.detach()
        if isinstance(src, DTensor) and not isinstance(ema_p, DTensor):
            src = src.full_tensor()
        ema_p.lerp_(src, 1.0 - decay)
