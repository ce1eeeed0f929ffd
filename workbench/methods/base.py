"""What a method is to the training loop: the roles it trains, the frozen networks it reads, its losses.

    roles()   -> {name: Role}     trainable networks, in the order the loop steps them
    frozen()  -> {name: Module}   networks the loop places on the device and never trains (teacher, features)
    state()   -> {name: Module}   method-owned state the loop checkpoints (CCD's target network)
    losses(batch, step: TrainStep) -> LossOut     a scalar loss for each role due at this step, and only those
                                  (and, at snapshot steps, images to look at: DMD2's x0 estimates)
    after_update(step)            e.g. CCD's target EMA (Algorithm 1 line 11)
The loop knows roles, never a method by name, and writes nothing into a method.

A method file declares its settings (`sections`: YAML section name -> dataclass, read as `cfg.<name>`) and
registers its class under its `train.method` name (`@register("name")`); workbench/methods/__init__.py imports
every file of the package, so a new method is one file. A method file imports this module, `parts` and the
layers below, never another method.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from workbench.config import DistillConfig, core_sections
from workbench.flow import interpolate, sample_timesteps
from workbench.models import on_trained_path
from workbench.models.ema import ema_update, frozen_copy
from workbench.models.weights import load_weights
from workbench.sampling import guided_velocity


@dataclass
class Role:
    """A network a method trains, with its own optimizer, update schedule, EMA and export (FastVideo's roles)."""
    net: nn.Module                                # the loop prepares it with accelerate (DDP wraps it)
    params: list[nn.Parameter] | None = None      # trained parameters (default: net's that require grad; a LoRA's)
    lr: float | None = None                       # None: train.lr; likewise betas, weight_decay, grad_clip
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None                # max grad norm (0 = off)
    every: int = 1                                # updated at steps where step % every == offset ...
    offset: int = 0
    when: Callable[[int], bool] | None = None     # ... or where this predicate of the step holds
    ema: float | None = None                      # decay of an EMA updated after each of its updates (None: none)
    export: bool = False                          # the network `export` writes and `sample` loads

    def __post_init__(self):
        if self.params is None:
            self.params = [p for p in self.net.parameters() if p.requires_grad]

    def due(self, step: int) -> bool:
        return self.when(step) if self.when is not None else step % self.every == self.offset


@dataclass
class TrainStep:
    """What the loop hands `losses` at one step."""
    index: int                                    # the optimizer step, from 0
    generator: torch.Generator                    # the step's only source of randomness
    nets: Mapping[str, nn.Module]                 # each role's network as prepared (forward through these)
    due: frozenset[str]                           # roles updated at this step
    snapshot: bool = False                        # a sample-sheet step: the loop saves LossOut.images as a sheet


@dataclass
class LossOut:
    losses: dict[str, torch.Tensor]               # role name -> scalar loss to minimise
    logs: dict[str, float] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # at snapshot steps: named latents B,C,T,H,W


class Method(abc.ABC):
    """A method trains `net` (the FlowNet built from cfg.model) as its role "model", the one exported."""
    sections: ClassVar[dict[str, type]] = {}          # its config sections beyond the core ones: YAML name -> dataclass

    def __init__(self, cfg, net, encoders):
        self.cfg, self.net, self.encoders = cfg, net, encoders

    @classmethod
    def config_problems(cls, cfg) -> dict[str, str]:
        """{dotted key: what is wrong} for rules across sections (a setting against the model's), checked by
        load_config, so a bad combination is refused at load and not hours later."""
        return {}

    def roles(self) -> dict[str, Role]:
        return {"model": Role(self.net, ema=self.cfg.train.ema_decay, export=True)}

    def frozen(self) -> dict[str, nn.Module]:
        return {}

    def state(self) -> dict[str, nn.Module]:
        return {}

    @abc.abstractmethod
    def losses(self, batch: dict, step: TrainStep) -> LossOut:
        """A scalar loss per role due at `step`; `step.generator` is the only source of randomness."""

    def after_update(self, step: TrainStep) -> None:
        """Called after the due roles have stepped."""


METHODS: dict[str, type[Method]] = {}                  # train.method -> class, filled by @register


def _where(cls: type) -> tuple[str, str]:
    return cls.__module__.rpartition(".")[2], cls.__qualname__


def register(name: str):
    """Class decorator: the method is `train.method: name`. A section name has one dataclass across the registry
    (LCM and OSV both read `lcm:`, one class) and is no core section's."""
    def add(cls: type[Method]) -> type[Method]:
        known = METHODS.get(name)                 # the same file imported again (by another path) replaces it
        if known is not None and _where(known) != _where(cls):
            raise ValueError(f"train.method {name!r}: {cls.__module__}.{cls.__qualname__} and "
                             f"{known.__module__}.{known.__qualname__} both claim it")
        for section, settings in cls.sections.items():
            if section in core_sections():
                raise ValueError(f"{cls.__qualname__}.sections: {section!r} is a core section of workbench.config")
            other = next((m for n, m in METHODS.items() if n != name
                          and m.sections.get(section, settings) is not settings), None)
            if other is not None:
                raise ValueError(f"{cls.__qualname__}.sections: {section!r} is {settings.__qualname__} here but "
                                 f"{other.sections[section].__qualname__} in {other.__qualname__}")
        METHODS[name] = cls
        return cls
    return add


TEACHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cast_frozen(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen FlowNet's weights in `dtype`, in place, except the modules diffusers keeps in fp32 when it loads
    Wan in bf16 (`_keep_in_fp32_modules`: rope, time embedder, modulation tables, norms). FlowNet feeds the
    transformer inputs in its weights' dtype and returns the velocity in the caller's (wan_inputs, velocity)."""
    keep = set(getattr(net.transformer, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
        if tensor.is_floating_point() and not keep & set(name.split(".")):
            tensor.data = tensor.data.to(dtype)
    return net


@dataclass(frozen=True)
class DistillInputs:
    """What a distillation loss reads at one step: x_t and t made by Algorithm 1 lines 4-5."""
    student: nn.Module                            # F_theta, with its graph (the loop's prepared network)
    target: nn.Module | None                      # theta^-, the method's EMA of the student (None: no target)
    teacher_velocity: Callable                    # (x_t, t, cond) -> dx_t/dt = F_pretrain(x_t, t), under no_grad
    x_t: torch.Tensor                             # B, C, T, H, W latents
    t: torch.Tensor                               # B times
    cond: Any                                     # the batch's Conditioning
    step: int                                     # the optimizer step (CCD's tangent warmup, Eq. 9)
    settings: DistillConfig                       # cfg.distill


# A distillation loss: DistillInputs -> (loss, the student's F_theta(x_t, t) with its graph, logs)
DistillLoss = Callable[[DistillInputs], tuple[torch.Tensor, torch.Tensor, dict]]


class Distillation(Method):
    """A student distilled from a frozen teacher F_pretrain: `distill.teacher`, else `model.weights` (Alg. 1 line 2).

    Subclasses name their loss (`distill_loss`); the target network theta^- is the method's own EMA of the
    student with decay `distill.target_decay` (Algorithm 1 line 11), separate from the exported EMA.
    """
    distill_loss: DistillLoss
    uses_target = True                                    # keeps theta^-; PCM's target is the online student

    def __init__(self, cfg, net, encoders):
        super().__init__(cfg, net, encoders)
        dtype = TEACHER_DTYPES[cfg.distill.teacher_dtype]  # a choice the loader checked
        self.teacher = frozen_copy(net)
        if cfg.distill.teacher:                           # e.g. DA after CCD: the student is the CCD model
            load_weights(self.teacher.transformer, cfg.distill.teacher, "distill.teacher")
        # the teacher is asked on the path it was trained on: a VP teacher bridged for a flow student (vp.py)
        self.teacher = on_trained_path(self.teacher, cfg.distill.teacher or cfg.model.weights)
        if self.teacher_is_frozen():
            cast_frozen(self.teacher, dtype)
        self.target = frozen_copy(net) if self.uses_target else None

    def teacher_is_frozen(self) -> bool:
        """Whether the teacher is outside every role, so distill.teacher_dtype may cast it (DMD2: not when it is
        the LoRA fake score's base)."""
        return True

    def frozen(self):
        return {"teacher": self.teacher, **({"target": self.target} if self.uses_target else {})}

    def state(self):
        return {"target": self.target} if self.uses_target else {}

    def losses(self, batch, step):
        _, x_t, t, cond = self.noisy_batch(batch, step.generator)
        loss, _, logs = self.student_loss(step.nets["model"], x_t, t, cond, step.index)
        return LossOut({"model": loss}, logs)

    def student_loss(self, student, x_t, t, cond, step: int):
        """(distillation loss, F_theta(x_t, t) with its graph, logs) for latents x_t (B,C,T,H,W) at times t (B,)."""
        return self.distill_loss(DistillInputs(student, self.target, self.teacher_velocity, x_t, t, cond, step,
                                               self.cfg.distill))

    def after_update(self, step):
        if self.uses_target and "model" in step.due:
            ema_update(self.target, step.nets["model"], self.cfg.distill.target_decay)  # line 11

    def noisy_batch(self, batch: dict, generator: torch.Generator):
        """x0 ~ D, x1 ~ N(0, I), t ~ the distill sampler, x_t (Algorithm 1 lines 4-5); latents B,C,T,H,W."""
        d = self.cfg.distill
        x0, cond = self.encoders.prepare(batch["video"], batch["caption"])
        x1 = torch.randn(x0.shape, generator=generator).to(x0)
        t = sample_timesteps(x0.shape[0], d.timesteps, p_mean=d.p_mean, p_std=d.p_std, generator=generator).to(x0)
        return x0, interpolate(x0, x1, t), t, cond

    @torch.no_grad()
    def teacher_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """dx_t/dt = F_pretrain(x_t, t), with classifier-free guidance when distill.guidance != 1."""
        w = self.cfg.distill.guidance
        null = self.encoders.null_text(x_t.shape[0]) if w != 1.0 else None
        return guided_velocity(self.teacher, x_t, t, cond, w, null)
