"""Exponential moving average of a network: theta^- <- mu theta^- + (1 - mu) theta (Algorithm 1 line 11)."""
from __future__ import annotations

import copy

import torch


class EMA:
    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = decay
        self.net = copy.deepcopy(net).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        for ema_p, p in zip(self.net.parameters(), net.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)  # = mu ema + (1 - mu) p
