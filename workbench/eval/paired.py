"""Paired comparisons from an eval folder: for two (method, steps) scored on the same clips and noise seeds, each
metric's mean difference (a - b) with a paired bootstrap interval over clips (issue 37).

Noise is keyed by clip (workbench/generate.py `clip_noise`), so the two models continue each first frame from the
same noise: per clip, a per-clip metric is averaged over the seeds (where defined) for each model and differenced;
the interval resamples clips, one resample for both models (Efron & Tibshirani 1993, the paired bootstrap, percentile
interval). FVD is a set statistic: each resample recomputes it, per seed, for both models and the real clips on
the same resampled clips (features.npz), then averages the difference over seeds (a resample repeats clips, which
biases FVD up for both models alike). Diversity (diversity.csv) is one value per clip already.
Pandas and numpy only, no model code: the Frechet distance is workbench/eval/fvd.py's formula; no network runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from workbench.eval.fvd import feature_stats, frechet_distance
from workbench.eval.metrics import title, verdict
from workbench.eval.tables import in_table_order, split_of

CLIP_IDS = ("method", "steps", "nfe", "seed", "clip")
MIN_CLIPS = 30      # below this a percentile bootstrap interval undercovers: paired_markdown says so
COLUMNS = ["a", "b", "metric", "title", "clips", "seeds", "mean_a", "mean_b", "difference", "low", "high", "verdict"]


def parse_pair(text: str) -> tuple[str, int]:
    """'swiftvideo:4' -> ('swiftvideo', 4): a method's name in results.csv and a step count."""
    method, _, steps = text.rpartition(":")
    if not method or not steps.isdigit():
        raise ValueError(f"--pair: expected METHOD:STEPS (e.g. swiftvideo:4), got {text!r}")
    return method, int(steps)


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_clip_metric(a_CS: pd.DataFrame, b_CS: pd.DataFrame, boot: int, level: float, rng: np.random.Generator
                       ) -> dict:
    """One per-clip metric, tables indexed by clip (a seed per column): per clip the seeds' mean (NaN left out) for
    each model; the clips where both have one are differenced and resampled."""
    a, b = a_CS.mean(axis=1), b_CS.mean(axis=1)
    ok = (a.notna() & b.notna()).to_numpy()
    d = (a - b).to_numpy()[ok]
    if not len(d):
        return {"clips": 0}
    means = d[rng.integers(0, len(d), (boot, len(d)))].mean(axis=1)
    return {"clips": len(d), "mean_a": float(a[ok].mean()), "mean_b": float(b[ok].mean()),
            "difference": float(d.mean()), **dict(zip(("low", "high"), _interval(means, level)))}


def paired_fvd(a_SND: np.ndarray, b_SND: np.ndarray, real_ND: np.ndarray, boot: int, level: float,
               rng: np.random.Generator) -> dict:
    """FVD per seed for both models against the real clips, the difference averaged over seeds; each resample of
    clips recomputes all of them on the same clips."""
    def seed_means(idx):                                  # (FVD of a, FVD of b) on clips idx, each a mean over seeds
        real = feature_stats(real_ND[idx])
        fa = [frechet_distance(*feature_stats(a[idx]), *real) for a in a_SND]
        fb = [frechet_distance(*feature_stats(b[idx]), *real) for b in b_SND]
        return np.mean(fa), np.mean(fb)
    n = real_ND.shape[0]
    mean_a, mean_b = seed_means(np.arange(n))
    diffs = [np.subtract(*seed_means(idx)) for idx in rng.integers(0, n, (boot, n))]
    return {"clips": n, "mean_a": float(mean_a), "mean_b": float(mean_b), "difference": float(mean_a - mean_b),
            **dict(zip(("low", "high"), _interval(np.array(diffs), level)))}


class EvalFolder:
    """The per-clip files of one eval output: clips.csv, features.npz, diversity.csv (the last two where written)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / "clips.csv").is_file():
            raise FileNotFoundError(f"{self.folder}: no clips.csv (an eval output written before per-clip results; "
                                    f"rerun python -m workbench eval)")
        self.clips = pd.read_csv(self.folder / "clips.csv")
        self.split = split_of(pd.read_csv(self.folder / "results.csv"))
        spread = self.folder / "diversity.csv"
        self.spread = pd.read_csv(spread) if spread.is_file() else None
        self.features = None
        if (self.folder / "features.npz").is_file():
            with np.load(self.folder / "features.npz", allow_pickle=False) as f:
                self.features = {k: f[k] for k in f.files}

    def metrics(self) -> list[str]:
        """Every metric a paired comparison can take, in the metric table's order."""
        cols = [c for c in self.clips.columns if c not in CLIP_IDS]
        cols += [c for c in self.spread.columns if c not in CLIP_IDS] if self.spread is not None else []
        cols += [c for c in self.features if f"reference_{c}" in self.features] if self.features else []
        return in_table_order(cols)

    def entries(self) -> list[str]:
        """Every 'method:steps' the folder holds, in its order: what --pair (or the app's pickers) may name."""
        return [f"{m}:{s}" for m, s in self.clips[["method", "steps"]].drop_duplicates().itertuples(index=False)]

    def rows(self, table: pd.DataFrame, pair: tuple[str, int]) -> pd.DataFrame:
        """The rows of `table` for a (method, steps), or a ValueError naming the entries there are."""
        rows = table[(table["method"] == pair[0]) & (table["steps"] == pair[1])]
        if rows.empty:
            raise ValueError(f"--pair: no rows for {pair[0]}:{pair[1]} in {self.folder} "
                             f"(there: {', '.join(self.entries())})")
        return rows

    def per_clip(self, pair: tuple[str, int], metric: str) -> pd.DataFrame:
        """(clips, seeds) values of a per-clip metric; diversity's one column per clip."""
        if metric in self.clips:
            return self.rows(self.clips, pair).pivot(index="clip", columns="seed", values=metric)
        return self.rows(self.spread, pair).set_index("clip")[[metric]]

    def fvd_sets(self, pair: tuple[str, int], column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seeds,) the seeds, (seeds, clips, D) a pair's FVD features in seed order, (clips, D) its real clips'."""
        f = self.features
        pick = np.flatnonzero((f["method"] == pair[0]) & (f["steps"] == pair[1]))
        pick = pick[np.argsort(f["seed"][pick])]
        refs = set(f["reference"][pick])
        if len(refs) != 1:
            raise ValueError(f"{self.folder}/features.npz: {pair[0]}:{pair[1]} scored on {len(refs)} sets of clips")
        return f["seed"][pick], f[column][pick], f[f"reference_{column}"][refs.pop()]


def paired_differences(folder: str | Path, pairs: list[tuple[str, str]], metrics: list[str] | None = None,
                       boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per (pair, metric): a and b ('method:steps'), the clips and seeds it rests on, both means, the mean
    difference a - b, its paired bootstrap interval (`boot` resamples, `level`) and a verdict from the metric table's
    better direction: 'a better' / 'b better' / 'differ' (no better direction) where the interval excludes 0, else
    'not separated' ('no clips' where the metric is defined on none). Every metric of the folder unless `metrics` names some. df.attrs: folder, split, boot, level."""
    if not 0 < level < 1:
        raise ValueError(f"--level: expected a coverage in (0, 1), got {level}")
    ev = EvalFolder(folder)
    known = ev.metrics()
    unknown = [m for m in metrics or [] if m not in known]
    if unknown:
        raise ValueError(f"--metrics: {', '.join(unknown)} not in {folder} (there: {', '.join(known)})")
    out = []
    for a_text, b_text in pairs:
        a, b = parse_pair(a_text), parse_pair(b_text)
        for pair in (a, b):                               # refuse a pair the folder lacks before any resampling
            ev.rows(ev.clips, pair)
        for m in metrics or known:
            rng = np.random.default_rng(seed)             # one stream per metric: a row does not hang on the others
            if ev.features is not None and m in ev.features:
                (seeds_a, fa, real_a), (seeds_b, fb, real_b) = ev.fvd_sets(a, m), ev.fvd_sets(b, m)
                _same_clips(a_text, b_text, list(seeds_a), list(seeds_b), np.array_equal(real_a, real_b))
                row = paired_fvd(fa, fb, real_a, boot, level, rng)
            else:
                va, vb = ev.per_clip(a, m), ev.per_clip(b, m)
                _same_clips(a_text, b_text, list(va.columns), list(vb.columns), va.index.equals(vb.index))
                seeds_a = va.columns if m in ev.clips else []
                row = paired_clip_metric(va, vb, boot, level, rng)
            out.append({"a": a_text, "b": b_text, "metric": m, "title": title(m),
                        "seeds": ",".join(str(s) for s in seeds_a) or "-", **row})
    df = pd.DataFrame(out).reindex(columns=COLUMNS)
    df["verdict"] = [_verdict(r) for r in df.itertuples()]
    df.attrs = {"folder": str(folder), "split": ev.split, "boot": boot, "level": level}
    return df


def _same_clips(a: str, b: str, seeds_a: list, seeds_b: list, same_clips: bool) -> None:
    if seeds_a != seeds_b or not same_clips:
        raise ValueError(f"--pair {a} {b}: not paired (seeds {seeds_a} against {seeds_b}"
                         f"{'' if same_clips else ', different clips'}); compare models evaluated together")


def _verdict(r) -> str:
    if not r.clips:
        return "no clips"
    if r.low <= 0 <= r.high:
        return "not separated"
    return {1: "a better", -1: "b better", 0: "differ"}[verdict(r.metric, r.mean_b, r.mean_a)]


def paired_markdown(df: pd.DataFrame) -> str:
    """The paired table as markdown, headed by what it rests on (split, bootstrap resamples, interval level)."""
    a = df.attrs
    text = (f"## Paired differences a - b on the {a['split']} clips of {a['folder']}: mean over clips (each the mean "
            f"over seeds) with a {a['level']:.0%} paired bootstrap interval over clips ({a['boot']} resamples)\n\n"
            "| a | b | metric | clips | seeds | a | b | a - b | interval | verdict |\n" + "|---" * 10 + "|\n")
    fmt = lambda x: "-" if not np.isfinite(x) else f"{x:.4g}"  # noqa: E731
    for r in df.itertuples():
        interval = f"[{fmt(r.low)}, {fmt(r.high)}]" if r.clips else "-"
        text += (f"| {r.a} | {r.b} | {r.title} | {r.clips} | {r.seeds} | {fmt(r.mean_a)} | {fmt(r.mean_b)} | "
                 f"{fmt(r.difference)} | {interval} | {r.verdict} |\n")
    text += ("\n- FVD rows: FVD per seed on the (resampled) clips against the same real clips, averaged over seeds. "
             "Diversity rows: one value per clip across the seeds (workbench/eval/diversity.py).\n")
    few = df.clips[df.clips > 0].min()
    if few < MIN_CLIPS:
        text += (f"- note: an interval over {few} clips is too narrow (a percentile bootstrap undercovers on few "
                 f"clips): read intervals from {MIN_CLIPS} clips or more, better 256\n")
    return text
