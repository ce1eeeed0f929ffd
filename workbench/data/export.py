"""Export toy clips in the OpenVid-1M layout: videos/*.mp4, OpenVid-1M.csv and truth.jsonl."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from workbench.data.io import write_mp4
from workbench.data.synthetic import ToySpec, render_clip

FPS = 8


def export_toy(out_dir: str | Path, num: int, seed: int = 0, spec: ToySpec = ToySpec()) -> Path:
    """Clips render_clip(seed + i) as mp4 files; returns the CSV's path (written last, atomically)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: is a file; expected a folder (new, or without an export)")
    if (out / "OpenVid-1M.csv").exists():
        raise FileExistsError(f"--out {out}: already holds an export (OpenVid-1M.csv); choose a new folder")
    rows, truths = [], {}
    for i in tqdm(range(num), desc="export", leave=False):
        video, caption, truth = render_clip(seed + i, spec)
        name = f"toy-{seed + i:010d}.mp4"
        write_mp4(out / "videos" / name, video, fps=FPS)
        rows.append({"video": name, "caption": caption, "aesthetic score": 5.0,
                     "motion score": float(max(o.speed for o in truth)), "temporal consistency score": 1.0,
                     "camera motion": "static", "frame": spec.frames, "fps": FPS, "seconds": spec.frames / FPS})
        truths[name] = [asdict(o) for o in truth]
    (out / "truth.jsonl").write_text("".join(json.dumps({"video": k, "truth": v}) + "\n" for k, v in truths.items()))
    csv = out / "OpenVid-1M.csv"
    tmp = csv.with_name(".OpenVid-1M.csv.tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    os.replace(tmp, csv)
    return csv
