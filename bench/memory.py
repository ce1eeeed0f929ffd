"""Memory per GPU of each method's networks at a preset's size: parameters x bytes plus optimizer state, as JSON.

    python bench/memory.py [--preset wan2.1-fun-1.3b-inp] [--gpus 8] [--lora-rank 64] [--teacher-dtype bfloat16]
                           [--markdown]

--markdown prints the table of experiments/wan/MEMORY.md instead of the JSON of experiments/bench/memory_wan.json.

The transformer is built on the meta device (no memory), so the counts are exact and the 1.3 B preset costs
nothing to count. Bytes per parameter as the code builds the networks (train.mixed_precision bf16 autocasts the
compute; model.dtype only sets the VAE and encoders; every FlowNet copy keeps fp32 weights but a bf16 teacher):
  trained        16  fp32 weights 4 + fp32 grads 4 + AdamW moments 8
  a copy          4  fp32: the exported EMA (the loop copies the whole role net, a LoRA's base included), CCD's
                     target, the frozen teacher, DPO's base (the reference) inside the trained role
  bf16 teacher   ~2  --teacher-dtype bfloat16 (distill.teacher_dtype): 2 bytes, 4 for the parameters of diffusers'
                     fp32 modules (_keep_in_fp32_modules); not DMD2's LoRA fake score's base, which stays fp32
  LoRA trained   16  per adapter parameter; the base it sits on is counted once, as a copy
FSDP (train.fsdp) shards each trained role's whole network (a LoRA's base too) and its EMA: / GPUs; the frozen
networks outside the roles (REPLICATED: CCD's target, a teacher not shared with a role) stay whole on every GPU.
Activations at --tokens (480p x 81 frames = 21 x 30 x 52 = 32,760 tokens, one clip a GPU): the bytes autograd
saves in one bf16 forward of the transformer on the meta device, with the s x s attention matrix left out (flash
attention keeps none); x the graphs a method holds at once (GRAPHS). Without activation checkpointing (DDP config)
every block's saved tensors stay; with it (FSDP config) only each block's input plus one block being recomputed.
The small heads (discriminators, DMD2's classifier) are not included (bench/gpu.py measures steps on a GPU). The parts per method are the roles and frozen networks `build_method` declares; tests check the
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
# forward graphs held at once at one clip a GPU: DMD2's fake-score update (flow matching + real and fake logits),
# TA's DPO (winner and loser)
GRAPHS = {"flow_matching": 1, "ccd": 1, "dmd2 (full fake score)": 3, "dmd2 (LoRA fake score)": 3, "ta (dpo, LoRA)": 2}


def counts(preset: str, lora_rank: int) -> dict[str, int]:
    """{"params": the transformer's, "fp32_kept": those a bf16 teacher keeps in fp32 (methods.base.cast_frozen),
    "lora": a rank-`lora_rank` adapter's on model.lora's targets}."""
    with torch.device("meta"):
        net = WanTransformer3DModel(**PRESETS[preset])
        params = sum(p.numel() for p in net.parameters())
        keep = set(net._keep_in_fp32_modules)
        kept = sum(p.numel() for n, p in net.named_parameters() if keep & set(n.split(".")))
        lora = LoraConfig()
        adapter = sum(p.numel() for p in add_lora(net, lora_rank, lora.alpha, lora.targets))
    return {"params": params, "fp32_kept": kept, "lora": adapter}


def activations(preset: str, frames: int, height: int, width: int) -> dict[str, float]:
    """Bytes autograd saves in one bf16 forward at latent size (frames, height, width): outside the blocks, per
    block, and a block's input; meta device, so nothing is allocated."""
    cfg = PRESETS[preset]
    with torch.device("meta"):
        net = WanTransformer3DModel(**cfg).to(torch.bfloat16)
        x = torch.zeros(1, cfg["in_channels"], frames, height, width, dtype=torch.bfloat16)
        text = torch.zeros(1, 512, cfg["text_dim"], dtype=torch.bfloat16)
        image = torch.zeros(1, 257, cfg["image_dim"], dtype=torch.bfloat16) if cfg.get("image_dim") else None
        timestep = torch.full((1,), 500.0)
    s = frames * (height // cfg["patch_size"][1]) * (width // cfg["patch_size"][2])
    where, saved, block_in = ["outside"], {}, []

    def pack(t):
        if t.numel() % (s * s):                    # an s x s attention matrix: flash attention keeps none
            saved.setdefault(where[0], {})[id(t)] = t.numel() * t.element_size()
        return t

    def enter(module, args):
        where[0] = "block"
        block_in.append(args[0].numel() * args[0].element_size())

    for b in net.blocks[:1]:
        b.register_forward_pre_hook(enter)
        b.register_forward_hook(lambda *_: where.__setitem__(0, "other blocks"))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, timestep, text, encoder_hidden_states_image=image, return_dict=False)
    return {"tokens": s, "layers": len(net.blocks), "outside": sum(saved["outside"].values()),
            "block": sum(saved["block"].values()), "block_input": block_in[0]}


REPLICATED = {"target theta^-", "teacher", "teacher (bf16)"}  # parts outside every trained role


def methods(P: int, L: int, teacher: tuple[str, float] = ("teacher", 4)) -> dict[str, dict[str, tuple[int, float]]]:
    """Per method, {part: (parameters, bytes per parameter)}; 16 bytes = trained, 4 = a copy; `teacher`: the frozen
    teacher's part name and bytes per parameter."""
    name, b = teacher
    return {
        "flow_matching": {"model (trained)": (P, 16), "model EMA": (P, 4)},
        "ccd": {"student (trained)": (P, 16), "student EMA": (P, 4), "target theta^-": (P, 4), name: (P, b)},
        "dmd2 (full fake score)": {"student (trained)": (P, 16), "student EMA": (P, 4), name: (P, b),
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
    ap.add_argument("--latent", type=int, nargs=3, default=[21, 60, 104], metavar=("T", "H", "W"),
                    help="latent frames, height, width (default: 480p x 81 frames)")
    ap.add_argument("--teacher-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="distill.teacher_dtype: the frozen teacher's weights (not a LoRA fake score's base)")
    ap.add_argument("--markdown", action="store_true", help="the table, not the JSON")
    args = ap.parse_args()
    c = counts(args.preset, args.lora_rank)
    teacher = (("teacher (bf16)", 2 + 2 * c["fp32_kept"] / c["params"]) if args.teacher_dtype == "bfloat16"
               else ("teacher", 4))
    a = activations(args.preset, *args.latent)
    no_ckpt = a["outside"] + a["layers"] * a["block"]                          # every block's saved tensors
    ckpt = a["outside"] + a["layers"] * a["block_input"] + a["block"]         # block inputs + one recomputed
    out = {"preset": args.preset, "params": c["params"], "lora_rank": args.lora_rank, "lora_params": c["lora"],
           "fsdp_gpus": args.gpus, "tokens": a["tokens"],
           "activations_GB": {"per_graph_no_checkpointing": round(no_ckpt / GB, 2),
                              "per_graph_checkpointing": round(ckpt / GB, 2)},
           "unit": "GB (1e9 bytes), one clip a GPU", "methods": {}}
    for name, parts in methods(c["params"], c["lora"], teacher).items():
        one = sum(n * b for n, b in parts.values())
        whole = sum(n * b for part, (n, b) in parts.items() if part in REPLICATED)
        fsdp = whole + (one - whole) / args.gpus                                    # the roles' parts sharded
        out["methods"][name] = {
            "parts_GB": {k: round(n * b / GB, 3) for k, (n, b) in parts.items()},
            "per_gpu_ddp_GB": round(one / GB, 2),                                   # every GPU holds everything
            "per_gpu_fsdp_GB": round(fsdp / GB, 2),
            "per_gpu_ddp_with_activations_GB": round((one + GRAPHS[name] * no_ckpt) / GB, 1),
            "per_gpu_fsdp_checkpointed_with_activations_GB": round((fsdp + GRAPHS[name] * ckpt) / GB, 1),
        }
    print(markdown(out) if args.markdown else json.dumps(out, indent=1))


def markdown(out: dict) -> str:
    n = out["fsdp_gpus"]
    rows = [f"| {name} | {'; '.join(f'{p} {g:.1f}' for p, g in m['parts_GB'].items())} | {m['per_gpu_ddp_GB']:.1f} "
            f"| {m['per_gpu_fsdp_GB']:.1f} | {m['per_gpu_ddp_with_activations_GB']:.0f} "
            f"| {m['per_gpu_fsdp_checkpointed_with_activations_GB']:.1f} |" for name, m in out["methods"].items()]
    return "\n".join([f"| method | parts (GB) | per GPU, DDP | per GPU, FSDP over {n} | DDP + activations at "
                      f"{out['tokens']:,} tokens | FSDP over {n} + checkpointed activations |",
                      "|---|---|---|---|---|---|", *rows])


if __name__ == "__main__":
    main()
