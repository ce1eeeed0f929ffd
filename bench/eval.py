"""Seconds to evaluate 1,000 toy clips on this machine, split into sampling, features and statistics, as JSON.

    python bench/eval.py [--checkpoint experiments/toy/teacher] [--steps 4] [--clips 128]
Measures on --clips test clips and scales linearly to 1,000 (the JSON says so). sampling: the Euler sampler at
--steps; features: the FVD extractor and the VBench frame-feature nets; statistics: everything else (VBench
formulas and proxies, PSNR/SSIM, oracle, and the Frechet distance). Without a checkpoint folder it samples from
an untrained toy backbone of the teacher's config (the same cost). CPU timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from workbench.data.synthetic import to_tensor, to_uint8
from workbench.eval.fvd import fvd
from workbench.eval.report import EvalSpec, Scorer
from workbench.generate import Model, generate, test_batch
from workbench.methods import load_config
from workbench.runs import load_model
from workbench.models import build_backbone


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="experiments/toy/teacher")
    ap.add_argument("--config", default="experiments/toy/teacher.yaml", help="used when the checkpoint is absent")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--fvd-extractor", default="toy")
    args = ap.parse_args()
    if Path(args.checkpoint).exists():
        model = load_model(args.checkpoint)
        source = args.checkpoint
    else:
        cfg = load_config(args.config)
        torch.manual_seed(0)
        net, cond = build_backbone(cfg.model)
        model = Model(net.eval(), cond, cfg)
        source = f"untrained {args.config} (no {args.checkpoint})"
    scorer = Scorer(EvalSpec(fvd_extractor=args.fvd_extractor, cache=""))
    batches = [test_batch(model.config, min(args.batch, args.clips - s), s) for s in range(0, args.clips, args.batch)]
    t = {"sampling": 0.0, "features": 0.0, "scoring": 0.0, "frechet": 0.0}
    fakes = []
    for b in batches:
        t0 = time.perf_counter()
        fakes.append(np.stack([to_uint8(v) for v in generate(model, b, args.steps, 0)]))
        t["sampling"] += time.perf_counter() - t0
    feats = []
    for b, clips in zip(batches, fakes):
        t0 = time.perf_counter()
        feats.append(scorer.clips(clips, b)["features_fvd"])
        t["scoring"] += time.perf_counter() - t0
        x = torch.stack([to_tensor(v) for v in clips])
        frames = x.permute(0, 2, 1, 3, 4).flatten(0, 1)
        t0 = time.perf_counter()
        scorer.extractor(x)
        for net_ in (scorer.nets.subject, scorer.nets.background):
            net_(frames), net_(b["video"][:, :, 0])
        t["features"] += time.perf_counter() - t0
    feats = np.concatenate(feats)
    t0 = time.perf_counter()
    fvd(feats, feats[::-1] + 1e-3)
    t["frechet"] = time.perf_counter() - t0
    scale = 1000 / args.clips
    stats = (t["scoring"] - t["features"]) * scale + t["frechet"]  # one Frechet distance per (model, steps, seed)
    print(json.dumps({
        "model": source, "steps": args.steps, "threads": torch.get_num_threads(), "fvd_extractor":
        scorer.extractor.describe(), "measured_clips": args.clips, "scaled_to_clips": 1000,
        "note": "seconds measured on measured_clips and scaled linearly to 1,000 clips",
        "sampling_s": round(t["sampling"] * scale, 1), "features_s": round(t["features"] * scale, 1),
        "statistics_s": round(stats, 1), "total_s": round((t["sampling"] + t["scoring"]) * scale + t["frechet"], 1),
        "sampling_s_per_clip": round(t["sampling"] / args.clips, 4),
    }, indent=1))


if __name__ == "__main__":
    main()
