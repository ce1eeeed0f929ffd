"""Memory per GPU of each method's networks at a preset's size: parameters x bytes plus optimizer state, as JSON.

    python bench/memory.py [--preset wan2.1-fun-1.3b-inp] [--gpus 8] [--lora-rank 64] [--markdown]

--markdown prints the table of experiments/wan/MEMORY.md instead of the JSON of experiments/bench/memory_wan.json.

The transformer is built on the meta device (no memory), so the counts are exact and the 1.3 B preset costs
nothing to count. Bytes per parameter as the code builds the networks today (train.mixed_precision bf16 autocasts
the compute; model.dtype only sets the VAE and encoders; every FlowNet copy keeps fp32 weights):
  trained        16  fp32 weights 4 + fp32 grads 4 + AdamW moments 8 (the only part FSDP shards: / GPUs)
  a copy          4  fp32: the exported EMA (the loop copies the whole role net, a LoRA's base included), CCD's
                     target, the frozen teacher, DPO's base (the reference) inside the trained role
  LoRA trained   16  per adapter parameter; the base it sits on is counted once, as a copy
Activations and the small heads (discriminators, DMD2's classifier) are not included (bench/gpu.py measures
steps on a GPU). The parts per method are the roles and frozen networks `build_method` declares; tests check the
counts against the built methods at the tiny-wan size.
"""
from __future__ import annotations

import argparse
import json

import torch
from diffusers import WanTransformer3DModel

from workbench.config import LoraConfig
from workbench.models.lora import add_lora
from workbench.models.wan import PRESETS

GB = 1e9


def counts(preset: str, lora_rank: int) -> dict[str, int]:
    """{"params": the transformer's, "lora": a rank-`lora_rank` adapter's on model.lora's targets}."""
    with torch.device("meta"):
        net = WanTransformer3DModel(**PRESETS[preset])
        params = sum(p.numel() for p in net.parameters())
        lora = LoraConfig()
        adapter = sum(p.numel() for p in add_lora(net, lora_rank, lora.alpha, lora.targets))
    return {"params": params, "lora": adapter}


def methods(P: int, L: int) -> dict[str, dict[str, tuple[int, int]]]:
    """Per method, {part: (parameters, bytes per parameter)}; 16 bytes = trained (FSDP-sharded), 4 = a copy."""
    return {
        "flow_matching": {"model (trained)": (P, 16), "model EMA": (P, 4)},
        "ccd": {"student (trained)": (P, 16), "student EMA": (P, 4), "target theta^-": (P, 4), "teacher": (P, 4)},
        "dmd2 (full fake score)": {"student (trained)": (P, 16), "student EMA": (P, 4), "teacher": (P, 4),
                                   "fake score (trained)": (P, 16)},
        "dmd2 (LoRA fake score)": {"student (trained)": (P, 16), "student EMA": (P, 4),
                                   "teacher = the fake score's base": (P, 4), "fake score LoRA (trained)": (L, 16)},
        "ta (dpo, LoRA)": {"model base = DPO reference": (P, 4), "model LoRA (trained)": (L, 16),
                           "model EMA (base + LoRA)": (P + L, 4)},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="wan2.1-fun-1.3b-inp")
    ap.add_argument("--gpus", type=int, default=8, help="FSDP full shard over this many GPUs")
    ap.add_argument("--lora-rank", type=int, default=64)
    ap.add_argument("--markdown", action="store_true", help="the table, not the JSON")
    args = ap.parse_args()
    c = counts(args.preset, args.lora_rank)
    out = {"preset": args.preset, "params": c["params"], "lora_rank": args.lora_rank, "lora_params": c["lora"],
           "fsdp_gpus": args.gpus, "unit": "GB (1e9 bytes), activations excluded", "methods": {}}
    for name, parts in methods(c["params"], c["lora"]).items():
        one = sum(n * b for n, b in parts.values())
        copies = sum(n * b for n, b in parts.values() if b != 16)
        out["methods"][name] = {
            "parts_GB": {k: round(n * b / GB, 3) for k, (n, b) in parts.items()},
            "per_gpu_ddp_GB": round(one / GB, 2),                                   # every GPU holds everything
            "per_gpu_fsdp_GB": round((copies + (one - copies) / args.gpus) / GB, 2),  # copies replicated
        }
    print(markdown(out) if args.markdown else json.dumps(out, indent=1))


def markdown(out: dict) -> str:
    rows = [f"| {name} | {'; '.join(f'{p} {g:.1f}' for p, g in m['parts_GB'].items())} | {m['per_gpu_ddp_GB']:.1f} "
            f"| {m['per_gpu_fsdp_GB']:.1f} |" for name, m in out["methods"].items()]
    return "\n".join([f"| method | parts (GB) | per GPU, DDP | per GPU if FSDP shards the trained roles over "
                      f"{out['fsdp_gpus']} (arithmetic) |", "|---|---|---|---|", *rows])


if __name__ == "__main__":
    main()
