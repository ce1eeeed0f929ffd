"""Cost of dF/dt for continuous-time consistency distillation (Eq. 8 / 14, Algorithm 2), as one JSON object.

    python bench/ccd.py [--skip-wan] [--out FILE] [--threads 1] [--reps 5]

Prints, beside the parts, `ratios`: the attention JVP over its forward at 16k tokens and a CCD step over a
flow-matching step, both from this one run.

Parts, one function each, collected by `main()` through `PARTS`:
  ccd_step        one CCD training step (teacher forward + block-wise JVP of the EMA + student forward and
                  backward) against one flow-matching step on the same toy model and batch, with the split.
  tangent_modes   every `velocity_and_tangent` mode: time and peak memory as ratios against one plain
                  forward measured in the same run, at the toy size and at the Wan2.1-Fun-1.3B-InP
                  architecture (random weights, one repetition; `--skip-wan` leaves it out).
  attention_jvp   the JVP of attention alone, math SDPA vs the chunked (blocked, one-pass) JVP, at 1k, 4k, 16k tokens.
A new part is a function `(args) -> dict` added to `PARTS`.
Each setting (a scale, a token count) runs in a fresh subprocess (this file with `--child SPEC`) that builds
its inputs once, warms up with one call, then measures each call on its own (see MEMORY and TIME).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _emit import emit  # bench/_emit.py (the script's folder is on sys.path)

from workbench.models.jvp import TANGENT_MODES as MODES  # noqa: E402
MEMORY = ("MiB: peak resident memory during the call (Linux VmHWM, reset to the current resident size through "
          "/proc/self/clear_refs just before it) minus the resident memory just before it, on the call's first run; "
          "glibc's mmap threshold is 64 KiB so freed tensors leave the resident set and cannot hide a peak")
TIME = ("CPU seconds of the measuring process (time.process_time: on a core shared with other jobs their turns do not "
        "count, their cache and memory traffic still does), the median of `reps` runs of the call after one warm-up "
        "run, the calls of one child process taking turns, glibc's default allocator (see loadavg); ratios divide "
        "medians of the same child process; a call run once is timed in the memory child")
SCALES = {  # x_t shape B,C,T,H,W; text tokens; image tokens
    "toy": dict(preset="toy", x=(8, 3, 8, 24, 24), text=16, image=0),
    "wan2.1-fun-1.3b-inp": dict(preset="wan2.1-fun-1.3b-inp", x=(1, 16, 2, 16, 16), text=512, image=257),
}
ATTENTION = dict(batch=1, heads=2, head_dim=64, chunk=1024)
SPLIT = ("teacher_forward", "tangent", "student_forward_backward")  # the parts of a CCD step (Algorithm 1 lines 5-9)


# ---- in the child: build the calls of one setting, then measure them one by one ------------------------

def _tangent_calls(spec) -> dict:
    from workbench.models.jvp import velocity_and_tangent
    from workbench.models.wan import PRESETS, Conditioning, build_flownet
    cfg = PRESETS[spec["preset"]]
    net = build_flownet(spec["preset"]).eval()
    B, C, T, H, W = spec["x"]
    mask_BMTHW = torch.zeros(B, cfg["in_channels"] - 2 * C - net.position_channels, T, H, W)
    mask_BMTHW[:, :, 0] = 1
    cond = Conditioning(torch.randn(B, C, T, H, W), mask_BMTHW, torch.randn(B, spec["text"], cfg["text_dim"]),
                torch.randn(B, spec["image"], cfg["image_dim"]) if spec["image"] else None)
    x_BCTHW, dxdt_BCTHW, t_B = torch.randn(B, C, T, H, W), torch.randn(B, C, T, H, W), torch.rand(B)

    def tangent(mode, fd_eps=1e-3):
        return lambda: dict(zip(("f", "dfdt"), velocity_and_tangent(net, x_BCTHW, t_B, cond, dxdt_BCTHW,
                                                                    mode=mode, fd_eps=fd_eps)))
    return {"forward": torch.no_grad()(lambda: {"f": net(x_BCTHW, t_B, cond)}),
            **{mode: tangent(mode) for mode in MODES}, "finite_difference_eps_1e-4": tangent("finite_difference", 1e-4)}


def _attention_calls(spec) -> dict:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from workbench.models.jvp import chunked_attention
    shape = (spec["batch"], spec["heads"], spec["tokens"], spec["head_dim"])
    q, k, v, dq, dk, dv = (torch.randn(shape) for _ in range(6))

    def math():
        with sdpa_kernel(SDPBackend.MATH):
            return dict(zip(("out", "d_out"), torch.func.jvp(F.scaled_dot_product_attention, (q, k, v), (dq, dk, dv))))

    def chunked():
        fn = lambda q, k, v: chunked_attention(q, k, v, chunk=spec["chunk"])  # noqa: E731
        return dict(zip(("out", "d_out"), torch.func.jvp(fn, (q, k, v), (dq, dk, dv))))
    return {"forward": lambda: {"out": F.scaled_dot_product_attention(q, k, v)},
            "math": torch.no_grad()(math), "chunked": torch.no_grad()(chunked)}


def _step_calls(spec) -> dict:
    """One optimisation step's losses + backward for flow matching and for CCD, same toy model and batch."""
    import copy

    from workbench.data import build_dataset, collate
    from workbench.methods import TrainStep, build_method, load_config
    from workbench.models import build_backbone
    from workbench.models.jvp import velocity_and_tangent
    from workbench.train.roles import step_generator
    cfg = load_config(None, [f"train.batch_size={spec['batch']}", "distill.tangent_warmup=0"])
    net, cond = build_backbone(cfg.model)
    ds = build_dataset(cfg.data, "train")
    batch = collate([ds[i] for i in range(spec["batch"])])
    methods = {}
    for name in ("flow_matching", "ccd"):
        cfg.train.method = name
        methods[name] = build_method(copy.deepcopy(cfg), net, cond)

    def step(name):
        def call():
            net.zero_grad(set_to_none=True)
            at = TrainStep(1, step_generator(0, 1), {"model": net}, frozenset({"model"}))
            loss = methods[name].losses(batch, at).losses["model"]
            loss.backward()
            return {"loss": loss.detach()}
        return call
    ccd = methods["ccd"]
    _, x_t, t, c = ccd.noisy_batch(batch, step_generator(0, 1))
    dxdt = ccd.teacher_velocity(x_t, t, c)
    d = ccd.cfg.distill

    def student_forward_backward():
        net.zero_grad(set_to_none=True)
        f = net(x_t, t, c)
        f.square().mean().backward()
        return {"f": f.detach()}
    return {"forward": torch.no_grad()(lambda: {"f": net(x_t, t, c)}),
            "flow_matching": step("flow_matching"), "ccd": step("ccd"),
            "teacher_forward": lambda: {"f": ccd.teacher_velocity(x_t, t, c)},
            "tangent": lambda: dict(zip(("f", "dfdt"), velocity_and_tangent(
                ccd.target, x_t, t, c, dxdt, mode=d.jvp, attention=d.jvp_attention, chunk=d.jvp_chunk))),
            "student_forward_backward": student_forward_backward}


def _mib(field: str, file: str = "/proc/self/status") -> float:
    return int(next(s for s in Path(file).read_text().splitlines() if s.startswith(field + ":")).split()[1]) / 1024


def _seconds(call) -> float:
    start = time.process_time()
    call()
    return time.process_time() - start


def _child(spec: dict) -> None:
    from safetensors.torch import save_file
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    calls = {"tangent": _tangent_calls, "attention": _attention_calls, "step": _step_calls}[spec["kind"]](spec)
    calls["forward"]()  # warm-up: lazy initialisation is not charged to the first call measured
    results, seconds = {}, {}
    for op in spec["ops"]:  # memory, on each call's first run
        gc.collect()
        before = _mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        start = time.process_time()
        out = calls[op]()
        seconds[op] = [time.process_time() - start]
        results[op] = {"peak_mib": round(_mib("VmHWM") - before, 1)}
        save_file({k: v.contiguous() for k, v in out.items()}, f"{spec['save']}/{op}.safetensors")
        del out
    if spec["reps"] > 1:  # time: the first runs were the warm-up; the calls take turns, so load hits them alike
        seconds = {op: [] for op in spec["ops"]}
        for _ in range(spec["reps"]):
            for op in spec["ops"]:
                seconds[op].append(_seconds(calls[op]))
    for op in spec["ops"]:
        results[op] = {"seconds": round(statistics.median(seconds[op]), 4), **results[op]}
    print(json.dumps(results))


# ---- in the parent ------------------------------------------------------------------------------------

def run_child(spec: dict, args) -> tuple[dict, dict]:
    """Measure `spec["ops"]` in fresh subprocesses: ({op: time and memory}, {op: output tensors}). Memory (and the
    time of a call run once) with glibc's mmap threshold at 64 KiB; time, where reps > 1, in a second process with
    glibc's default allocator, as training runs (a 64 KiB threshold page-faults every larger tensor afresh)."""
    from safetensors.torch import load_file
    spec = {"threads": args.threads, "reps": args.reps, **spec}
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    with tempfile.TemporaryDirectory() as tmp:
        res = _run({**spec, "reps": 1, "save": tmp}, {**env, "MALLOC_MMAP_THRESHOLD_": "65536"})
        if spec["reps"] > 1:
            timed = _run({**spec, "save": tmp}, {k: v for k, v in env.items() if k != "MALLOC_MMAP_THRESHOLD_"})
            res = {op: {**res[op], "seconds": timed[op]["seconds"]} for op in res}
        return res, {op: load_file(f"{tmp}/{op}.safetensors") for op in spec["ops"]}


def _run(spec: dict, env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"measurement {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


def ccd_step(args) -> dict:
    """One CCD step against one flow-matching step (toy preset, random weights, batch 16): time and memory ratios."""
    res, _ = run_child({"kind": "step", "batch": 16, "ops": ["forward", "flow_matching", "ccd", *SPLIT]}, args)
    fm = res["flow_matching"]
    return {"setup": "toy preset, 24x24x8 pixels, batch 16; CCD with the default distill settings (block-wise "
                     "JVP: hand-written Wan block JVP, chunked attention JVP); floor ~2.0x (teacher forward + JVP + "
                     "student forward and backward vs forward and backward); split: each part of the CCD step alone, "
                     "in forwards",
            **res, "split_over_forward": {op: round(res[op]["seconds"] / res["forward"]["seconds"], 2) for op in SPLIT},
            "ccd_over_flow_matching": {"time_ratio": round(res["ccd"]["seconds"] / fm["seconds"], 2),
                                       "memory_ratio": round(res["ccd"]["peak_mib"] / max(fm["peak_mib"], 0.1), 2)}}


def tangent_modes(args) -> dict:
    """Each mode against one plain no-grad forward at each scale: time ratio, memory ratio, error vs 'whole'."""
    out = {"attention": "math SDPA in the AD modes; the default SDPA kernel in the forward and finite_difference",
           "inputs": "random weights, t uniform, dx/dt random normal; finite_difference at the API default "
                     "fd_eps 1e-3 and at 1e-4; rel_error_vs_whole = max|dF/dt - whole| / max|whole|"}
    for scale in ["toy"] if args.skip_wan else list(SCALES):
        ops = ["forward", *MODES] + (["finite_difference_eps_1e-4"] if scale == "toy" else [])
        res, tensors = run_child({"kind": "tangent", **SCALES[scale], "ops": ops,
                                  **({} if scale == "toy" else {"reps": 1})}, args)
        fwd = res["forward"]
        for op in ops[1:]:
            res[op].update(time_ratio=round(res[op]["seconds"] / fwd["seconds"], 2),
                           memory_ratio=round(res[op]["peak_mib"] / max(fwd["peak_mib"], 0.1), 2),
                           rel_error_vs_whole=_rel_error(tensors[op]["dfdt"], tensors["whole"]["dfdt"]))
        out[scale] = {"setup": SCALES[scale], **res}
    return out


def attention_jvp(args) -> dict:
    """torch.func.jvp of attention alone, float32: math SDPA vs chunked (query x key chunks, online softmax)."""
    out = {"setup": {**ATTENTION, "note": "batch 1, 2 heads x 64 dims, not Wan's 12 x 128 (too heavy for CPU); "
                                          "forward = plain SDPA, default kernel; math at 16k is timed once"}}
    for n in (1024, 4096, 16384):
        need_mib = 6 * ATTENTION["batch"] * ATTENTION["heads"] * n * n * 4 / 2**20  # math: ~6 live N x N (measured 5.2)
        math_fits = need_mib < _mib("MemAvailable", "/proc/meminfo") - 4096
        res, tensors = run_child({"kind": "attention", **ATTENTION, "tokens": n,
                                  "ops": ["forward", "chunked"]}, args)
        if math_fits:
            res_m, tensors_m = run_child({"kind": "attention", **ATTENTION, "tokens": n, "ops": ["math"],
                                          **({"reps": 1} if n > 4096 else {})}, args)
            res, tensors = {**res, **res_m}, {**tensors, **tensors_m}
            res["chunked"]["rel_error_vs_math"] = _rel_error(tensors["chunked"]["d_out"], tensors["math"]["d_out"])
        else:
            res["math"] = f"skipped: needs ~{need_mib:.0f} MiB, too close to the memory available"
        res["chunked"]["time_ratio"] = round(res["chunked"]["seconds"] / res["forward"]["seconds"], 2)
        out[f"{n}_tokens"] = res
    return out


PARTS = {"ccd_step": ccd_step, "tangent_modes": tangent_modes, "attention_jvp": attention_jvp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-wan", action="store_true", help="leave out the 1.3B-architecture measurements")
    ap.add_argument("--out", help="also write the JSON to this file")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each measurement")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per call (median), after a warm-up run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(json.loads(args.child))
    result = {"torch": torch.__version__, "device": "cpu", "threads": args.threads, "cpus": os.cpu_count(),
              "memory": MEMORY, "time": TIME, "loadavg_start": os.getloadavg()}
    for name, part in PARTS.items():
        result[name] = part(args)
    result["ratios"] = {  # both from this run
        "attention_jvp_over_forward_16k": result["attention_jvp"]["16384_tokens"]["chunked"]["time_ratio"],
        "ccd_over_flow_matching": result["ccd_step"]["ccd_over_flow_matching"]["time_ratio"]}
    result["loadavg_end"] = os.getloadavg()
    emit(result, args.out)


if __name__ == "__main__":
    main()
