"""LoRA on the Wan transformer through peft (diffusers' PeftAdapterMixin), saved in diffusers' format.

Files: `pytorch_lora_weights.safetensors` with `transformer.`-prefixed keys and the adapter config in its
metadata, as `WanPipeline.save_lora_weights` writes and `WanPipeline.load_lora_weights` reads.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

LORA_FILE = "pytorch_lora_weights.safetensors"


def add_lora(transformer, rank: int, alpha: float, targets: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Freeze the transformer, add a fresh adapter (B = 0, so it starts as the base model); return its parameters."""
    from peft import LoraConfig
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True))
    return [p for n, p in transformer.named_parameters() if "lora_" in n]


@contextmanager
def adapters_disabled(transformer):
    """The exact base model inside the block (the DPO reference), the adapters back on after it."""
    transformer.disable_adapters()
    try:
        yield transformer
    finally:
        transformer.enable_adapters()


def save_lora(transformer, folder: str | Path) -> Path:
    """Write the adapter in diffusers' format into `folder`; returns the file."""
    from diffusers import WanPipeline
    from peft.utils import get_peft_model_state_dict
    folder = Path(folder)
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                  transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
                                  weight_name=LORA_FILE)
    return folder / LORA_FILE


def load_lora(transformer, folder: str | Path) -> None:
    """Add the adapter saved by `save_lora` (rank, alpha and targets from the file's metadata)."""
    path = Path(folder) / LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no LoRA file (expected {LORA_FILE} as written by save_lora)")
    transformer.load_lora_adapter(str(folder), prefix="transformer", adapter_name="default", weight_name=LORA_FILE,
                                  local_files_only=True)


def merge_lora(transformer) -> None:
    """Fold the adapter into the base weights (W + alpha/r B A) and remove the LoRA layers."""
    transformer.fuse_lora()
    transformer.unload_lora()
