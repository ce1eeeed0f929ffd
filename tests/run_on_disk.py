"""A run folder as the trainer writes it (config.yaml + checkpoints/step-N/{state.json, model.safetensors}), for the
export tests: the network the model `overrides` describe, its weights perturbed so that exporting the base folder
instead of the run would show (and a LoRA's B random: B = 0 would be the base model)."""
import json

import torch
import yaml
from safetensors.torch import save_file

from workbench.config import to_dict
from workbench.methods import load_config
from workbench.models import build_backbone


def write_run(root, overrides, paths=None, lora_rank=0):
    model = [f"model.{k}={v}" for k, v in (paths or {}).items()]
    cfg = load_config(None, [*model, *overrides, f"model.lora.rank={lora_rank}"])
    transformer = build_backbone(cfg.model)[0].transformer
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in transformer.named_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g) if "lora_B" in n else p + 0.02 * torch.randn(p.shape, generator=g))
    ckpt = root / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, ckpt / "model.safetensors")
    (ckpt / "state.json").write_text(json.dumps({"step": 1, "export": "model"}))
    (root / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return root
