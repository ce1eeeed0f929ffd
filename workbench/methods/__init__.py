"""Training methods: one file each, one signature.

A method is built as `Method(cfg, net, encoders)`; methods/base.py says what it exposes (roles, frozen
networks, state, losses per role due). Each file registers its class (`@register("name")`) with the config
sections it reads; importing this package imports every file in it, so a new method is one new file. The training
loop knows no method by name; it looks it up here, and `load_config` builds the sections of `train.method`.
"""
import importlib
import pkgutil
from pathlib import Path

from workbench import config
from workbench.methods.base import METHODS, Distillation, LossOut, Method, Role, TrainStep, register

__all__ = ["METHODS", "Distillation", "LossOut", "Method", "Role", "TrainStep", "build_method", "load_config",
           "register"]

for _module in pkgutil.iter_modules(__path__):     # each method file registers itself as it is imported
    importlib.import_module(f"{__name__}.{_module.name}")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> config.Config:
    """workbench.config.load_config with the registered methods: train.method must be one, and its sections (its
    settings dataclasses) are built and checked at load, strictly as the core ones."""
    return config.load_config(path, overrides, methods=METHODS)


def build_method(cfg: config.Config, net, encoders) -> Method:
    name = cfg.train.method
    if name not in METHODS:
        raise KeyError(f"train.method: unknown method {name!r} (known: {', '.join(METHODS)})")
    missing = [s for s in METHODS[name].sections if s not in cfg.sections]
    if missing:
        raise ValueError(f"{missing[0]}: the config has no such section, which train.method {name!r} reads (load "
                         f"configs with workbench.methods.load_config)")
    return METHODS[name](cfg, net, encoders)
