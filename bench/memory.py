"""Memory per GPU of each method's networks at a preset's size: parameters x bytes plus optimizer state, as JSON.

    python bench/memory.py [--preset wan2.1-fun-1.3b-inp] [--gpus 8] [--lora-rank 64] [--teacher-dtype bfloat16]
                           [--latent T H W] [--stages [--stage-latent T H W]] [--markdown]

--markdown prints the tables of experiments/wan/MEMORY.md instead of the JSON of experiments/bench/memory_wan.json
(MEMORY.md: `--markdown`, then `--markdown --teacher-dtype bfloat16 --stages`).

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
Activations at --latent (480p x 81 frames = 21 x 60 x 104 latents = 32,760 tokens, one clip a GPU): the bytes
autograd saves in one bf16 forward of the transformer on the meta device (bf16 weights stand for bf16 autocast), a
tensor and its views counted once; x the graphs a method holds at once (GRAPHS). Attention path of each figure:
  flash  every scaled_dot_product_attention replaced (while counting) by one that saves what FlashAttention-2 and
         PyTorch's flash / memory-efficient SDPA save: q, k, v, the output and the fp32 log-sum-exp; what the
         loop gets on a GPU in bf16. The method table and the stage totals use it.
  math   PyTorch's math SDPA (what runs on meta and CPU): its s x s and s x 769 (text + image) attention
         probabilities and the copies it makes, given separately ("attention matrices").
Without activation checkpointing (DDP config) every block's saved tensors stay; with it (FSDP config) only each
block's input plus one block being recomputed.
--stages adds what the stages of experiments/wan/swiftvideo.yaml need beside the networks, at --stage-latent
(the configs' 480p x 61 frames = 16 x 60 x 104 = 24,960 tokens), each counted on the meta device:
  encoders     UMT5-XXL encoder (UMT5Config at its XXL sizes), CLIP ViT-H/14 vision tower (CLIPVisionConfig), the
               Wan VAE (diffusers AutoencoderKLWan's default config = Wan2.1's), bf16 and fp32; with data.cache only
               the VAE decoder stays on a GPU
  da_decode    DA's decode with gradients (bf16 VAE): the bytes autograd saves decoding x0_hat, all 16 latent
               frames (61 pixel frames) vs the first adversarial.latent_frames of experiments/wan/da.yaml, and the frozen
               DINOv2-base (518 px, 14 px patches, hidden states 2, 5, 8, 11) on those frames with gradients
  jvp          the block-wise JVP with the chunked attention JVP (distill.jvp_chunk 1024) under no_grad: peak bytes
               of live tensors made during workbench.models.jvp.velocity_and_tangent (a forward-mode pass keeps,
               per block, the block's primals and tangents in flight; between blocks only h and its tangent)
  sampling     peak bytes of live tensors in one no-grad forward (flash) and in the no-grad decode of 61 frames
Peaks of live tensors ("live peak") count every tensor an op makes from its creation until Python frees it, views
and in-place results not again; the caching allocator's fragmentation and the CUDA context (~0.5-1 GB) are not in
them. Counted, not measured on a GPU.
The small heads (discriminators, DMD2's classifier) are not included (bench/gpu.py measures steps on a GPU). The parts per method are the roles and frozen networks `build_method` declares; tests check the
counts against the built methods at the tiny-wan size.
"""
from __future__ import annotations

import argparse
import json
import weakref
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from diffusers import WanTransformer3DModel
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from workbench.config import LoraConfig
from workbench.models.lora import add_lora
from workbench.models.wan import PRESETS

GB = 1e9
TEXT_TOKENS, IMAGE_TOKENS = 512, 257
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


class _FlashSaves(torch.autograd.Function):
    """Stands for flash attention while counting: the output, saving q, k, v, the output and the fp32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, g):
        raise NotImplementedError("counting only")


class FlashMode(TorchFunctionMode):
    """Every scaled_dot_product_attention inside it runs as _FlashSaves (no s x s matrix is made)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            kwargs = kwargs or {}
            qkv = [*args[:3], *(kwargs[k] for k in ("query", "key", "value")[len(args[:3]):])]
            return _FlashSaves.apply(*qkv)
        return func(*args, **(kwargs or {}))


class LivePeak(TorchDispatchMode):
    """Peak bytes of the live tensors made under it: each op's new outputs counted until Python frees them (a view
    keeps what it views counted; aliases and in-place results are not counted again)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, n):
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        alias = any(r.alias_info is not None for r in func._schema.returns)
        keep = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)] if alias else None
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            if alias:
                t._counted_with = keep
            else:
                n = t.numel() * t.element_size()
                self.live += n
                weakref.finalize(t, self._free, n)
        self.peak = max(self.peak, self.live)
        return out


class Saved:
    """Bytes autograd saves under it, a tensor and its views once (keyed by the viewed tensor)."""

    def __init__(self):
        self.by = {}

    def pack(self, t):
        base = t if t._base is None else t._base
        self.by.setdefault(self.where, {})[id(base)] = base.numel() * base.element_size(), base
        return t

    def total(self, where=None) -> int:
        return sum(n for w, d in self.by.items() if where in (None, w) for n, _ in d.values())

    where = "all"


def _wan_inputs(cfg: dict, frames: int, height: int, width: int, dtype=torch.bfloat16):
    x = torch.zeros(1, cfg["in_channels"], frames, height, width, dtype=dtype)
    text = torch.zeros(1, TEXT_TOKENS, cfg["text_dim"], dtype=dtype)
    image = torch.zeros(1, IMAGE_TOKENS, cfg["image_dim"], dtype=dtype) if cfg.get("image_dim") else None
    return x, text, image


def activations(preset: str, frames: int, height: int, width: int, attention: str = "flash") -> dict[str, float]:
    """Bytes autograd saves in one bf16 forward at latent size (frames, height, width): outside the blocks, per
    block, a block's input, and (math) the attention probabilities per block; meta device, nothing allocated."""
    cfg = PRESETS[preset]
    with torch.device("meta"):
        net = WanTransformer3DModel(**cfg).to(torch.bfloat16)
        x, text, image = _wan_inputs(cfg, frames, height, width)
        timestep = torch.full((1,), 500.0)
    s = frames * (height // cfg["patch_size"][1]) * (width // cfg["patch_size"][2])
    saved, block_in = Saved(), []

    def enter(module, args):
        saved.where = "block"
        block_in.append(args[0].numel() * args[0].element_size())

    def leave(*_):
        saved.where = "other blocks"

    saved.where = "outside"
    for b in net.blocks[:1]:
        b.register_forward_pre_hook(enter)
        b.register_forward_hook(leave)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), \
            (FlashMode() if attention == "flash" else nullcontext()):
        net(x, timestep, text, encoder_hidden_states_image=image, return_dict=False)
    matrices = sum(n for n, t in saved.by["block"].values() if t.shape[-1] in (s, TEXT_TOKENS, IMAGE_TOKENS)
                   and t.dim() == 4 and t.shape[-2] == s)           # (1, heads, s, s | 512 | 257)
    return {"attention": attention, "tokens": s, "layers": len(net.blocks), "outside": saved.total("outside"),
            "block": saved.total("block"), "block_input": block_in[0], "attention_matrices_per_block": matrices}


def totals(a: dict) -> tuple[float, float]:
    """(bytes a graph keeps without, with activation checkpointing) from `activations`."""
    no_ckpt = a["outside"] + a["layers"] * a["block"]                          # every block's saved tensors
    ckpt = a["outside"] + a["layers"] * a["block_input"] + a["block"]         # block inputs + one recomputed
    return no_ckpt, ckpt


# --- what the stages need beside the networks (--stages) --------------------------------------------------------

UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
                "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
CLIP_VIT_H14 = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
                    "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu"}
DINOV2_BASE = {"image_size": 518, "patch_size": 14, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12}
DINO_LAYERS = (2, 5, 8, 11)


def encoders() -> dict[str, int]:
    """Parameters of the frozen encoders and DA's feature net, built on the meta device."""
    from diffusers import AutoencoderKLWan
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2Config,
        Dinov2Model,
        UMT5Config,
        UMT5EncoderModel,
    )
    n = lambda m: sum(p.numel() for p in m.parameters())
    with torch.device("meta"):
        vae = AutoencoderKLWan()
        return {"umt5_xxl_encoder": n(UMT5EncoderModel(UMT5Config(**UMT5_XXL))),
                "clip_vit_h14_vision": n(CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_H14))),
                "wan_vae": n(vae), "wan_vae_decoder": n(vae.decoder) + n(vae.post_quant_conv),
                "dinov2_base": n(Dinov2Model(Dinov2Config(**DINOV2_BASE)))}


def _vae():
    from diffusers import AutoencoderKLWan
    with torch.device("meta"):
        return AutoencoderKLWan().to(torch.bfloat16).requires_grad_(False)


def decode_saved(latent_frames: int, height: int, width: int) -> int:
    """Bytes autograd saves decoding (1, 16, latent_frames, height, width) with gradients to the latents (bf16)."""
    vae, saved = _vae(), Saved()
    with torch.device("meta"):
        z = torch.zeros(1, vae.config.z_dim, latent_frames, height, width, dtype=torch.bfloat16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        vae.decode(z)
    return saved.total()


def decode_live_peak(latent_frames: int, height: int, width: int) -> int:
    """Live peak of the no-grad decode (sampling, evaluation)."""
    vae = _vae()
    with torch.device("meta"):
        z = torch.zeros(1, vae.config.z_dim, latent_frames, height, width, dtype=torch.bfloat16)
    with torch.no_grad(), LivePeak() as m:
        vae.decode(z)
    return m.peak


def dino_saved(frames: int) -> int:
    """Bytes autograd saves in the frozen DINOv2-base (fp32, as loaded) reading `frames` frames at 518 px with
    gradients to the pixels (DA's generator term), flash attention, up to its last hidden state read."""
    from transformers import Dinov2Config, Dinov2Model
    saved = Saved()
    with torch.device("meta"):
        net = Dinov2Model(Dinov2Config(**{**DINOV2_BASE, "num_hidden_layers": max(DINO_LAYERS)},
                                       attn_implementation="sdpa")).requires_grad_(False)
        px = torch.zeros(frames, 3, 518, 518, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), FlashMode():
        net(pixel_values=px, output_hidden_states=True)
    return saved.total()


def _flownet_meta(preset: str, frames: int, height: int, width: int):
    from workbench.models.wan import Conditioning, build_flownet
    cfg = PRESETS[preset]
    with torch.device("meta"):
        net = build_flownet(preset).to(torch.bfloat16).eval().requires_grad_(False)
        x, text, image = _wan_inputs(cfg, frames, height, width)
        C = cfg["out_channels"]
        xt = x[:, :C].contiguous()
        cond = Conditioning(torch.zeros_like(xt), torch.zeros(1, cfg["in_channels"] - 2 * C, frames, height, width,
                                                               dtype=torch.bfloat16), text, image)
        t = torch.full((1,), 0.5, dtype=torch.bfloat16)
    return net, xt, t, cond


def forward_live_peak(preset: str, frames: int, height: int, width: int) -> int:
    """Live peak of one no-grad bf16 forward with flash attention (a sampling step; the teacher's and target's)."""
    net, x, t, cond = _flownet_meta(preset, frames, height, width)
    with torch.no_grad(), FlashMode(), LivePeak() as m:
        net(x, t, cond)
    return m.peak


def jvp_live_peak(preset: str, frames: int, height: int, width: int, chunk: int = 1024) -> int:
    """Live peak of CCD's tangent: block-wise forward-mode JVP, chunked attention JVP (its forward flash). Block-wise,
    only h and its tangent pass from one block to the next, so two blocks peak as the 30 do (and count 15x faster)."""
    from unittest import mock

    from workbench.models import jvp
    net, x, t, cond = _flownet_meta(preset, frames, height, width)
    net.transformer.blocks = net.transformer.blocks[:2]
    flash = lambda qq, kk, vv, chunk: qq.new_empty((2, *qq.shape[:2], qq.shape[-1]))  # noqa: E731  no s x s
    with mock.patch.dict(jvp.ATTEND, {"chunked": flash}), LivePeak() as m:
        jvp.velocity_and_tangent(net, x, t, cond, torch.zeros_like(x), mode="blockwise", attention="chunked",
                                 chunk=chunk)
    return m.peak


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


def stages(c: dict, gpus: int, latent: tuple[int, int, int], method_fsdp: dict[str, float]) -> dict:
    """Per-GPU GB of each stage of experiments/wan/swiftvideo.yaml under its memory plan (FSDP over `gpus`,
    activation checkpointing, bf16 autocast, bf16 teacher, chunked JVP, DA on 4 latent frames, data.cache), at
    `latent` (the configs' 480p x 61 frames); `method_fsdp`: the networks' per-GPU bytes from the method table."""
    T, H, W = latent
    enc = encoders()
    a = activations(PRESETS_NAME, T, H, W, "flash")
    ckpt = totals(a)[1]
    jvp = jvp_live_peak(PRESETS_NAME, T, H, W)
    fwd = forward_live_peak(PRESETS_NAME, T, H, W)
    decoder = 2 * enc["wan_vae_decoder"]                                   # bf16 (model.dtype), data.cache
    live_encoders = 2 * (enc["umt5_xxl_encoder"] + enc["clip_vit_h14_vision"])   # bf16, without data.cache
    da_frames = 1 + 4 * (DA_LATENT_FRAMES - 1)
    parts = {
        "decode_with_grad_all_frames": decode_saved(T, H, W), "decode_with_grad_prefix": decode_saved(DA_LATENT_FRAMES, H, W),
        "dino_with_grad_prefix": dino_saved(da_frames), "decode_no_grad_live_peak": decode_live_peak(T, H, W),
        "forward_no_grad_live_peak": fwd, "jvp_live_peak": jvp, "checkpointed_graph": ckpt,
        "vae_decoder_bf16": decoder, "umt5_clip_bf16": live_encoders, "dinov2_base_fp32": 4 * enc["dinov2_base"]}
    sampler = 4 * c["params"]                                              # the student, whole, fp32 weights
    da = parts["decode_with_grad_prefix"] + parts["dino_with_grad_prefix"]
    rows = {
        "ccd": {"networks (FSDP)": method_fsdp["ccd"], "VAE decoder": decoder, "checkpointed graph": ckpt,
                "block-wise JVP (transient)": jvp},
        "ccd_da": {"networks (FSDP)": method_fsdp["ccd"], "VAE decoder": decoder, "DINOv2-base": 4 * enc["dinov2_base"],
                   "checkpointed graph": ckpt, f"max(JVP, decode + DINOv2 with grad, {DA_LATENT_FRAMES} latent frames)":
                   max(jvp, da)},
        "ta pairs (sampling)": {"student (fp32, whole)": sampler, "VAE decoder": decoder,
                                "max(forward, decode 61 frames), no grad": max(fwd, parts["decode_no_grad_live_peak"])},
        "ta": {"networks (FSDP)": method_fsdp["ta (dpo, LoRA)"], "VAE decoder": decoder,
               "checkpointed graph x 2 (winner + loser)": 2 * ckpt, "reference forward x 2 (transient)": 2 * fwd},
        "eval (sampling)": {"student EMA (fp32, whole)": sampler, "VAE decoder": decoder,
                            "max(forward, decode 61 frames), no grad": max(fwd, parts["decode_no_grad_live_peak"])},
    }
    return {"tokens": a["tokens"], "latent_THW": list(latent), "gpus": gpus, "da_latent_frames": DA_LATENT_FRAMES,
            "encoders_params": enc,
            "encoders_GB": {k: {"bf16": round(2 * n / GB, 2), "fp32": round(4 * n / GB, 2)} for k, n in enc.items()},
            "parts_GB": {k: round(v / GB, 2) for k, v in parts.items()},
            "stages_GB": {name: {**{k: round(v / GB, 2) for k, v in r.items()}, "total": round(sum(r.values()) / GB, 1)}
                          for name, r in rows.items()},
            "without_cache_add_GB": round(live_encoders / GB, 1)}


PRESETS_NAME = "wan2.1-fun-1.3b-inp"
# DA's frame subset as experiments/wan/da.yaml sets it (the config is the one source of it)
DA_LATENT_FRAMES = yaml.safe_load((Path(__file__).parents[1] / "experiments/wan/da.yaml").read_text()
                                  )["adversarial"]["latent_frames"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="wan2.1-fun-1.3b-inp")
    ap.add_argument("--gpus", type=int, default=8, help="FSDP full shard over this many GPUs")
    ap.add_argument("--lora-rank", type=int, default=64)
    ap.add_argument("--latent", type=int, nargs=3, default=[21, 60, 104], metavar=("T", "H", "W"),
                    help="latent frames, height, width of the method table (default: 480p x 81 frames)")
    ap.add_argument("--teacher-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="distill.teacher_dtype: the frozen teacher's weights (not a LoRA fake score's base)")
    ap.add_argument("--stages", action="store_true", help="add the encoders, DA's decode, the JVP, sampling and the "
                    "per-GPU total of each stage of experiments/wan/swiftvideo.yaml (about a minute)")
    ap.add_argument("--stage-latent", type=int, nargs=3, default=[16, 60, 104], metavar=("T", "H", "W"),
                    help="the stages' latent size (default: the configs' 480p x 61 frames)")
    ap.add_argument("--markdown", action="store_true", help="the tables, not the JSON")
    args = ap.parse_args(argv)
    c = counts(args.preset, args.lora_rank)
    bf16_teacher = ("teacher (bf16)", 2 + 2 * c["fp32_kept"] / c["params"])
    teacher = bf16_teacher if args.teacher_dtype == "bfloat16" else ("teacher", 4)
    flash = activations(args.preset, *args.latent, "flash")
    math = activations(args.preset, *args.latent, "math")
    no_ckpt, ckpt = totals(flash)
    m_no, m_ck = totals(math)
    mat = math["attention_matrices_per_block"]
    out = {"preset": args.preset, "params": c["params"], "lora_rank": args.lora_rank, "lora_params": c["lora"],
           "fsdp_gpus": args.gpus, "tokens": flash["tokens"],
           "activations_GB": {"per_graph_no_checkpointing": round(no_ckpt / GB, 2),
                              "per_graph_checkpointing": round(ckpt / GB, 2), "attention": "flash",
                              "math": {"per_graph_no_checkpointing": round(m_no / GB, 2),
                                       "per_graph_checkpointing": round(m_ck / GB, 2),
                                       "attention_matrices_per_block": round(mat / GB, 2),
                                       "per_graph_no_checkpointing_without_matrices":
                                           round((m_no - math["layers"] * mat) / GB, 2)}},
           "unit": "GB (1e9 bytes), one clip a GPU; counted on the meta device, not measured on a GPU", "methods": {}}
    fsdp_bytes = {}
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
    if args.stages:
        for name, parts in methods(c["params"], c["lora"], bf16_teacher).items():    # the plan: a bf16 teacher
            whole = sum(n * b for part, (n, b) in parts.items() if part in REPLICATED)
            fsdp_bytes[name] = whole + (sum(n * b for n, b in parts.values()) - whole) / args.gpus
        out["stages"] = stages(c, args.gpus, tuple(args.stage_latent), fsdp_bytes)
    print(markdown(out) if args.markdown else json.dumps(out, indent=1))
    return out


def markdown(out: dict) -> str:
    n = out["fsdp_gpus"]
    rows = [f"| {name} | {'; '.join(f'{p} {g:.1f}' for p, g in m['parts_GB'].items())} | {m['per_gpu_ddp_GB']:.1f} "
            f"| {m['per_gpu_fsdp_GB']:.1f} | {m['per_gpu_ddp_with_activations_GB']:.0f} "
            f"| {m['per_gpu_fsdp_checkpointed_with_activations_GB']:.1f} |" for name, m in out["methods"].items()]
    head = (f"| method | parts (GB) | per GPU, DDP | per GPU, FSDP over {n} | DDP + activations at "
            f"{out['tokens']:,} tokens (flash) | FSDP over {n} + checkpointed activations (flash) |")
    text = [head, "|---|---|---|---|---|---|", *rows]
    if "stages" in out:
        st = out["stages"]
        text += ["", "| encoder | parameters | bf16 GB | fp32 GB |", "|---|---|---|---|",
                 *[f"| {k} | {st['encoders_params'][k] / 1e6:,.1f} M | {v['bf16']:.2f} | {v['fp32']:.2f} |"
                   for k, v in st["encoders_GB"].items()],
                 "", f"| part at {st['tokens']:,} tokens (latents {' x '.join(map(str, st['latent_THW']))}) | GB |",
                 "|---|---|", *[f"| {k} | {v:.2f} |" for k, v in st["parts_GB"].items()],
                 "", f"| stage (per GPU, FSDP over {st['gpus']}) | parts (GB) | total GB |", "|---|---|---|",
                 *[f"| {name} | {'; '.join(f'{k} {v:.2f}' for k, v in r.items() if k != 'total')} | {r['total']:.1f} |"
                   for name, r in st["stages_GB"].items()]]
    return "\n".join(text)


if __name__ == "__main__":
    main()
