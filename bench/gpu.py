"""The GPU check (issue 22): seconds and peak memory at the Wan2.1-Fun-1.3B-InP architecture, as one JSON object.

    python bench/gpu.py [--out FILE] [--budget 420]   on a CUDA machine: bf16 autocast, random weights from the
                                                      preset (nothing downloaded); no measurement starts after
                                                      --budget s, so a run ends within ~8 min (not yet run on a GPU)
    python bench/gpu.py --tiny [--out FILE]           every measurement on the CPU at the tiny-wan size (tests)

sampling       one clip at 32k tokens: the teacher's 25 Euler steps with guidance 5 (two forwards a step) against
               a student's 4 steps without guidance (workbench.sampling.euler; the same random net stands for both)
attention_jvp  torch.func.jvp of attention alone at Wan's 12 heads x 128, bf16: math SDPA vs the chunked JVP
               (workbench.models.jvp.chunked_attention), at 16k and 32k tokens
steps          one training step as the loop runs it (workbench.train.roles.update_roles: the method's losses under
               train.mixed_precision=bf16, backward, AdamW, the exported EMA; fp32 weights) at 8k and 32k tokens,
               batch 1: flow_matching; ccd with distill.jvp whole / blockwise x distill.jvp_attention math /
               chunked; dmd2 (full fake score) at a step where the student and the fake score both update.
               The frozen encoders are replaced by fixed random latents and tokens (LatentEncoders).
Each measurement: one untimed warm-up, then one timed call; peak_mib = the peak above what was allocated before it
(CUDA: max_memory_allocated; CPU: VmHWM over VmRSS). Out of memory gives {"oom": true}, any other error
{"error": "..."}, and a measurement begun past --budget seconds {"skipped": "budget"}, so one run always ends
with its JSON.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _emit import emit  # noqa: E402  bench/_emit.py (the script's folder is on sys.path)

# latent (T', H', W') per size; tokens = T' (H'/2) (W'/2) with Wan's (1, 2, 2) patches. Real: 480x832 at 81 frames
# is 21 x 60 x 104 latents (32,760 tokens), its quarter area 21 x 30 x 52 (8,190).
REAL = dict(preset="wan2.1-fun-1.3b-inp", steps={"8k": (21, 30, 52), "32k": (21, 60, 104)},
            attention={"16k": 16380, "32k": 32760}, heads=12, head_dim=128, chunk=4096, sample="32k")
TINY = dict(preset="tiny-wan", steps={"8k": (2, 8, 8), "32k": (2, 16, 16)},
            attention={"16k": 256, "32k": 512}, heads=2, head_dim=8, chunk=64, sample="32k")
CCD_VARIANTS = [(jvp, att) for jvp in ("whole", "blockwise") for att in ("math", "chunked")]
TEXT_TOKENS, IMAGE_TOKENS = 512, 257


class Clock:
    """Measurements on one device against one time budget."""

    def __init__(self, device: torch.device, budget: float):
        self.device, self.budget, self.start = device, budget, time.perf_counter()

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

    def measure(self, fn, warmup=None) -> dict:
        """{"seconds", "peak_mib"} of fn() after `warmup()` (default: fn itself), or why there is none."""
        if self.elapsed() > self.budget:
            return {"skipped": "budget"}
        gc.collect()
        self._sync()
        before = self._allocated()
        self._reset_peak()
        try:
            (warmup or fn)()
            self._sync()
            start = time.perf_counter()
            fn()
            self._sync()
            seconds = time.perf_counter() - start
            peak = self._peak()
        except torch.OutOfMemoryError:
            return {"oom": True}
        except RuntimeError as e:
            return {"error": " ".join(f"{type(e).__name__}: {e}".split())[:300]}
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return {"seconds": round(seconds, 4), "peak_mib": round(max(peak - before, 0) / 2**20, 1)}


def _status_kib(field: str) -> int:
    return int(next(s for s in Path("/proc/self/status").read_text().splitlines() if s.startswith(field + ":"))
               .split()[1])


class LatentEncoders:
    """Stands for the frozen VAE, UMT5 and CLIP: every batch is the same random latents and tokens."""

    def __init__(self, x0_BCTHW, cond):
        self.x0, self.cond = x0_BCTHW, cond

    def prepare(self, video, captions):
        return self.x0, self.cond

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


def tokens(latent_THW) -> int:
    T, H, W = latent_THW
    return T * (H // 2) * (W // 2)


def sampling(size: dict, clock: Clock, accelerator) -> dict:
    """Teacher 25 steps with guidance 5 vs student 4 steps, one clip (euler on Wan's shift-5 grid)."""
    from workbench.models.wan import build_flownet
    from workbench.sampling import euler, schedule
    from workbench.train.roles import autocast
    latent = size["steps"][size["sample"]]
    with torch.device(clock.device):
        net = build_flownet(size["preset"]).eval().requires_grad_(False)
    x0, cond = random_inputs(size["preset"], latent, clock.device)
    null = LatentEncoders(x0, cond).null_text(1)

    def run(steps, guidance):
        with torch.no_grad(), autocast("bf16", clock.device):
            return euler(net, torch.randn_like(x0), cond, schedule(steps, 5.0), guidance=guidance, null_text=null)
    one_step = lambda: run(1, 1.0)  # noqa: E731  (warm-up: the teacher's 50 forwards are not run twice)
    out = {"tokens": tokens(latent), "teacher_25_steps_guidance_5": clock.measure(lambda: run(25, 5.0), one_step),
           "student_4_steps": clock.measure(lambda: run(4, 1.0), one_step)}
    if all("seconds" in out[k] for k in ("teacher_25_steps_guidance_5", "student_4_steps")):
        out["speedup"] = round(out["teacher_25_steps_guidance_5"]["seconds"] / out["student_4_steps"]["seconds"], 2)
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


def method_steps(size: dict, clock: Clock, accelerator) -> dict:
    """One loop step of each method at each size; a method is built once and measured at both sizes."""
    from workbench.methods import build_method, load_config
    from workbench.models.wan import build_flownet
    from workbench.train.roles import build_trained, step_generator, train_step, update_roles
    out = {label: {"tokens": tokens(latent), "latent_THW": list(latent)} for label, latent in size["steps"].items()}
    inputs = {label: random_inputs(size["preset"], latent, clock.device) for label, latent in size["steps"].items()}
    batch = {"video": None, "caption": ["a clip"]}
    for method in ("flow_matching", "ccd", "dmd2"):
        cfg = load_config(None, [f"model.preset={size['preset']}", f"train.method={method}",
                                 "train.mixed_precision=bf16", "distill.tangent_warmup=0",
                                 f"distill.jvp_chunk={size['chunk']}"])
        if clock.elapsed() > clock.budget:
            for label in out:
                out[label][method] = {"skipped": "budget"}
            continue
        with torch.device(clock.device):
            net = build_flownet(cfg.model.preset)
        encoders = LatentEncoders(*inputs[next(iter(inputs))])
        built = build_method(cfg, net, encoders)
        trained = build_trained(built.roles(), cfg.train, accelerator)
        every_role = [i for i in range(100) if all(t.role.due(i) for t in trained.values())]  # DMD2: the student's

        def step(n=iter(every_role * 1000)):
            i = next(n)
            update_roles(built, trained, batch, train_step(trained, i, step_generator(0, i)), accelerator, cfg.train)
        for label in out:
            encoders.x0, encoders.cond = inputs[label]
            variants = CCD_VARIANTS if method == "ccd" else [None]
            for variant in variants:
                if variant:
                    cfg.distill.jvp, cfg.distill.jvp_attention = variant
                out[label][method if variant is None else f"ccd_{variant[0]}_{variant[1]}"] = clock.measure(step)
        del net, built, trained, encoders, step
        gc.collect()
        if clock.device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny-wan size: checks the script, measures nothing real")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds after which no new measurement starts")
    ap.add_argument("--out", help="also write the JSON to this file")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("error: bench/gpu.py: no CUDA device (use --tiny for the CPU check)", file=sys.stderr)
        sys.exit(2)
    import diffusers
    from accelerate import Accelerator
    device = torch.device("cpu" if args.tiny else "cuda")
    size = TINY if args.tiny else REAL
    accelerator = Accelerator(cpu=args.tiny, mixed_precision="no")  # bf16: the loop's autocast (train.mixed_precision)
    torch.manual_seed(0)
    clock = Clock(device, args.budget)
    from workbench.models.wan import PRESETS
    result = {"tiny": args.tiny, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "diffusers": diffusers.__version__, "preset": size["preset"],
              "architecture": PRESETS[size["preset"]], "precision": "bf16 autocast, fp32 weights (steps, sampling); "
              "bf16 tensors (attention_jvp)", "budget_s": args.budget,
              "sampling": sampling(size, clock, accelerator), "attention_jvp": attention_jvp(size, clock),
              "steps": method_steps(size, clock, accelerator)}
    result["total_seconds"] = round(clock.elapsed(), 1)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
