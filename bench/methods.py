"""Seconds and peak memory of a training step of each toy method against a flow-matching step's, as JSON.

    python bench/methods.py [--steps 10] [--out experiments/bench/methods.json]

Each method trains from its shipped config (the CCD student's budget: batch 16) through the training loop's own
update (every role due, its optimizer, EMA and target updates; `steps_on_batch`) on one fixed batch, so the data
loader is out of the timing and every method sees the same clips. One warm-up step, then `--steps` timed steps.
Each method runs in its own subprocess (this file with `--child NAME`): peak memory is that process's maximum
resident set (ru_maxrss: the networks, optimizer states, activations, and the Python + torch baseline every row
shares). The ratios to flow matching (the teacher's own step, same model and batch), not the seconds, are what
carries to another machine. Run it alone (pin it with taskset).
TA (Flow-DPO on the CCD + DA model's LoRA) trains on preference pairs: its child first samples a batch of them
(16 pairs, 8 vs 4 steps, as round 1) from the shipped CCD + DA model into a temporary folder, outside the timing
(its peak RSS includes that sampling).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.data import build_dataset, collate
from workbench.methods import build_method, load_config
from workbench.models import build_backbone
from workbench.preferences import build_preferences
from workbench.train import steps_on_batch

DA_MODEL = "experiments/toy/da"                               # the shipped CCD + DA model: TA's start and pair source

METHODS = {  # label: (config, overrides); every one at batch 16 from the shipped teacher's weights (TA: CCD + DA's)
    "flow_matching": ("experiments/toy/teacher.yaml", ["train.batch_size=16",
                                                       "model.weights=experiments/toy/teacher/model.safetensors"]),
    "ccd": ("experiments/toy/ccd.yaml", []),
    "lcm": ("experiments/toy/lcm.yaml", []),
    "pcm": ("experiments/toy/pcm.yaml", []),
    "pcm_adversarial": ("experiments/toy/pcm.yaml", ["pcm.adversarial=true"]),
    "osv_stage1": ("experiments/toy/osv.yaml", ["osv.stage1_steps=1000"]),
    "osv_stage2": ("experiments/toy/osv.yaml", ["osv.stage1_steps=0"]),
    "dcd": ("experiments/toy/dcd.yaml", []),
    "ccd_da": ("experiments/toy/da.yaml", []),
    "ta": ("experiments/toy/dpo.yaml", [f"model.weights={DA_MODEL}/model.safetensors"]),   # + data.preferences
    "dmd2": ("experiments/toy/dmd2.yaml", []),
    "dmd2_lora_fake": ("experiments/toy/dmd2.yaml", ["dmd2.fake_lora_rank=16"]),
    "cdm": ("experiments/toy/cdm.yaml", []),
}


def seconds_per_step(config: str, overrides: list[str], steps: int) -> float:
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    ds = build_dataset(cfg.data, "train")
    batch = collate([ds[i] for i in range(cfg.train.batch_size)])
    steps_on_batch(method, cfg.train, batch, 1)                       # warm-up (and the optimizers' state)
    t0 = time.perf_counter()
    steps_on_batch(method, cfg.train, batch, steps)
    return (time.perf_counter() - t0) / steps


def preference_pairs(folder: Path) -> list[str]:
    """TA's data: a batch of 8-vs-4-step pairs sampled from the CCD + DA model (round 1's), as an override."""
    build_preferences(DA_MODEL, folder, num_pairs=16, win_steps=8, lose_steps=4, progress=False)
    return [f"data.preferences={folder}"]


def child(name: str, steps: int) -> None:
    config, sets = METHODS[name]
    with tempfile.TemporaryDirectory() as tmp:
        pairs = preference_pairs(Path(tmp) / "pairs") if name == "ta" else []
        sec = seconds_per_step(config, [*sets, *pairs], steps)
    print(json.dumps({"sec": sec, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps)
    res = {}
    for name in METHODS:
        run = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        res[name] = json.loads(run.stdout.strip().splitlines()[-1])
    base = res["flow_matching"]
    out = {"threads": torch.get_num_threads(), "steps": args.steps, "batch": 16,
           "configs": {k: " ".join([c, *(f"--set {s}" for s in sets)]) for k, (c, sets) in METHODS.items()},
           "ta_preferences": f"16 pairs, 8 vs 4 steps, sampled from {DA_MODEL} (preference_pairs)",
           "sec_per_step": {k: round(v["sec"], 3) for k, v in res.items()},
           "peak_rss_mb": {k: round(v["peak_rss_mb"]) for k, v in res.items()},
           "time_ratio_to_flow_matching": {k: round(v["sec"] / base["sec"], 2) for k, v in res.items()},
           "peak_rss_ratio_to_flow_matching": {k: round(v["peak_rss_mb"] / base["peak_rss_mb"], 2)
                                               for k, v in res.items()},
           "time_ratio_to_ccd": {k: round(v["sec"] / res["ccd"]["sec"], 2) for k, v in res.items()}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
