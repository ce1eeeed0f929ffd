"""Result tables: column order and titles, mean ± std over seeds, markdown. Pandas only (no model code)."""
from __future__ import annotations

import numpy as np
import pandas as pd

METRIC_ORDER = ["colour_mass", "solid", "shape_iou", "count_ok", "path_accel", "first_frame_mae",
                "direction_agree", "speed_agree", "sharpness", "background_mae", "wake_mae",
                "free_right", "free_left", "free_up", "free_down"]  # the oracle's columns
TABLE1 = ["sec_per_clip", "fvd", "fvd_ae", "temporal_quality", "frame_quality", "i2v_subject", "i2v_background", "psnr",
          "ssim"]  # fvd: the toy FVD net (or I3D); fvd_ae: the toy video autoencoder, beside the toy FVD net
DIMENSIONS = ["subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
              "dynamic_degree", "aesthetic_quality", "imaging_quality"]
NAMES = {"sec_per_clip": "s/clip", "fvd": "FVD", "fvd_ae": "FVD (toy-ae)", "psnr": "PSNR", "ssim": "SSIM",
         "i2v_subject": "I2V Subject", "i2v_background": "I2V Background"}
IDS = ["method", "steps", "nfe", "seed", "num"]
LOWER_IS_BETTER = {"sec_per_clip", "fvd", "fvd_ae", "path_accel", "first_frame_mae", "background_mae", "wake_mae"}
TOWARDS = {"sharpness": 1.0}       # better when closer to this value (1 = as crisp as the real clip)
NO_DIRECTION = {"dynamic_degree", "free_right", "free_left", "free_up", "free_down"}  # shares and degrees: no "better"


def display(key: str) -> str:
    """Column title: 'temporal_quality_proxy' -> 'Temporal Quality (proxy)'."""
    base, proxy = (key[:-6], " (proxy)") if key.endswith("_proxy") else (key, "")
    return NAMES.get(base, base.replace("_", " ").title() if base in TABLE1 else base.replace("_", " ")) + proxy


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric metric columns in table order: Table 1, VBench dimensions, oracle, anything else."""
    order = [*TABLE1, *DIMENSIONS, *METRIC_ORDER]
    rank = {k: i for i, k in enumerate(order)}
    cols = [c for c in df.columns if c not in IDS and pd.api.types.is_numeric_dtype(df[c])]
    return sorted(cols, key=lambda c: (rank.get(c.removesuffix("_proxy"), len(order)), c))


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per (method, steps)."""
    g = df.groupby(["method", "steps", "nfe"], sort=False)[metric_columns(df)]
    mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
    return pd.concat({"mean": mean, "std": std}, axis=1).reset_index()


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return "-"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 10 else f"{x:.3f}"


def to_markdown(summary: pd.DataFrame, metrics: list[str] | None = None, reference: pd.DataFrame | None = None) -> str:
    """A markdown table: method, steps, NFE, then 'mean ± std' per metric (and the real clips' values, if given)."""
    metrics = metrics or list(summary["mean"].columns)
    head = "| method | steps | NFE | " + " | ".join(display(m) for m in metrics) + " |\n"
    head += "|---" * (3 + len(metrics)) + "|\n"
    lines = []
    for _, r in summary.iterrows():
        cells = [f"{_fmt(r[('mean', m)])} ± {_fmt(r[('std', m)])}" if np.isfinite(r[("mean", m)]) else "-"
                 for m in metrics]
        lines.append(f"| {r[('method', '')]} | {r[('steps', '')]} | {r[('nfe', '')]} | " + " | ".join(cells) + " |")
    for _, r in (reference if reference is not None else pd.DataFrame()).iterrows():
        lines.append(f"| {r['method']} | - | - | " + " | ".join(_fmt(r.get(m, np.nan)) for m in metrics) + " |")
    return head + "\n".join(lines) + "\n"


def _verdict(key: str, a: float, b: float) -> int:
    """+1 if b is better than a on metric `key`, -1 if worse, 0 if the metric has no better direction."""
    key = key.removesuffix("_proxy")
    if key in NO_DIRECTION or key not in TABLE1 + DIMENSIONS + METRIC_ORDER:
        return 0
    if key in TOWARDS:
        return int(np.sign(abs(a - TOWARDS[key]) - abs(b - TOWARDS[key])))
    return int(np.sign(a - b) if key in LOWER_IS_BETTER else np.sign(b - a))


def _compared_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns two tables are compared on: every one with a value, s/clip left out (machine load)."""
    return [c for c in metric_columns(df) if c != "sec_per_clip" and df[c].notna().any()]


def _beyond_spread(a: pd.Series, b: pd.Series, c: str) -> bool | None:
    """Do two summary rows' means of column `c` differ by more than the larger of their seed-stds? None when
    either mean is missing."""
    m_a, m_b = a[("mean", c)], b[("mean", c)]
    if not (np.isfinite(m_a) and np.isfinite(m_b)):
        return None
    return bool(abs(m_b - m_a) > max(a[("std", c)], b[("std", c)]))


def stage_changes(df: pd.DataFrame, stages: list[str], steps: list[int]) -> str:
    """Markdown bullets: what each stage does to every metric column against the stage before it, per step count.

    A change counts when the two means differ by more than the larger of their seed-stds ("beyond the spread");
    every other column is listed as level. Columns without a better direction (shares, unknown columns) as moved."""
    s = summarise(df).set_index([("method", ""), ("steps", "")])
    cols = _compared_columns(df)
    lines = []
    for prev, stage in zip(stages, stages[1:]):
        for n in steps:
            a, b = s.loc[(prev, n)], s.loc[(stage, n)]
            better, worse, moved, level = [], [], [], []
            for c in cols:
                beyond = _beyond_spread(a, b, c)
                if beyond is None:
                    continue
                m_a, m_b = a[("mean", c)], b[("mean", c)]
                if not beyond:
                    level.append(display(c))
                    continue
                a_txt, b_txt = _fmt(m_a), _fmt(m_b)
                if a_txt == b_txt:                                        # a change the rounding would hide
                    a_txt, b_txt = f"{m_a:.4f}", f"{m_b:.4f}"
                text = f"{display(c)} {a_txt} -> {b_txt}"
                {1: better, -1: worse, 0: moved}[_verdict(c, m_a, m_b)].append(text)
            parts = [f"better: {', '.join(better) or 'none'}", f"worse: {', '.join(worse) or 'none'}"]
            parts += [f"moved: {', '.join(moved)}"] if moved else []
            parts += [f"level: {', '.join(level) or 'none'}"]
            lines.append(f"- **{prev} -> {stage}, {n} step{'s' * (n > 1)}**: " + "; ".join(parts) + ".")
    return "\n".join(lines) + "\n"


def reproduction(shipped: pd.DataFrame, fresh: pd.DataFrame) -> dict:
    """Does a rerun reproduce a results table? Per (method, steps) both hold and per metric column (s/clip left
    out), its mean against the shipped one, by `stage_changes`' rule: beyond the spread or not."""
    a = summarise(shipped).set_index([("method", ""), ("steps", "")])
    b = summarise(fresh).set_index([("method", ""), ("steps", "")])
    cols = [c for c in _compared_columns(shipped) if c in b["mean"].columns]
    cells, beyond = 0, []
    for key in a.index.intersection(b.index):
        for c in cols:
            moved = _beyond_spread(a.loc[key], b.loc[key], c)
            cells += moved is not None
            if moved:
                beyond.append({"method": key[0], "steps": int(key[1]), "column": c,
                               "shipped": float(a.loc[key, ("mean", c)]), "fresh": float(b.loc[key, ("mean", c)]),
                               "spread": float(max(a.loc[key, ("std", c)], b.loc[key, ("std", c)]))})
    return {"cells": cells, "within_spread": cells - len(beyond), "beyond_spread": beyond}


def caveats(df: pd.DataFrame) -> str:
    """Markdown notes where a table cannot carry the weight a reader may put on it (seeds, clip count)."""
    notes = []
    if df["seed"].nunique() < 2:
        notes.append("one noise seed: every ± is 0 and says nothing about the spread; evaluate over two or more")
    if "fvd" in df and int(df["num"].min()) < 64:
        notes.append(f"FVD on {int(df['num'].min())} clips is dominated by sampling noise (on 32 clips the teacher's "
                     f"FVD went the wrong way, 518 at 2 steps and 541 at 25): read it from 64 clips, better 256")
    return "".join(f"- note: {n}\n" for n in notes)


def report_markdown(df: pd.DataFrame, reference: pd.DataFrame | None = None) -> str:
    """table.md: the Table 1 layout (with oracle columns), the VBench dimensions, and every metric's variant."""
    summary = summarise(df)
    cols = metric_columns(df)
    main = [c for c in cols if c.removesuffix("_proxy") in TABLE1 + METRIC_ORDER]
    dims = [c for c in cols if c.removesuffix("_proxy") in DIMENSIONS]
    seeds = ",".join(str(s) for s in sorted(df["seed"].unique()))
    text = (f"## Results: mean ± std over seeds {seeds}, {int(df['num'].iloc[0])} test clips each\n\n"
            + to_markdown(summary, main, reference) + "\n")
    if dims:
        text += "## VBench-I2V dimensions\n\n" + to_markdown(summary, dims, reference) + "\n"
    for col in ("fvd_variant", "fvd_ae_variant", "vbench", "vbench_features"):
        if col in df:
            text += f"- {col}: " + "; ".join(sorted(df[col].astype(str).unique())) + "\n"
    if "fvd_ae" in df:
        text += ("- FVD columns: FVD uses the toy FVD network (experiments/toy/fvd; supervised on shape, colour, "
                 "direction, speed; hardly sees backgrounds); FVD (toy-ae) uses the self-supervised toy video "
                 "autoencoder (experiments/toy/fvd_ae; sees backgrounds and objects). Compare each only with itself: "
                 "bench/fvd_background.py gives both their real-vs-real floors.\n")
    text += ("- (proxy): a built-in stand-in for a network the toy lacks (AMT, RAFT, LAION aesthetic, MUSIQ); "
             "definitions in workbench/eval/vbench.py. Oracle columns: workbench/eval/oracle.py. "
             "PSNR/SSIM: frames 1..T-1 against the real continuation (PSNR capped at 100 dB).\n")
    return text + caveats(df)
