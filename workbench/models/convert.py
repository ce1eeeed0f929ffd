"""A Wan2.1 transformer checkpoint in the original layout (alibaba-pai's Wan2.1-Fun-1.3B-InP, Wan-AI's repos:
`blocks.N.self_attn.q`, `head.head`, `img_emb.proj` ...) -> a diffusers `WanTransformer3DModel` folder, the
`model.transformer_path` of experiments/wan. The key renames are diffusers' own (its single-file loader,
`convert_wan_transformer_to_diffusers`, the renames of its scripts/convert_wan_to_diffusers.py); the architecture
is the workbench preset, so nothing is fetched. Every key must match the preset, or nothing is written.

    python -m workbench wan-convert Wan2.1-Fun-1.3B-InP/diffusion_pytorch_model.safetensors \\
        --out models/Wan2.1-Fun-1.3B-InP/transformer
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import load_file

from workbench.files import output_folder
from workbench.models.wan import PRESETS

COMMAND = "wan-convert"


def convert_wan_transformer(checkpoint: str | Path, out: str | Path, preset: str = "wan2.1-fun-1.3b-inp",
                            force: bool = False) -> Path:
    """Write `out`: config.json and diffusion_pytorch_model.safetensors, in the checkpoint's dtype."""
    checkpoint = Path(checkpoint)
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    if checkpoint.suffix != ".safetensors" or not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: expected the original-layout .safetensors file of a Wan2.1 transformer")
    state = convert_wan_transformer_to_diffusers(load_file(str(checkpoint)))
    with torch.device("meta"):                              # the architecture only: no memory for a second copy
        model = WanTransformer3DModel(**PRESETS[preset])
    expected = model.state_dict()
    for what, keys in (("lacks", sorted(set(expected) - set(state))), ("has keys the preset lacks, e.g.",
                                                                      sorted(set(state) - set(expected)))):
        if keys:
            raise ValueError(f"{checkpoint}: {what} {keys[0]} (after diffusers' renames; {len(keys)} in all): not "
                             f"a {preset} transformer")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{checkpoint}: {key} has shape {tuple(value.shape)}, the {preset} preset "
                             f"{tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=True, assign=True)
    with output_folder(out, COMMAND, force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return Path(out)
