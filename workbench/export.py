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

from workbench.config import load_config, to_dict
from workbench.files import staged_folder
from workbench.models.lora import merge_lora, save_lora
from workbench.models.weights import check_finite, read_weights, write_weights
from workbench.runs import checkpoint_state, exported_weights, load_model, without_lora
from workbench.train.checkpoint import complete_checkpoints

MARKER = "export.json"
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
    ckpts = complete_checkpoints(run_or_ckpt / "checkpoints") if (run_or_ckpt / "checkpoints").is_dir() else [run_or_ckpt]
    if not ckpts or not (ckpts[-1] / "state.json").is_file():
        raise FileNotFoundError(f"{run_or_ckpt}: not a run folder with a complete checkpoint, nor a checkpoint")
    ckpt = ckpts[-1]
    run = ckpt.parent.parent
    check_export_target(out, force)
    weights = read_weights(exported_weights(ckpt))
    check_finite(weights, str(exported_weights(ckpt)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged(out) as tmp:
        cfg_text = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else None
        if any("lora_" in k for k in weights):  # written as diffusers' LoRA file, and merged into the weights
            model = load_model(ckpt, merge_lora_weights=False)
            save_lora(model.net.transformer, tmp / "lora")
            merge_lora(model.net.transformer)
            weights = model.net.transformer.state_dict()
            cfg_text = yaml.safe_dump(to_dict(without_lora(load_config(run / "config.yaml"))), sort_keys=False)
        weights = {k: v.to(DTYPES[dtype]).contiguous() for k, v in weights.items()}
        # one metadata key: safetensors writes a metadata map in no fixed order, so two keys make the bytes vary
        write_weights(weights, tmp / "model.safetensors",
                  metadata={"export": json.dumps({"dtype": dtype, "source": str(ckpt)}, sort_keys=True)})
        if cfg_text is not None:
            (tmp / "config.yaml").write_text(cfg_text)
        if (run / "metrics.jsonl").is_file():
            shutil.copy(run / "metrics.jsonl", tmp / "metrics.jsonl")
        step = checkpoint_state(ckpt).get("step")
        (tmp / MARKER).write_text(json.dumps({"source": str(ckpt.resolve()), "step": step, "dtype": dtype}, indent=1))
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
