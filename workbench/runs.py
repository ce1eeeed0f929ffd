"""Read-only access to run folders and model folders: configs, metrics, weights, models ready to sample.

Where each file lies is workbench/folders.py's to say; this module reads through it.
"""
from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from workbench.config import Config
from workbench.devices import resolve_device
from workbench.folders import RunFolder, find_eval_tables, find_models, find_runs, find_tables, resolve_weights
from workbench.generate import Model
from workbench.methods import load_config
from workbench.methods.base import TEACHER_DTYPES, cast_frozen
from workbench.models import build_backbone
from workbench.models.lora import merge_lora

__all__ = ["Model", "Run", "find_eval_tables", "find_models", "find_runs", "find_tables", "load_model",
           "resolve_weights", "without_lora"]


def load_model(path: str | Path, overrides: list[str] = (), merge_lora_weights: bool = True,
               device: str | torch.device = "cpu", dtype: str | None = None) -> Model:
    """The exported network of a run, checkpoint or model folder, ready to sample (a LoRA merged unless asked), with
    its encoders on `device` (workbench.devices.resolve_device: "auto", "cpu", "cuda:1", ...; the commands pass
    their --device, default "auto"). `dtype` "bfloat16" casts the frozen network as the teacher is cast
    (methods.base.cast_frozen: diffusers' fp32 modules kept); None keeps the weights' float32."""
    device = resolve_device(device)                    # refused before anything loads
    if dtype is not None and dtype not in TEACHER_DTYPES:
        raise ValueError(f"dtype: {dtype!r}; expected one of {', '.join(TEACHER_DTYPES)}")
    weights, cfg_path = resolve_weights(path)
    cfg = load_config(cfg_path, [f"model.weights={weights}", *overrides])
    net, encoders = build_backbone(cfg.model)
    if cfg.model.lora.rank and merge_lora_weights:
        merge_lora(net.transformer)
        cfg = without_lora(cfg)
    if dtype is not None:
        cast_frozen(net, TEACHER_DTYPES[dtype])
    return Model(net.eval().requires_grad_(False).to(device), encoders.to(device), cfg, weights)


def without_lora(cfg: Config) -> Config:
    """The config of a model whose LoRA is merged into its weights (model.lora.rank 0)."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lora=dataclasses.replace(cfg.model.lora,
                                                                                                  rank=0)))


class Run:
    """A run folder (or a model folder, which keeps its run's config and metrics), read-only: config, metrics,
    checkpoints, weights, sample sheets and eval tables."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.folder = RunFolder(self.path)
        if not self.folder.config.is_file():
            raise FileNotFoundError(f"{self.folder.config}: not a run folder (no config file)")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @cached_property
    def config(self) -> Config:
        return load_config(self.folder.config)

    @property
    def config_text(self) -> str:
        """The run's config.yaml as written (comments and order kept), for people to read."""
        return self.folder.config.read_text()

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per logged step (metrics.jsonl)."""
        return pd.DataFrame(self.folder.read_metrics())

    @property
    def checkpoints(self) -> list[Path]:
        return [c.path for c in self.folder.checkpoints()]

    @property
    def weights(self) -> Path:
        """The exported weights of the newest checkpoint."""
        return resolve_weights(self.path)[0]

    @property
    def samples(self) -> list[Path]:
        return self.folder.sample_sheets()

    @property
    def sheets(self) -> list[Path]:
        """Its sample sheets, then the images beside its weights (a model folder's contact sheet, a stage sheet)."""
        return [*self.samples, *sorted(self.path.glob("*.png"))]

    def eval_tables(self) -> dict[str, pd.DataFrame]:
        """results.csv of every evaluation under the run folder, by its folder relative to the run."""
        return {str(f.parent.relative_to(self.path)): pd.read_csv(f) for f in sorted(self.path.rglob("results.csv"))}

    def load_model(self, overrides: list[str] = (), device: str = "cpu", dtype: str | None = None) -> Model:
        return load_model(self.path, overrides, device=device, dtype=dtype)
