"""The GPU check (issues 22, 35): seconds and peak memory of each SwiftVideo step at the Wan2.1-Fun-1.3B-InP
architecture under its memory plan, as one JSON object.

    python bench/gpu.py [--out FILE] [--budget 540]   on a CUDA machine: random weights from the preset, built on
                                                      the device (nothing downloaded); no measurement starts after
                                                      --budget s, so a run ends within ~10 min (not yet run on a GPU)
    python bench/gpu.py --tiny [--out FILE]           every measurement on the CPU at the tiny-wan size (tests)

The memory plan of experiments/wan/{ccd,da,dpo}.yaml: train.activation_checkpointing (the trained transformer's
blocks recomputed in backward, as workbench.train.roles.build_trained enables it), train.mixed_precision bf16
(the loop's autocast), distill.teacher_dtype bfloat16, distill.jvp blockwise with distill.jvp_attention chunked,
adversarial.latent_frames (DA decodes a prefix of x0_hat), and the cached encoder outputs (data.cache: no UMT5, no
CLIP, only the VAE's decoder: here `LatentEncoders`, fixed random latents and tokens + a random Wan VAE decoder).
train.fsdp is set too; on one process build_trained does not shard (FSDP needs several GPUs: see "fsdp").

sampling       one clip: the teacher's 50 Euler steps with guidance 5 (two forwards a step; bf16 weights, as
               distill.teacher_dtype) against the student's 4 steps without guidance (fp32 weights, bf16 autocast)
attention_jvp  torch.func.jvp of attention alone at Wan's 12 heads x 128, bf16: math SDPA vs the chunked JVP
               (workbench.models.jvp.chunked_attention), at 16k and 32k tokens
steps          one training step as the loop runs it (workbench.train.roles.update_roles: losses under bf16
               autocast, backward, AdamW, the exported EMA; fp32 trained weights), batch 1:
               flow_matching; ccd (block-wise JVP, chunked attention JVP, bf16 teacher); da (method adversarial on
               CCD, a random DINOv2 at dinov2-base size (--tiny: the tiny one of workbench.models.tiny_wan),
               layers 2, 5, 8, 11, the first 4 latent frames decoded with gradients, both roles updating); ta
               (method dpo, rank-64 LoRA, a winner and a loser).
Sizes: each step and the sampling try SIZES from the largest (480p x 81 frames = 21 x 60 x 104 latents = 32,760
tokens) down; an out-of-memory is recorded as {"skipped": "out of memory", "reason": ...} and the next size tried,
so the JSON holds figures at the largest size that fits ("fits": its label; null if none did).
Each measurement: one untimed warm-up, then one timed call; "seconds", "peak_mib" = the peak above what was
allocated before it, "peak_total_mib" = the peak itself (CUDA: max_memory_allocated; CPU: VmHWM over VmRSS, and
VmHWM). Another error gives {"error": "..."}, a measurement begun past --budget s {"skipped": "budget"}.
--simulate-oom-above N (tests) raises torch.OutOfMemoryError in any step or sampling above N tokens.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _emit import emit  # noqa: E402  bench/_emit.py (the script's folder is on sys.path)

# latent (T', H', W') per size, largest first; tokens = T' (H'/2) (W'/2) with Wan's (1, 2, 2) patches, pixel frames
# 1 + 4 (T' - 1), pixels 8x the latents. 480p_61f is what experiments/wan/*.yaml train at (data.videos.frames 61).
REAL = dict(preset="wan2.1-fun-1.3b-inp",
            sizes={"480p_81f": (21, 60, 104), "480p_61f": (16, 60, 104), "480p_33f": (9, 60, 104),
                   "240p_81f": (21, 30, 52), "240p_17f": (5, 30, 52)},
            attention={"16k": 16380, "32k": 32760}, heads=12, head_dim=128, chunk=1024, latent_frames=4,
            lora_rank=64, dino=dict(image_size=518, patch_size=14, hidden_size=768, num_hidden_layers=12,
                                    num_attention_heads=12, intermediate_size=3072), dino_layers=[2, 5, 8, 11])
TINY = dict(preset="tiny-wan", sizes={"large": (3, 16, 16), "small": (3, 8, 8)},
            attention={"16k": 256, "32k": 512}, heads=2, head_dim=8, chunk=64, latent_frames=2, lora_rank=4,
            dino=None, dino_layers=[1, 2])
STEPS = ("flow_matching", "ccd", "da", "ta")
TEXT_TOKENS, IMAGE_TOKENS = 512, 257
FSDP_COMMAND = ("accelerate launch --config_file experiments/wan/accelerate_fsdp.yaml --num_processes 8 "
                "bench/gpu.py --sizes 480p_81f --out experiments/bench/gpu_fsdp8.json")


class Clock:
    """Measurements on one device against one time budget."""

    def __init__(self, device: torch.device, budget: float, oom_above: int | None = None):
        self.device, self.budget, self.start, self.oom_above = device, budget, time.perf_counter(), oom_above

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _allocated(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated()
        return _status_kib("VmRSS") * 1024

    def _reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS

    def _peak(self) -> float:
        return torch.cuda.max_memory_allocated() if self.device.type == "cuda" else _status_kib("VmHWM") * 1024

    def free(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def measure(self, fn, warmup=None, tokens: int = 0) -> dict:
        """{"seconds", "peak_mib", "peak_total_mib"} of fn() after `warmup()` (default: fn itself), or why none."""
        if self.elapsed() > self.budget:
            return {"skipped": "budget"}
        self.free()
        self._sync()
        before = self._allocated()
        self._reset_peak()
        try:
            if self.oom_above is not None and tokens > self.oom_above:
                raise torch.OutOfMemoryError(f"simulated: {tokens} tokens > --simulate-oom-above {self.oom_above}")
            (warmup or fn)()
            self._sync()
            start = time.perf_counter()
            fn()
            self._sync()
            seconds = time.perf_counter() - start
            peak = self._peak()
        except torch.OutOfMemoryError as e:
            return {"skipped": "out of memory", "reason": " ".join(str(e).split())[:300]}
        except RuntimeError as e:
            return {"error": " ".join(f"{type(e).__name__}: {e}".split())[:300]}
        finally:
            self.free()
        return {"seconds": round(seconds, 4), "peak_mib": round(max(peak - before, 0) / 2**20, 1),
                "peak_total_mib": round(peak / 2**20, 1)}


def _status_kib(field: str) -> int:
    return int(next(s for s in Path("/proc/self/status").read_text().splitlines() if s.startswith(field + ":"))
               .split()[1])


def tokens(latent_THW) -> int:
    T, H, W = latent_THW
    return T * (H // 2) * (W // 2)


def largest_that_fits(size: dict, clock: Clock, measure_at) -> dict:
    """measure_at(label, latent) at each size from the largest down until one is measured; {"fits", label: ...}."""
    out = {"fits": None}
    for label, latent in size["sizes"].items():
        m = measure_at(label, latent)
        out[label] = {"tokens": tokens(latent), "latent_THW": list(latent), **m}
        if not {"skipped", "error"} & set(m):
            out["fits"] = label
            break
        if m.get("skipped") == "budget":
            break
    return out


class LatentEncoders:
    """Stands for data.cache's encoders (models/cached.py): every batch is the same random latents and tokens, no
    UMT5 or CLIP; `decode` runs a Wan VAE decoder (random weights) with gradients, as DA's does."""

    def __init__(self, x0_BCTHW, cond, codec=None):
        self.x0, self.cond, self.codec = x0_BCTHW, cond, codec

    def prepare(self, video, captions):
        return self.x0, self.cond

    def condition(self, first_B3HW, captions, frames):
        return self.cond

    def decode(self, latents_BCTHW):
        return self.codec.decode(latents_BCTHW)

    def null_text(self, batch_size: int):
        return torch.zeros_like(self.cond.text_BLD[:1]).expand(batch_size, -1, -1)


def random_inputs(preset: str, latent_THW, device):
    """(x0 latents (1, C, T', H', W'), a Fun-InP Conditioning: 4 mask channels, first-frame latents, text, image)."""
    from workbench.models.wan import PRESETS, Conditioning
    p = PRESETS[preset]
    C = p["out_channels"]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, C, *latent_THW, generator=g)
    mask = torch.zeros(1, p["in_channels"] - 2 * C, *latent_THW)
    mask[:, :, 0] = 1
    image = torch.randn(1, IMAGE_TOKENS, p["image_dim"], generator=g) if p["image_dim"] else None
    cond = Conditioning(torch.randn(x0.shape, generator=g), mask, torch.randn(1, TEXT_TOKENS, p["text_dim"],
                                                                                generator=g), image)
    return x0.to(device), Conditioning(*(None if x is None else x.to(device) for x in
                                         (cond.first_BCTHW, cond.mask_BMTHW, cond.text_BLD, cond.image_BND)))


def pixel_batch(latent_THW, device) -> dict:
    """Real clips in [-1, 1] for DA (1 + 4 (T' - 1) frames, 8x the latents) and a TA pair's first frame."""
    T, H, W = latent_THW
    video = torch.rand(1, 3, 1 + 4 * (T - 1), 8 * H, 8 * W, device=device) * 2 - 1
    return {"video": video, "first": video[:, :, 0], "frames": [video.shape[2]]}


def vae_decoder(tiny: bool, device, dtype=torch.bfloat16):
    """A Wan VAE (diffusers AutoencoderKLWan: the default config = Wan2.1's; --tiny: the tiny one) with random
    weights and its encoder dropped, as data.cache keeps it; in model.dtype bf16."""
    from diffusers import AutoencoderKLWan

    from workbench.models.codec import WanVAECodec
    if tiny:
        from workbench.models import tiny_wan
        with tempfile.TemporaryDirectory() as d:
            vae = AutoencoderKLWan.from_pretrained(str(tiny_wan.save_vae(Path(d) / "vae")))
    else:
        with torch.device(device):
            vae = AutoencoderKLWan()
    vae.encoder = None                            # the cache holds the encoded latents
    return WanVAECodec(vae.to(device, dtype))


def feature_net_folder(size: dict, folder: Path) -> str:
    """A local Dinov2Model folder for adversarial.feature_net: tiny (workbench.models.tiny_wan.save_dino), or a
    random one at dinov2-base's size (86 M parameters; no weights are downloaded)."""
    from transformers import Dinov2Config, Dinov2Model

    from workbench.models import tiny_wan
    if size["dino"] is None:
        return str(tiny_wan.save_dino(folder))
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**size["dino"])).save_pretrained(folder)
    return str(folder)


def sampling(size: dict, clock: Clock) -> dict:
    """Teacher 50 steps with guidance 5 (bf16 weights) vs student 4 steps (fp32, autocast), one clip each, at the
    largest size that fits (euler on Wan's shift-5 grid; the same random net stands for both)."""
    from workbench.methods.base import cast_frozen
    from workbench.models.wan import build_flownet
    from workbench.sampling import euler, schedule
    from workbench.train.roles import autocast
    with torch.device(clock.device):
        net = build_flownet(size["preset"]).eval().requires_grad_(False)

    def at(label, latent):
        x0, cond = random_inputs(size["preset"], latent, clock.device)
        null = LatentEncoders(x0, cond).null_text(1)

        def run(steps, guidance):
            with torch.no_grad(), autocast("bf16", clock.device):
                return euler(net, torch.randn_like(x0), cond, schedule(steps, 5.0), guidance=guidance,
                             null_text=null)
        one_step = lambda: run(1, 1.0)  # noqa: E731  (warm-up: the teacher's 100 forwards are not run twice)
        n = tokens(latent)
        for p in net.parameters():      # the student: fp32 weights
            p.data = p.data.float()
        student = clock.measure(lambda: run(4, 1.0), one_step, n)
        if "seconds" not in student:
            return student
        cast_frozen(net, torch.bfloat16)   # the teacher: bf16 weights (distill.teacher_dtype)
        teacher = clock.measure(lambda: run(50, 5.0), one_step, n)
        if "seconds" not in teacher:
            return {"student_4_steps": student, **teacher}
        return {"teacher_50_steps_guidance_5": teacher, "student_4_steps": student,
                "speedup": round(teacher["seconds"] / student["seconds"], 2)}
    out = largest_that_fits(size, clock, at)
    del net
    clock.free()
    return out


def attention_jvp(size: dict, clock: Clock) -> dict:
    """Math SDPA's forward-mode JVP vs the chunked one, (1, heads, N, head_dim) in bf16, under no_grad."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from workbench.models.jvp import chunked_attention
    out = {"heads": size["heads"], "head_dim": size["head_dim"], "chunk": size["chunk"]}
    for label, n in size["attention"].items():
        g = torch.Generator().manual_seed(0)
        q, k, v, dq, dk, dv = (torch.randn(1, size["heads"], n, size["head_dim"], generator=g)
                               .to(clock.device, torch.bfloat16) for _ in range(6))

        @torch.no_grad()
        def math():
            with sdpa_kernel(SDPBackend.MATH):
                return torch.func.jvp(F.scaled_dot_product_attention, (q, k, v), (dq, dk, dv))

        @torch.no_grad()
        def chunked():
            return torch.func.jvp(lambda q, k, v: chunked_attention(q, k, v, chunk=size["chunk"]), (q, k, v),
                                  (dq, dk, dv))
        out[label] = {"tokens": n, "forward": clock.measure(torch.no_grad()(lambda: F.scaled_dot_product_attention(q, k, v))),
                      "math": clock.measure(math), "chunked": clock.measure(chunked)}
        del q, k, v, dq, dk, dv
    return out


def step_config(size: dict, step: str, feature_net: str) -> list[str]:
    """--set overrides of one step under the memory plan."""
    plan = [f"model.preset={size['preset']}", "train.mixed_precision=bf16", "train.activation_checkpointing=true",
            "train.fsdp=true", "distill.teacher_dtype=bfloat16", "distill.tangent_warmup=0",
            "distill.jvp=blockwise", "distill.jvp_attention=chunked", f"distill.jvp_chunk={size['chunk']}"]
    return plan + {
        "flow_matching": ["train.method=flow_matching"],
        "ccd": ["train.method=ccd"],
        "da": ["train.method=adversarial", "adversarial.distill=ccd", "adversarial.warmup=0",
               f"adversarial.feature_net={feature_net}", f"adversarial.layers={size['dino_layers']}",
               f"adversarial.latent_frames={size['latent_frames']}"],
        "ta": ["train.method=dpo", f"model.lora.rank={size['lora_rank']}", f"model.lora.alpha={size['lora_rank']}"],
    }[step]


def method_steps(size: dict, clock: Clock, accelerator, tiny: bool) -> dict:
    """One loop step of each method under the memory plan, at the largest size that fits; a method is built once."""
    from workbench.methods import build_method, load_config
    from workbench.models.lora import add_lora
    from workbench.models.wan import build_flownet
    from workbench.train.roles import build_trained, step_generator, train_step, update_roles
    device = clock.device
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        codec = vae_decoder(tiny, device)
        feature_net = feature_net_folder(size, Path(tmp) / "dino")
        first = next(iter(size["sizes"].values()))
        for name in STEPS:
            if clock.elapsed() > clock.budget:
                out[name] = {"fits": None, "skipped": "budget"}
                continue
            cfg = load_config(None, step_config(size, name, feature_net))
            with torch.device(device):
                net = build_flownet(cfg.model.preset)
            if cfg.model.lora.rank:
                add_lora(net.transformer, cfg.model.lora.rank, cfg.model.lora.alpha, cfg.model.lora.targets)
            encoders = LatentEncoders(*random_inputs(size["preset"], first, device), codec)
            built = build_method(cfg, net, encoders)
            for part in built.frozen().values():             # DINOv2 is loaded on the CPU
                if isinstance(part, torch.nn.Module):
                    part.to(device)
            roles = built.roles()
            for role in roles.values():
                role.net.to(device)
            trained = build_trained(roles, cfg.train, accelerator)
            every_role = [i for i in range(100) if all(t.role.due(i) for t in trained.values())]

            def at(label, latent, built=built, trained=trained, encoders=encoders, cfg=cfg):
                encoders.x0, encoders.cond = random_inputs(size["preset"], latent, device)
                batch = {"caption": ["a clip"], **pixel_batch(latent, device)}
                if name == "ta":
                    g = torch.Generator().manual_seed(1)
                    batch.update(winner=encoders.x0, loser=torch.randn(encoders.x0.shape, generator=g).to(device),
                                 winners=["sampled"])
                steps = iter(every_role * 1000)

                def step():
                    i = next(steps)
                    update_roles(built, trained, batch, train_step(trained, i, step_generator(0, i)), accelerator,
                                 cfg.train)
                m = clock.measure(step, tokens=tokens(latent))
                for t in trained.values():                    # an out-of-memory leaves grads behind
                    t.optimizer.zero_grad(set_to_none=True)
                return m
            out[name] = {"roles": sorted(trained), "activation_checkpointing": bool(
                net.transformer.is_gradient_checkpointing), "trained_params": {
                k: sum(p.numel() for p in t.params) for k, t in trained.items()}, **largest_that_fits(size, clock, at)}
            del net, built, trained, encoders, roles, at
            clock.free()
        del codec
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny-wan size: checks the script, measures nothing real")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds after which no new measurement starts")
    ap.add_argument("--sizes", nargs="+", help="only these size labels (default: every size, largest first)")
    ap.add_argument("--simulate-oom-above", type=int, help="tests: an out-of-memory in any step above N tokens")
    ap.add_argument("--out", help="also write the JSON to this file")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("error: bench/gpu.py: no CUDA device (use --tiny for the CPU check)", file=sys.stderr)
        sys.exit(2)
    import diffusers
    from accelerate import Accelerator
    size = dict(TINY if args.tiny else REAL)
    if args.sizes:
        unknown = set(args.sizes) - set(size["sizes"])
        if unknown:
            ap.error(f"--sizes: {sorted(unknown)} not in {list(size['sizes'])}")
        size["sizes"] = {k: v for k, v in size["sizes"].items() if k in args.sizes}
    accelerator = Accelerator(cpu=args.tiny, mixed_precision="no")  # bf16: the loop's autocast (train.mixed_precision)
    device = accelerator.device
    torch.manual_seed(0)
    clock = Clock(device, args.budget, args.simulate_oom_above)
    from workbench.models.wan import PRESETS
    result = {"tiny": args.tiny, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "processes": accelerator.num_processes,
              "torch": torch.__version__, "diffusers": diffusers.__version__, "preset": size["preset"],
              "architecture": PRESETS[size["preset"]],
              "memory_plan": "activation checkpointing, bf16 autocast, fp32 trained weights, bf16 teacher, block-wise "
                             "JVP with chunked attention JVP, DA on the first latent frames, cached encoders (VAE "
                             "decoder only, bf16); FSDP only with several processes",
              "sizes": {k: {"latent_THW": list(v), "tokens": tokens(v)} for k, v in size["sizes"].items()},
              "budget_s": args.budget,
              "sampling": sampling(size, clock), "attention_jvp": attention_jvp(size, clock),
              "steps": method_steps(size, clock, accelerator, args.tiny),
              "fsdp": {"run": accelerator.num_processes > 1, "command": FSDP_COMMAND,
                       "note": "480p x 81 frames under FSDP needs several GPUs; on one GPU build_trained does not "
                               "shard (this command has not been run: no multi-GPU machine has been lent)"}}
    result["total_seconds"] = round(clock.elapsed(), 1)
    if accelerator.is_main_process:
        emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
