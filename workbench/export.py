"""Export a run's EMA weights as a shippable model folder, never touching anything that is not an export.

    <out>/  model.safetensors  config.yaml  metrics.jsonl  export.json  (lora/ for a LoRA run such as TA)

The folder is written under a temporary sibling name and renamed into place. An existing `out` is
refused unless `force` is given and `out` holds `export.json` (the marker of an earlier export); then
the new export replaces the old one's files, and any other file in it (a table, a note) is kept.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch
import yaml

from workbench.config import to_dict
from workbench.files import staged_folder
from workbench.folders import MARKER, Checkpoint, ModelFolder, RunFolder
from workbench.methods import load_config
from workbench.models.lora import merge_lora, save_lora
from workbench.models.weights import check_finite, read_weights, write_weights
from workbench.runs import load_model, without_lora

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def check_export_target(out: Path, force: bool, flag: str = "--out") -> None:
    """Refuse, before any work, an `out` (given as `flag`) that exists and is not an earlier export that `force` may
    replace."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise FileExistsError(f"{flag} {out}: already exists; choose a new folder, or pass --force to replace "
                              f"an earlier export")
    if out.is_symlink() or not out.is_dir() or not (out / MARKER).is_file():
        raise FileExistsError(f"{flag} {out}: not an earlier export (no {MARKER}); --force replaces only those")


def export_model(run_or_ckpt: str | Path, out: str | Path, dtype: str = "float16", force: bool = False) -> Path:
    """A shippable model folder: the exported role's EMA weights (cast to `dtype`), config.yaml, metrics.jsonl,
    export.json. A LoRA run's adapter is merged into model.safetensors (config.yaml then says model.lora.rank: 0)
    and also written to lora/ in diffusers' format."""
    run_or_ckpt, out = Path(run_or_ckpt), Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    ckpt = RunFolder(run_or_ckpt).latest() if RunFolder(run_or_ckpt).is_run else Checkpoint(run_or_ckpt)
    if ckpt is None or not ckpt.complete:
        raise FileNotFoundError(f"{run_or_ckpt}: not a run folder with a complete checkpoint, nor a checkpoint")
    run = ckpt.run
    check_export_target(out, force)
    weights = read_weights(ckpt.exported_weights())
    check_finite(weights, str(ckpt.exported_weights()))
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged(out) as tmp:
        model_folder = ModelFolder(tmp)
        cfg_text = run.config.read_text() if run.config.is_file() else None
        if any("lora_" in k for k in weights):  # written as diffusers' LoRA file, and merged into the weights
            model = load_model(ckpt.path, merge_lora_weights=False)
            save_lora(model.net.transformer, model_folder.lora)
            merge_lora(model.net.transformer)
            weights = model.net.transformer.state_dict()
            cfg_text = yaml.safe_dump(to_dict(without_lora(load_config(run.config))), sort_keys=False)
        weights = {k: v.to(DTYPES[dtype]).contiguous() for k, v in weights.items()}
        # one metadata key: safetensors writes a metadata map in no fixed order, so two keys make the bytes vary
        write_weights(weights, model_folder.weights,
                      metadata={"export": json.dumps({"dtype": dtype, "source": str(ckpt.path)}, sort_keys=True)})
        if cfg_text is not None:
            model_folder.config.write_text(cfg_text)
        if run.metrics.is_file():
            shutil.copy(run.metrics, model_folder.metrics)
        step = ckpt.state().get("step")
        model_folder.marker.write_text(json.dumps({"source": str(ckpt.path.resolve()), "step": step, "dtype": dtype},
                                                  indent=1))
    return out


@contextlib.contextmanager
def staged(out: Path):
    """A fresh folder beside `out` to write an export into; published as `out` when the block ends, removed if it
    raises (a half-written export is never at `out`). An earlier export at `out` (check_export_target allowed it)
    is replaced: the entries it wrote go (listed in its export.json; an older one's: those the new one writes),
    any other file beside them stays."""
    replaces: set[str] = set()                 # read by staged_folder when the block ends
    with staged_folder(out, "export", replaces if (out / MARKER).is_file() else None) as tmp:
        yield tmp
        marker = json.loads((tmp / MARKER).read_text())
        marker["files"] = sorted(p.name for p in tmp.iterdir())
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        earlier = json.loads((out / MARKER).read_text()).get("files") if (out / MARKER).is_file() else None
        replaces.update(earlier or marker["files"])
