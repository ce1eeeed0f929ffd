"""Does a rerun reproduce a shipped results table? Cell by cell, as JSON.

    python bench/reproduce.py [--shipped experiments/toy/swiftvideo/results.csv]
                              [--fresh runs/toy-swiftvideo/eval/results.csv] [--out FILE]

For every (method, steps) both tables hold and every metric column but s/clip, the fresh mean against the shipped
one over their seeds: a cell is beyond the spread when they differ by more than the larger of the two seed-stds
(the rule RESULTS.md reads every table by). Prints what was compared (rows, columns) and what was skipped and why
(a row or column only one table has, a column all n/a), the count of cells, those within, and each one beyond.
Nothing to compare (a header-only table, no metric column, no (method, steps) in both, every cell n/a) is an
error: one line, exit 2. Run it after `python -m workbench pipeline experiments/toy/swiftvideo.yaml` from a fresh
clone.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from workbench.eval.results_doc import read_results_csv
from workbench.eval.tables import metric_columns, reproduction

from _emit import emit  # bench/_emit.py (the script's folder is on sys.path)


def _metrics(df: pd.DataFrame, path: str) -> list[str]:
    """The metric columns of a table that hold a value (s/clip left out: machine load); an error if none."""
    if df.empty:  # a header-only table: its summary has no "mean" columns (KeyError: 'mean')
        raise ValueError(f"{path}: no rows; expected a table written by `workbench eval`")
    cols = [c for c in metric_columns(df) if c != "sec_per_clip"]
    if not cols:  # only ids and s/clip: nothing to compare, which would read as "reproduced"
        raise ValueError(f"{path}: no metric column besides sec_per_clip; expected a table written by "
                         f"`workbench eval`")
    return cols


def compared(shipped: pd.DataFrame, fresh: pd.DataFrame, paths: tuple[str, str]) -> dict:
    """What two tables can be compared on, and what is skipped and why; an error when nothing is left."""
    cols = dict(zip(("shipped", "fresh"), (_metrics(df, p) for df, p in zip((shipped, fresh), paths))))
    skipped_cols = {}
    for name, df, other in (("shipped", shipped, "fresh"), ("fresh", fresh, "shipped")):
        for c in cols[name]:
            if c not in cols[other]:
                skipped_cols[c] = f"only in {name}"
            elif df[c].isna().all():  # all n/a: its cells would silently count as none compared
                skipped_cols[c] = f"all n/a in {name}"
    columns = [c for c in cols["shipped"] if c not in skipped_cols]
    rows = {name: {f"{m}@{s}" for m, s in zip(df["method"], df["steps"])}
            for name, df in (("shipped", shipped), ("fresh", fresh))}
    both = sorted(rows["shipped"] & rows["fresh"])
    if not both:  # no (method, steps) in both tables: nothing to compare
        raise ValueError(f"nothing compared: no (method, steps) in both tables ({paths[0]}: "
                         f"{', '.join(sorted(rows['shipped']))}; {paths[1]}: {', '.join(sorted(rows['fresh']))})")
    if not columns:  # every common column skipped
        raise ValueError(f"nothing compared: no metric column with values in both {paths[0]} and {paths[1]} "
                         f"({'; '.join(f'{c} {why}' for c, why in skipped_cols.items())})")
    return {"rows": both, "columns": columns,
            "skipped": {"rows": {r: f"only in {name}" for name in rows for r in sorted(rows[name] - set(both))},
                        "columns": skipped_cols}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shipped", default="experiments/toy/swiftvideo/results.csv")
    ap.add_argument("--fresh", default="runs/toy-swiftvideo/eval/results.csv")
    ap.add_argument("--out")
    args = ap.parse_args()
    try:
        tables = [read_results_csv(path, ("method", "steps", "nfe", "seed")) for path in (args.shipped, args.fresh)]
        what = compared(*tables, (args.shipped, args.fresh))
        result = reproduction(*tables)
        if result["cells"] == 0:  # common rows and columns, but no cell with a value in both
            raise ValueError(f"nothing compared: every cell of {', '.join(what['columns'])} in the rows both tables "
                             f"hold is n/a in {args.shipped} or {args.fresh}")
    except (OSError, ValueError) as e:
        print(f"error: bench/reproduce.py: {e}", file=sys.stderr)
        sys.exit(2)
    emit({"command": f"python bench/reproduce.py --shipped {args.shipped} --fresh {args.fresh}",
          "compared": what, **result}, args.out)


if __name__ == "__main__":
    main()
