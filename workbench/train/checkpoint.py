"""Checkpoints: safetensors + JSON in a folder written under a temporary name and renamed when complete.

    checkpoints/step-000500/  model.safetensors  ema.safetensors  optim-<name>.safetensors  state.json
                              module-<name>.safetensors (a method's own trained networks, e.g. the discriminator)
A folder named step-* is complete by construction; `.tmp-*` folders are leftovers of a killed run.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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
    for old in complete_checkpoints(root)[:-keep]:  # prune only after the new one is complete
        shutil.rmtree(old)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []


def load_checkpoint(path: Path, model, ema, optimizers: dict, schedulers: dict, modules: dict | None = None) -> dict:
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(path / "model.safetensors"))
    ema.load_state_dict(load_file(path / "ema.safetensors"))
    for name, module in (modules or {}).items():
        module.load_state_dict(load_file(path / f"module-{name}.safetensors"))
    for name, opt in optimizers.items():
        meta = state["optimizers"][name]
        opt.load_state_dict(_unflat_optimizer(load_file(path / f"optim-{name}.safetensors"), meta["optimizer"]))
        schedulers[name].load_state_dict(meta["scheduler"])
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])
    return state


def export_model(run_or_ckpt: Path, out: Path, dtype: str = "float16") -> Path:
    """A shippable model folder: the EMA weights (cast to `dtype`), config.yaml and metrics.jsonl.

    A TA checkpoint's LoRA is merged into model.safetensors and also written to lora/ in diffusers' format.
    """
    run_or_ckpt, out = Path(run_or_ckpt), Path(out)
    ckpt = complete_checkpoints(run_or_ckpt / "checkpoints")[-1:] if (run_or_ckpt / "checkpoints").is_dir() else [run_or_ckpt]
    if not ckpt or not (ckpt[0] / "ema.safetensors").is_file():
        raise FileNotFoundError(f"{run_or_ckpt}: no complete checkpoint with ema.safetensors")
    run = ckpt[0].parent.parent
    cast = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = load_file(ckpt[0] / "ema.safetensors")
    if any("lora_" in k for k in weights):
        from workbench.generate import load_model
        from workbench.models.lora import merge_lora, save_lora
        net, _, _ = load_model(ckpt[0], merge_lora_weights=False)
        save_lora(net.transformer, tmp / "lora")
        merge_lora(net.transformer)
        weights = net.transformer.state_dict()
    weights = {k: v.to(cast).contiguous() for k, v in weights.items()}
    save_file(weights, tmp / "model.safetensors", metadata={"source": str(ckpt[0]), "dtype": dtype})
    for name in ("config.yaml", "metrics.jsonl"):
        if (run / name).is_file():
            shutil.copy(run / name, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
