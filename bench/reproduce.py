"""Does a rerun reproduce a shipped results table? Cell by cell, as JSON.

    python bench/reproduce.py [--shipped experiments/toy/swiftvideo/results.csv]
                              [--fresh runs/toy-swiftvideo/eval/results.csv] [--out FILE]

For every (method, steps) both tables hold and every metric column but s/clip, the fresh mean against the shipped
one over their seeds: a cell is beyond the spread when they differ by more than the larger of the two seed-stds
(the rule RESULTS.md reads every table by). Prints the count of cells, those within, and each one beyond. Run it
after `python -m workbench pipeline experiments/toy/swiftvideo.yaml` from a fresh clone.
"""
from __future__ import annotations

import argparse
import sys

from workbench.eval.results_doc import read_results_csv
from workbench.eval.tables import reproduction

from _emit import emit  # bench/_emit.py (the script's folder is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shipped", default="experiments/toy/swiftvideo/results.csv")
    ap.add_argument("--fresh", default="runs/toy-swiftvideo/eval/results.csv")
    ap.add_argument("--out")
    args = ap.parse_args()
    try:
        tables = [read_results_csv(path, ("method", "steps", "nfe", "seed")) for path in (args.shipped, args.fresh)]
    except (OSError, ValueError) as e:
        print(f"error: bench/reproduce.py: {e}", file=sys.stderr)
        sys.exit(2)
    out = {"command": f"python bench/reproduce.py --shipped {args.shipped} --fresh {args.fresh}",
           **reproduction(*tables)}
    emit(out, args.out)


if __name__ == "__main__":
    main()
