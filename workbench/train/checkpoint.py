"""Checkpoints: safetensors + JSON in a folder written under a temporary name and renamed when complete.

    checkpoints/step-000500/  model.safetensors  ema.safetensors  optim-<name>.safetensors  state.json
                              module-<name>.safetensors (a method's own trained networks, e.g. the discriminator)
A folder named step-* is complete by construction; `.tmp-*` folders are leftovers of a killed run.
A complete folder can still be unreadable later (a disk error, a hand edit): `load_checkpoint` reads and
checks every file before it changes anything, so the caller can fall back to an older checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from workbench.models.weights import WeightsError, check_fits, read_weights


def _flat_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflat_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizers: dict, schedulers: dict, extra: dict, keep: int = 2,
                    modules: dict | None = None) -> Path:
    root = Path(root)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, tmp / "ema.safetensors")
    for name, module in (modules or {}).items():
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp / f"module-{name}.safetensors")
    meta = {}
    for name, opt in optimizers.items():
        tensors, m = _flat_optimizer(opt.state_dict())
        save_file(tensors, tmp / f"optim-{name}.safetensors")
        meta[name] = {"optimizer": m, "scheduler": schedulers[name].state_dict()}
    rng = torch.get_rng_state()
    save_file({"torch": rng}, tmp / "rng.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizers": meta, **extra}, indent=1))
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune_checkpoints(root, keep)  # only after the new one is complete
    return final


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (a run killed before its pruning left one more)."""
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old)


def complete_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []


class CheckpointError(ValueError):
    """A complete checkpoint folder whose files cannot be read or do not fit the run."""


def load_checkpoint(path: Path, model, ema, optimizers: dict, schedulers: dict, modules: dict | None = None) -> dict:
    """Restore a run's state from `path`; raises CheckpointError, having changed nothing, if any file is bad."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        nets = {"model": model, "ema": ema, **{f"module-{n}": m for n, m in (modules or {}).items()}}
        weights = {name: read_weights(path / f"{name}.safetensors") for name in nets}
        for name, net in nets.items():
            check_fits(net, weights[name], str(path / f"{name}.safetensors"))
        optim = {name: _unflat_optimizer(read_weights(path / f"optim-{name}.safetensors"),
                                         state["optimizers"][name]["optimizer"]) for name in optimizers}
        rng = read_weights(path / "rng.safetensors")["torch"]
    except (OSError, ValueError, KeyError, WeightsError) as e:  # JSONDecodeError and WeightsError are ValueErrors
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    for name, net in nets.items():
        net.load_state_dict(weights[name])
    for name, opt in optimizers.items():
        opt.load_state_dict(optim[name])
        schedulers[name].load_state_dict(state["optimizers"][name]["scheduler"])
    torch.set_rng_state(rng)
    return state
