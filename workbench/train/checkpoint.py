"""Checkpoints: safetensors + JSON in a folder written under a temporary name and renamed when complete (where
each file lies: workbench/folders.py, RunFolder and Checkpoint).

    checkpoints/step-000500/  <role>.safetensors  <role>-ema.safetensors  optim-<role>.safetensors
                              state-<name>.safetensors (a method's own state, e.g. CCD's target network)
                              rng.safetensors  state.json (step, the exported role, optimizer and schedule state)
A folder named step-* is complete by construction: it is renamed into place when complete and renamed away
(`.pruning-*`) before it is deleted. `.tmp-*` and `.pruning-*` folders are leftovers of a killed run, removed by
the next pruning. A checkpoint is published only if every floating tensor in it is finite, and a write that fails
(a full disk) is an OSError naming the file, with the temporary folder removed and older checkpoints untouched.
A complete folder can still be unreadable later (a disk error, a hand edit): `load_checkpoint` reads and
checks every file before it changes anything, so the caller can fall back to an older checkpoint.
FSDP (train.fsdp): the files hold whole tensors, the same as unsharded training writes: every process gathers
each sharded tensor (`save_checkpoint(write=False)` on all but the main process) and each reads the files back
into its own shards.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
import torch

from workbench.config import ConfigError
from workbench.files import writing
from workbench.folders import Checkpoint, RunFolder
from workbench.models.weights import WeightsError, check_fits, non_finite, read_weights, write_weights
from workbench.train.fsdp import shard_like, whole
from workbench.train.roles import Trained


def _flat_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = whole(v).contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflat_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _sharded_optimizer(sd: dict, opt: torch.optim.Optimizer) -> dict:
    """A whole optimizer state dict with each parameter's state tensors cut as the parameter is sharded."""
    params = [p for group in opt.param_groups for p in group["params"]]  # state_dict()'s parameter ids
    return {"state": {pid: {k: shard_like(v, params[pid]) if torch.is_tensor(v) and v.shape == params[pid].shape
                            else v for k, v in st.items()} for pid, st in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def weights_module(net: torch.nn.Module) -> torch.nn.Module:
    """What a checkpoint holds of a network: a FlowNet's transformer (a diffusers module, loadable alone)."""
    return getattr(net, "transformer", net)


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint would hold a NaN or inf: it is not published and the run stops."""


def save_checkpoint(run: RunFolder, step: int, roles: dict[str, Trained], state: dict, extra: dict,
                    keep: int = 2, write: bool = True) -> Path | None:
    """`roles`: each trained role; `state`: the method's own {name: module} (a target network).

    write=False: only gather the sharded tensors with the process that writes (FSDP) and check them, write nothing
    (every process checks, so every process stops on a non-finite tensor)."""
    final = run.checkpoint(step).path
    tmp = Checkpoint(run.staging(step))
    try:
        if write:
            shutil.rmtree(tmp.path, ignore_errors=True)
            with writing(tmp.path):
                tmp.path.mkdir(parents=True)
        meta = {}
        for name, tensors in _files(roles, state, meta):  # one file's tensors at a time
            _check_finite(tensors, tmp.file(name).name, step, run)
            if write:
                write_weights(tensors, tmp.file(name))
        if not write:
            return None
        write_weights({"torch": torch.get_rng_state()}, tmp.file("rng"))
        export = next(name for name, t in roles.items() if t.role.export)
        with writing(tmp.state_file):
            tmp.state_file.write_text(json.dumps({"step": step, "export": export, "roles": meta, **extra}, indent=1))
        for f in tmp.path.iterdir():  # make the bytes durable before the rename publishes them
            with writing(f), open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException:
        if write:                # a failed checkpoint leaves no folder of its own; older ones stay as they were
            shutil.rmtree(tmp.path, ignore_errors=True)
        raise
    if final.exists():
        _remove(final)
    os.replace(tmp.path, final)
    prune_checkpoints(run, keep)  # only after the new one is complete
    return final


def _check_finite(tensors: dict[str, torch.Tensor], file: str, step: int, run: RunFolder) -> None:
    """A NaN or inf would be resumed from and exported as if it were good (a step's update can blow up the
    weights while its loss, computed before the update, was still finite)."""
    bad = non_finite(tensors)
    if bad:
        raise NonFiniteWeightsError(f"step {step}: {file} would hold non-finite values ({bad[0]}); checkpoint not "
                                    f"written, run stopped, {last_good(run)}")


def last_good(run: RunFolder) -> str:
    """Words naming the newest complete checkpoint, for a message that stops a run."""
    kept = run.latest()
    return f"last good checkpoint kept: {kept.path}" if kept else "no checkpoint had been written"


def _files(roles: dict[str, Trained], state: dict, meta: dict):
    """(file name, whole tensors) of each weights and optimizer file; fills `meta` with each role's state.json."""
    for name, t in roles.items():
        yield name, _tensors(weights_module(t.role.net))
        if t.ema is not None:
            yield f"{name}-ema", _tensors(weights_module(t.ema))
        tensors, m = _flat_optimizer(t.optimizer.state_dict())
        yield f"optim-{name}", tensors
        meta[name] = {"optimizer": m, "scheduler": t.scheduler.state_dict(), "ema": t.ema is not None,
                      **({"scaler": t.scaler.state_dict()} if t.scaler is not None else {})}
    for name, module in state.items():
        yield f"state-{name}", _tensors(weights_module(module))


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: whole(v).contiguous() for k, v in module.state_dict().items()}


def prune_checkpoints(run: RunFolder, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints, and finish what a killed run left (RunFolder.leftovers): its
    pruning (one more checkpoint, or a `.pruning-*` folder), its unfinished checkpoint, a half-deleted one."""
    for p in run.leftovers():
        shutil.rmtree(p)
    for old in run.checkpoints()[:-keep]:
        _remove(old.path)


def _remove(ckpt: Path) -> None:
    """Delete a checkpoint folder so that a kill midway leaves no partial step-* folder: renamed away first."""
    gone = ckpt.with_name(f".pruning-{ckpt.name}")
    os.replace(ckpt, gone)
    shutil.rmtree(gone)


def check_processes(ckpts: list[Checkpoint], launch: dict) -> None:
    """Refuse to resume under another launch than the newest readable checkpoint's: another process count trains
    on another global batch, data order and noise. `launch`: {"processes": n, "global_batch": b}; a checkpoint
    without these keys (older versions) is accepted."""
    for ckpt in reversed(ckpts):
        try:
            saved = json.loads(ckpt.state_file.read_text())
            was = {k: saved[k] for k in launch if k in saved}
        except (OSError, ValueError, TypeError):
            continue  # unreadable: the resume reports it and falls back to an older one
        now = {k: launch[k] for k in was}
        if was != now:
            raise ConfigError(f"--resume: {ckpt.path} was trained by {_words(was)}, this launch has {_words(now)}; "
                              f"resume with the same number of processes (accelerate launch --num_processes), "
                              f"or train into a new --out")
        return


def _words(launch: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in launch.items())


class CheckpointError(ValueError):
    """A complete checkpoint folder whose files cannot be read or do not fit the run."""


def load_checkpoint(ckpt: Checkpoint, roles: dict[str, Trained], state: dict) -> dict:
    """Restore what `save_checkpoint` wrote into the same structures; raises CheckpointError, having changed
    nothing, if any file is missing, unreadable or misfits."""
    try:
        saved = json.loads(ckpt.state_file.read_text())
        modules = {name: weights_module(t.role.net) for name, t in roles.items()}
        modules.update({f"{name}-ema": weights_module(t.ema) for name, t in roles.items() if t.ema is not None})
        modules.update({f"state-{name}": weights_module(m) for name, m in state.items()})
        weights = {name: read_weights(ckpt.file(name)) for name in modules}
        for name, module in modules.items():
            check_fits(module, weights[name], str(ckpt.file(name)))
        optim = {name: _unflat_optimizer(read_weights(ckpt.file(f"optim-{name}")),
                                         saved["roles"][name]["optimizer"]) for name in roles}
        rng = read_weights(ckpt.file("rng"))["torch"]
    except (OSError, ValueError, KeyError, WeightsError) as e:  # JSONDecodeError and WeightsError are ValueErrors
        raise CheckpointError(f"{ckpt.path}: unreadable checkpoint ({e})") from None
    for name, module in modules.items():
        own = module.state_dict()
        module.load_state_dict({k: shard_like(v, own[k]) for k, v in weights[name].items()})
    for name, t in roles.items():
        t.optimizer.load_state_dict(_sharded_optimizer(optim[name], t.optimizer))
        t.scheduler.load_state_dict(saved["roles"][name]["scheduler"])
        if t.scaler is not None and "scaler" in saved["roles"][name]:
            t.scaler.load_state_dict(saved["roles"][name]["scaler"])
    torch.set_rng_state(rng)
    return saved
