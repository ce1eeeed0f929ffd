from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch


@dataclass
class LossOut:
    losses: dict[str, torch.Tensor]              # optimizer name -> scalar loss to minimise
    logs: dict[str, float] = field(default_factory=dict)


class Method(abc.ABC):
    """The trained network is `self.net`; the loop sets `self.ema` to its EMA copy before step 0."""

    def __init__(self, cfg, net, conditioner):
        self.cfg, self.net, self.cond = cfg, net, conditioner
        self.ema: torch.nn.Module | None = None

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"model": [p for p in self.net.parameters() if p.requires_grad]}

    @abc.abstractmethod
    def losses(self, batch: dict, step: int, generator: torch.Generator) -> LossOut:
        """Scalar loss per optimizer for one batch; `generator` is the step's only source of randomness."""
