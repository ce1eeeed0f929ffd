"""`python -m workbench eval`: sample the test split at several step counts and seeds, score, tabulate.

Rows are tidy (one per model x steps x seed); `summarise` gives mean and spread over seeds.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from workbench.data.synthetic import to_uint8
from workbench.eval.oracle import oracle_metrics
from workbench.generate import generate, load_model, sample_sheet, test_batch

METRIC_ORDER = ["colour_mass", "solid", "shape_iou", "count_ok", "path_accel", "first_frame_mae",
                "direction_agree", "speed_agree", "sharpness"]


def evaluate(checkpoints: list[str], steps_list: list[int], num: int, seeds: list[int], out: str | Path,
             batch_size: int = 32, names: list[str] | None = None, sheet_num: int = 6) -> pd.DataFrame:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, ckpt in enumerate(checkpoints):
        net, conditioner, cfg = load_model(ckpt)
        name = names[k] if names else cfg.name
        batches = [test_batch(cfg, min(batch_size, num - s), s) for s in range(0, num, batch_size)]
        reals = [to_uint8(v) for b in batches for v in b["video"]]
        truths = [t for b in batches for t in b.get("truth", [[]] * len(b["caption"]))]
        nfe_per_step = 1 if cfg.sample.guidance == 1.0 else 2
        for steps in tqdm(steps_list, desc=f"eval {name}"):
            for seed in seeds:
                t0 = time.perf_counter()
                fakes = [to_uint8(v) for b in batches for v in
                         generate(net, conditioner, b, steps, seed, cfg.sample.shift, cfg.sample.guidance)]
                secs = (time.perf_counter() - t0) / num
                row = {"method": name, "steps": steps, "nfe": steps * nfe_per_step, "seed": seed,
                       "sec_per_clip": secs, "num": num}
                if truths and truths[0]:
                    row.update(oracle_metrics(fakes, reals, truths))
                rows.append(row)
        sample_sheet(net, conditioner, cfg, out / f"contact_sheet_{name}.png", steps_list, min(sheet_num, num))
    df = pd.DataFrame(rows)
    df.to_csv(out / "results.csv", index=False)
    summary = summarise(df)
    (out / "table.md").write_text(to_markdown(summary))
    return df


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per (method, steps)."""
    metrics = [c for c in [*METRIC_ORDER, "sec_per_clip"] if c in df]
    g = df.groupby(["method", "steps", "nfe"], sort=False)[metrics]
    mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
    return pd.concat({"mean": mean, "std": std}, axis=1).reset_index()


def to_markdown(summary: pd.DataFrame) -> str:
    metrics = [c for c in summary["mean"].columns]
    head = "| method | steps | NFE | " + " | ".join(metrics) + " |\n"
    head += "|---" * (3 + len(metrics)) + "|\n"
    lines = []
    for _, r in summary.iterrows():
        cells = [f"{r[('mean', m)]:.3f} ± {r[('std', m)]:.3f}" for m in metrics]
        lines.append(f"| {r[('method', '')]} | {r[('steps', '')]} | {r[('nfe', '')]} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


