"""Result tables: mean ± std over seeds, markdown, stage-by-stage changes, the diversity across seeds. Column order,
titles and better directions are the metric table's (workbench/eval/metrics.py). Pandas only (no model code)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.eval.metrics import PROXY, in_groups, names, title, verdict

IDS = ["method", "steps", "nfe", "seed", "num"]
LAYOUT = {"main": ("timing", "table1", "fidelity", "oracle"),   # the Table 1 layout, with the oracle's columns
          "vbench": ("vbench",),                                 # the VBench-I2V dimensions, a table of their own
          "diversity": ("diversity",)}                           # across seeds (diversity.csv), a table of their own


def display(key: str) -> str:
    """Column title: 'temporal_quality_proxy' -> 'Temporal Quality (proxy)' (the metric table's titles)."""
    return title(key)


def in_table_order(columns) -> list[str]:
    """Metric columns in the metric table's order (a proxy beside its metric), then any other."""
    rank = {name: i for i, name in enumerate(names())}
    return sorted(columns, key=lambda c: (rank.get(c.removesuffix(PROXY), len(rank)), c))


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric metric columns in the metric table's order (a proxy beside its metric), then any other."""
    return in_table_order(c for c in df.columns if c not in IDS and pd.api.types.is_numeric_dtype(df[c]))


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
    """A markdown table: method, steps, NFE, then 'mean ± std' per metric, or the mean alone where the summary has no
    std (NaN), and the real clips' values, if given."""
    metrics = metrics or list(summary["mean"].columns)
    head = "| method | steps | NFE | " + " | ".join(display(m) for m in metrics) + " |\n"
    head += "|---" * (3 + len(metrics)) + "|\n"
    lines = []
    for _, r in summary.iterrows():
        cells = [_fmt(r[("mean", m)]) + (f" ± {_fmt(r[('std', m)])}" if np.isfinite(r[("std", m)]) else "")
                 if np.isfinite(r[("mean", m)]) else "-" for m in metrics]
        lines.append(f"| {r[('method', '')]} | {r[('steps', '')]} | {r[('nfe', '')]} | " + " | ".join(cells) + " |")
    for _, r in (reference if reference is not None else pd.DataFrame()).iterrows():
        lines.append(f"| {r['method']} | - | - | " + " | ".join(_fmt(r.get(m, np.nan)) for m in metrics) + " |")
    return head + "\n".join(lines) + "\n"


def _compared_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns two tables are compared on: every one with a value, s/clip left out (machine load)."""
    return [c for c in metric_columns(df) if not in_groups(c, "timing") and df[c].notna().any()]


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
                {1: better, -1: worse, 0: moved}[verdict(c, m_a, m_b)].append(text)
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


def diversity_summary(spread: pd.DataFrame) -> pd.DataFrame:
    """Mean over first frames per (method, steps) of diversity.csv, in `summarise`'s shape with no std (NaN): each
    value is one number across the seeds, not a spread over them."""
    cols = [c for c in in_table_order(spread.columns) if in_groups(c, *LAYOUT["diversity"])]
    mean = spread.groupby(["method", "steps", "nfe"], sort=False)[cols].mean()
    no_std = pd.DataFrame(np.nan, index=mean.index, columns=cols)
    return pd.concat({"mean": mean, "std": no_std}, axis=1).reset_index()


def split_of(df: pd.DataFrame) -> str:
    """The split a results table was scored on (results.csv from before the validation split: the test split)."""
    return ", ".join(df["split"].unique()) if "split" in df else "test"


def report_markdown(df: pd.DataFrame, reference: pd.DataFrame | None = None, spread: pd.DataFrame | None = None) -> str:
    """table.md: the Table 1 layout (with oracle columns), the VBench dimensions, the diversity across seeds (given
    diversity.csv's rows) and every metric's variant. The headings name the split the clips come from."""
    summary = summarise(df)
    cols = metric_columns(df)
    main = [c for c in cols if in_groups(c, *LAYOUT["main"])]
    dims = [c for c in cols if in_groups(c, *LAYOUT["vbench"])]
    seeds = ",".join(str(s) for s in sorted(df["seed"].unique()))
    num, split = int(df["num"].iloc[0]), split_of(df)
    text = (f"## Results: mean ± std over seeds {seeds}, {num} {split} clips each\n\n"
            + to_markdown(summary, main, reference) + "\n")
    if dims:
        text += "## VBench-I2V dimensions\n\n" + to_markdown(summary, dims, reference) + "\n"
    if spread is not None:
        text += (f"## Diversity across seeds {seeds}: per first frame, mean over the {num} {split} clips\n\n"
                 + to_markdown(diversity_summary(spread), reference=reference) + "\n"
                 "- Diversity: one value per first frame across the seeds, not per seed (workbench/eval/diversity.py); "
                 "real clips have one continuation each, so '-'.\n"
                 "- Per clip: clips.csv, features.npz, diversity.csv. A comparison the prose makes: its paired "
                 "difference over these clips and seeds, `python -m workbench paired FOLDER --pair A:STEPS B:STEPS`.\n")
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
