"""Safetensors weights given by a user: read them, and check they fit a network, with one-line errors.

Every error names the file (and the config key or flag that named it) and what was expected, so the
command line can print it as the one line it promises. Nothing here loads a pickle.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from workbench.files import writing


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not fit the network it is loaded into."""


def _label(path: Path, key: str) -> str:
    return f"{key}: {path}" if key else str(path)


def _require_file(path: Path, key: str) -> None:
    if not path.is_file():
        what = ("is a folder" if path.is_dir() else f"is a broken link (to {os.readlink(path)})" if path.is_symlink()
                else "does not exist")
        raise WeightsError(f"{_label(path, key)} {what} (expected a .safetensors file)")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"{_label(path, key)}: not readable by this user (permission denied)")


def read_weights(path: str | Path, key: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; `key` is the config key or flag that named it (for the message)."""
    path = Path(path)
    _require_file(path, key)
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{_label(path, key)}: not a readable safetensors file ({e})") from None


def write_weights(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """save_file, with a failed write (a full disk) raised as an OSError naming the file, not a SafetensorError."""
    with writing(path):
        save_file(tensors, path, metadata=metadata)
    return Path(path)


def tensor_names(path: str | Path, key: str = "") -> list[str]:
    """Names of the tensors in a safetensors file, without reading the tensors."""
    path = Path(path)
    _require_file(path, key)
    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{_label(path, key)}: not a readable safetensors file ({e})") from None


def check_fits(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Same names and shapes as `module`'s state dict, or a WeightsError naming the first misfit."""
    own = module.state_dict()
    for name, tensor in weights.items():
        if name not in own:
            raise WeightsError(f"{source}: tensor {name!r} is not in the network ({len(own)} tensors; "
                               f"weights of another preset or network?)")
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise WeightsError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, the network expects "
                               f"{tuple(own[name].shape)} (weights of another preset or config?)")
    for name, tensor in weights.items():
        if own[name].is_floating_point() and not tensor.is_floating_point():
            raise WeightsError(f"{source}: tensor {name!r} is stored as {str(tensor.dtype).removeprefix('torch.')}, "
                               f"the network expects floating point ({str(own[name].dtype).removeprefix('torch.')})")
    check_finite(weights, source)
    missing = [n for n in own if n not in weights]
    if missing:
        raise WeightsError(f"{source}: no tensor {missing[0]!r} ({len(missing)} of the network's {len(own)} missing)")


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or inf."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]


def check_finite(weights: dict[str, torch.Tensor], source: str) -> None:
    """Every floating-point tensor finite, or a WeightsError naming the first that is not (a diverged run)."""
    bad = non_finite(weights)
    if bad:
        raise WeightsError(f"{source}: tensor {bad[0]!r} holds NaN or inf values ({len(bad)} of {len(weights)} "
                           f"tensors do): weights of a run that diverged?")


def load_weights(module: torch.nn.Module, path: str | Path, key: str = "") -> torch.nn.Module:
    """Read `path`, check it fits `module` name for name and shape, then load it."""
    weights = read_weights(path, key)
    check_fits(module, weights, _label(Path(path), key))
    module.load_state_dict(weights)
    return module
