"""Read-only access to run folders and model folders: the one module that knows their layout.

    run folder      config.yaml  metrics.jsonl  checkpoints/step-NNNNNN/  samples/step-NNNNNN.png  eval/
    checkpoint      <role>.safetensors  <role>-ema.safetensors  optim-<role>.safetensors  state-<name>.safetensors
                    rng.safetensors  state.json (step, roles, which role is exported)
    model folder    model.safetensors  config.yaml  metrics.jsonl  export.json  (lora/)

Paths are taken as given: relative to the caller's working directory, or absolute.
"""
from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from pathlib import Path

import pandas as pd

from workbench.config import Config, load_config, saved_config
from workbench.generate import Model
from workbench.models import build_backbone
from workbench.models.lora import merge_lora
from workbench.train.checkpoint import complete_checkpoints

__all__ = ["Model", "Run", "checkpoint_state", "exported_weights", "find_eval_tables", "find_runs", "load_model", "resolve_weights",
           "without_lora"]


def checkpoint_state(ckpt: Path) -> dict:
    """A checkpoint's state.json, or a ValueError naming the file (a hand edit, a disk error)."""
    f = Path(ckpt) / "state.json"
    try:
        state = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: not a checkpoint's state.json (not JSON: {e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{f}: not a checkpoint's state.json (expected a JSON object)")
    return state


def exported_weights(ckpt: Path) -> Path:
    """The weights a checkpoint exports: its exported role's EMA where it keeps one, else the role's weights."""
    state = checkpoint_state(ckpt)
    role = state.get("export", "model")
    ema = ckpt / f"{role}-ema.safetensors"
    return ema if ema.is_file() else ckpt / f"{role}.safetensors"


def resolve_weights(path: str | Path) -> tuple[Path, Path]:
    """(weights file, config file) of a run folder (its newest checkpoint), a checkpoint folder, or a model folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint, run or model folder")
    if (p / "checkpoints").is_dir():
        ckpts = complete_checkpoints(p / "checkpoints")
        if not ckpts:
            raise FileNotFoundError(f"{p}: run folder has no complete checkpoint")
        return resolve_weights(ckpts[-1])
    if (p / "state.json").is_file():
        weights = exported_weights(p)
    elif (p / "model.safetensors").is_file():
        weights = p / "model.safetensors"
    else:
        raise FileNotFoundError(f"{p}: expected a run folder, a checkpoint (state.json) or model.safetensors")
    cfg = saved_config(p)
    if cfg is None:
        raise FileNotFoundError(f"{p}: no config.yaml beside the weights or in the run folder")
    return weights, cfg


def load_model(path: str | Path, overrides: list[str] = (), merge_lora_weights: bool = True) -> Model:
    """The exported network of a run, checkpoint or model folder, ready to sample (a LoRA merged unless asked)."""
    weights, cfg_path = resolve_weights(path)
    cfg = load_config(cfg_path, [f"model.weights={weights}", *overrides])
    net, encoders = build_backbone(cfg.model)
    if cfg.model.lora.rank and merge_lora_weights:
        merge_lora(net.transformer)
        cfg = without_lora(cfg)
    return Model(net.eval().requires_grad_(False), encoders, cfg, weights)


def without_lora(cfg: Config) -> Config:
    """The config of a model whose LoRA is merged into its weights (model.lora.rank 0)."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lora=dataclasses.replace(cfg.model.lora,
                                                                                                  rank=0)))


def find_runs(*roots: str | Path) -> list[Path]:
    """Run and model folders (config.yaml beside metrics.jsonl) under `roots`, sorted."""
    return sorted({f.parent for root in map(Path, roots) for f in root.rglob("metrics.jsonl")
                   if (f.parent / "config.yaml").is_file()})


def find_eval_tables(*roots: str | Path) -> list[Path]:
    """Every evaluation's results.csv under `roots`, sorted."""
    return sorted(f for root in map(Path, roots) for f in root.rglob("results.csv"))


class Run:
    """A run folder (or a model folder, which keeps its run's config and metrics), read-only: config, metrics,
    checkpoints, weights, sample sheets and eval tables."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.yaml").is_file():
            raise FileNotFoundError(f"{self.path}: not a run folder (no config.yaml)")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @cached_property
    def config(self) -> Config:
        return load_config(self.path / "config.yaml")

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per logged step (metrics.jsonl)."""
        f = self.path / "metrics.jsonl"
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no metrics.jsonl (is this a run folder?)")
        return pd.DataFrame([json.loads(r) for r in f.read_text().splitlines() if r.strip()])

    @property
    def checkpoints(self) -> list[Path]:
        return complete_checkpoints(self.path / "checkpoints")

    @property
    def weights(self) -> Path:
        """The exported weights of the newest checkpoint."""
        return resolve_weights(self.path)[0]

    @property
    def samples(self) -> list[Path]:
        return sorted((self.path / "samples").glob("step-*.png"))

    def eval_tables(self) -> dict[str, pd.DataFrame]:
        """results.csv of every evaluation under the run folder, by its folder relative to the run."""
        return {str(f.parent.relative_to(self.path)): pd.read_csv(f) for f in sorted(self.path.rglob("results.csv"))}

    def load_model(self, overrides: list[str] = ()) -> Model:
        return load_model(self.path, overrides)
