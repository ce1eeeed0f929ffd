"""FSDP2 (`torch.distributed.fsdp.fully_shard`) of a trained role, applied by the loop itself (train.fsdp).

Each diffusers `WanTransformerBlock` in the role is one FSDP unit and the role's network the root: parameters
become DTensors sharded on dim 0 over all processes, all-gathered per unit for its forward and backward, with
gradients reduce-scattered (averaged) into the shards. The same code runs on CPU (gloo) and GPUs (NCCL): accelerate
1.15 applies its own FSDP plugin only on GPU-like devices, so the loop does not use it.
Checkpoints hold whole tensors: `whole` gathers one (a collective: every process calls it, in the same order)
and `shard_like` cuts a whole tensor read from disk into this process's shard of a live one.
"""
from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor


def shard_role(net: torch.nn.Module) -> torch.nn.Module:
    """fully_shard each Wan transformer block in `net`, then `net` as the root (in place; returns `net`)."""
    for module in net.modules():
        if isinstance(module, WanTransformerBlock):
            fully_shard(module)
    return fully_shard(net)


def reshard(net: torch.nn.Module) -> None:
    """Free the all-gathered parameters of every FSDP unit in `net`. A root keeps its own gathered after a forward
    until its backward; after a forward with no backward (no_grad, a role not due) they would stay, and go stale
    once the optimizer changes the shards."""
    for module in net.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def whole(t: torch.Tensor) -> torch.Tensor:
    """The full tensor of a shard (all-gathered: a collective); a plain tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` cut as `like` is sharded (each process keeps its own part, no communication); as is if `like` is
    a plain tensor."""
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
