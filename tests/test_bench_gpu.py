"""bench/gpu.py --tiny runs every measurement of the GPU check on the CPU at the tiny-wan size: its JSON has every
section and step (flow matching, CCD, DA, TA under the memory plan), and every measurement is a real one (seconds
and memory, no error); with a simulated out-of-memory above the small size, each step and the sampling record the
large size as skipped with its reason and give figures at the small one. Wall-clock values are not compared with
anything (design.md: tests never assert on time)."""
import json
import math
import subprocess
import sys

import pytest
import torch

STEPS = {"flow_matching", "ccd", "da", "ta"}


def measured(m: dict) -> bool:
    return {"seconds", "peak_mib", "peak_total_mib"} <= set(m) and m["seconds"] > 0 \
        and math.isfinite(m["seconds"]) and 0 <= m["peak_mib"] <= m["peak_total_mib"]


def run_tiny(root, tmp_path, *extra):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, "bench/gpu.py", "--tiny", "--out", str(out), *extra], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res == json.loads(out.read_text())
    return res


def check_sampling(s: dict, label: str):
    row = s[label]
    assert measured(row["teacher_50_steps_guidance_5"]) and measured(row["student_4_steps"])
    assert row["speedup"] == pytest.approx(row["teacher_50_steps_guidance_5"]["seconds"]
                                           / row["student_4_steps"]["seconds"], rel=0.01)


def test_tiny_run_measures_every_part(root, tmp_path):
    res = run_tiny(root, tmp_path)
    assert res["tiny"] is True and res["device"] == "cpu" and res["preset"] == "tiny-wan"
    assert {"sampling", "attention_jvp", "steps", "fsdp", "sizes", "total_seconds", "architecture", "torch"} <= set(res)
    assert list(res["sizes"]) == ["large", "small"]
    assert res["sizes"]["large"]["tokens"] > res["sizes"]["small"]["tokens"]
    assert "accelerate launch" in res["fsdp"]["command"] and res["fsdp"]["run"] is False

    assert res["sampling"]["fits"] == "large" and "small" not in res["sampling"]      # the largest that fits only
    check_sampling(res["sampling"], "large")

    att = res["attention_jvp"]
    assert att["16k"]["tokens"] < att["32k"]["tokens"]
    for label in ("16k", "32k"):
        assert all(measured(att[label][op]) for op in ("forward", "math", "chunked"))

    steps = res["steps"]
    assert set(steps) == STEPS
    for name, row in steps.items():
        assert row["fits"] == "large" and "small" not in row, (name, row)
        T, H, W = row["large"]["latent_THW"]
        assert row["large"]["tokens"] == T * (H // 2) * (W // 2)
        assert measured(row["large"]), (name, row)
        assert row["activation_checkpointing"] is True                                 # the memory plan
    assert steps["da"]["roles"] == ["disc", "model"]                                   # both roles update
    assert steps["ta"]["trained_params"]["model"] < steps["ccd"]["trained_params"]["model"]   # the LoRA alone


def test_an_out_of_memory_skips_to_the_next_size(root, tmp_path):
    res = run_tiny(root, tmp_path, "--simulate-oom-above", "100", "--sizes", "large", "small")
    for row in [res["sampling"], *res["steps"].values()]:
        assert row["fits"] == "small"
        assert row["large"]["skipped"] == "out of memory" and "simulated" in row["large"]["reason"]
    check_sampling(res["sampling"], "small")
    assert all(measured(row["small"]) for row in res["steps"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_and_without_tiny_refuses_in_one_line(root):
    r = subprocess.run([sys.executable, "bench/gpu.py"], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no CUDA device" in r.stderr and "--tiny" in r.stderr
