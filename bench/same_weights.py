"""Does a change keep behaviour? The main pipeline's CCD and CCD + DA stages, short (bench/same_weights.yaml), run
at two commits of this repository on this machine, compared file by file, as JSON.

    python bench/same_weights.py BEFORE [AFTER]      (commits; AFTER defaults to the working tree)

Each commit is checked out as a git worktree in a temporary folder and runs with its own code. Byte for byte:
every checkpoint file (weights, EMA, optimizer, RNG, target, state.json) and sample sheet; the exported
model.safetensors tensor by tensor (its metadata and export.json but for the absolute source path); metrics.jsonl
rows but for elapsed_s; the evaluation's results.csv but for s/clip; config.yaml as YAML.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
from _emit import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ccd", "ccd_da")


def run_at(commit: str | None, tmp: Path, config: Path) -> Path:
    """The pipeline folder of bench/same_weights.yaml run by the code at `commit` (None: this working tree)."""
    tree = ROOT
    if commit:
        tree = tmp / commit
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
    out = tmp / f"run-{commit or 'tree'}"
    subprocess.run([sys.executable, "-m", "workbench", "pipeline", str(config), "--out", str(out)], cwd=tree,
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)})
    return out


def same(rel: Path, a: Path, b: Path) -> bool:
    if rel.name == "metrics.jsonl":
        rows = [[{k: v for k, v in json.loads(r).items() if k != "elapsed_s"} for r in f.read_text().splitlines()]
                for f in (a, b)]
        return rows[0] == rows[1]
    if rel.name == "export.json":
        ja, jb = ({k: v for k, v in json.loads(f.read_text()).items() if k != "source"} for f in (a, b))
        return ja == jb
    if rel.suffix == ".yaml":
        return yaml.safe_load(a.read_text()) == yaml.safe_load(b.read_text())
    if rel.name == "model.safetensors":        # an export: its metadata names the absolute source path
        return _tensors(a) == _tensors(b)
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def _tensors(f: Path) -> tuple[dict, dict]:
    """A safetensors file's tensors (as bytes) and metadata, without the export's absolute `source` path."""
    with safe_open(f, "pt") as fh:
        meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
        tensors = {k: fh.get_tensor(k).numpy().tobytes() for k in fh.keys()}
    for v in meta.values():
        if isinstance(v, dict):
            v.pop("source", None)
    return tensors, meta


def compare(a: Path, b: Path) -> dict:
    out = {"identical": 0, "different": [], "only_in_one": []}
    for stage in STAGES:
        fa = {p.relative_to(a): p for p in (a / stage).rglob("*") if p.is_file()}
        fb = {p.relative_to(b): p for p in (b / stage).rglob("*") if p.is_file()}
        for rel in sorted(fa.keys() | fb.keys()):
            if rel not in fa or rel not in fb:
                out["only_in_one"].append(str(rel))
            elif same(rel, fa[rel], fb[rel]):
                out["identical"] += 1
            else:
                out["different"].append(str(rel))
    ta, tb = (pd.read_csv(p / "eval" / "results.csv").drop(columns=["sec_per_clip"]) for p in (a, b))
    out["eval_results_equal"] = bool(ta.equals(tb))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after", nargs="?")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "same_weights.yaml"
            config.write_text((ROOT / "bench" / "same_weights.yaml").read_text())
            runs = [run_at(c, Path(tmp), config) for c in (args.before, args.after)]
            result = {"before": args.before, "after": args.after or "working tree", **compare(*runs)}
    finally:                                   # the worktrees' folders are gone: forget them
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
