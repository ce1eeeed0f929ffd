"""bench/gpu.py --tiny runs every measurement of the GPU check on the CPU at the tiny-wan size: its JSON has every
section, size and method, and every measurement is a real one (seconds and memory, no error, no out of memory).
Wall-clock values are not compared with anything (design.md: tests never assert on time)."""
import json
import math
import subprocess
import sys

import pytest
import torch

STEP_OPS = {"flow_matching", "ccd_whole_math", "ccd_whole_chunked", "ccd_blockwise_math", "ccd_blockwise_chunked",
            "dmd2"}


def measured(m: dict) -> bool:
    return set(m) == {"seconds", "peak_mib"} and m["seconds"] > 0 and math.isfinite(m["seconds"]) \
        and m["peak_mib"] >= 0


def test_tiny_run_measures_every_part(root, tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, "bench/gpu.py", "--tiny", "--out", str(out)], cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res == json.loads(out.read_text())
    assert res["tiny"] is True and res["device"] == "cpu" and res["preset"] == "tiny-wan"
    assert {"sampling", "attention_jvp", "steps", "total_seconds", "architecture", "torch"} <= set(res)

    s = res["sampling"]
    assert measured(s["teacher_25_steps_guidance_5"]) and measured(s["student_4_steps"])
    assert s["speedup"] == pytest.approx(s["teacher_25_steps_guidance_5"]["seconds"] / s["student_4_steps"]["seconds"],
                                         rel=0.01)

    att = res["attention_jvp"]
    assert att["16k"]["tokens"] < att["32k"]["tokens"]
    for label in ("16k", "32k"):
        assert all(measured(att[label][op]) for op in ("forward", "math", "chunked"))

    steps = res["steps"]
    assert set(steps) == {"8k", "32k"} and steps["8k"]["tokens"] < steps["32k"]["tokens"]
    for label, row in steps.items():
        T, H, W = row["latent_THW"]
        assert row["tokens"] == T * (H // 2) * (W // 2)
        assert set(row) - {"tokens", "latent_THW"} == STEP_OPS
        assert all(measured(row[op]) for op in STEP_OPS), row


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_and_without_tiny_refuses_in_one_line(root):
    r = subprocess.run([sys.executable, "bench/gpu.py"], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no CUDA device" in r.stderr and "--tiny" in r.stderr
