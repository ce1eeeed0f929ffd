"""Export toy clips in the OpenVid-1M layout: videos/*.mp4, OpenVid-1M.csv and truth.jsonl."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from workbench.data.io import write_mp4
from workbench.data.synthetic import ToySpec, render_clip
from workbench.files import check_output_folder, output_folder

FPS = 8


def export_toy(out_dir: str | Path, num: int, seed: int = 0, spec: ToySpec = ToySpec(), force: bool = False) -> Path:
    """Clips render_clip(seed + i) as mp4 files in a new folder (or, with `force`, in place of an earlier export
    there); returns the CSV's path. Refused after the first clip if the disk cannot hold them all."""
    out = Path(out_dir)
    check_output_folder(out, "data-export", force)
    rows, truths = [], {}
    with output_folder(out, "data-export", force) as tmp:
        for i in range(num):
            video, caption, truth = render_clip(seed + i, spec)
            name = f"toy-{seed + i:010d}.mp4"
            write_mp4(tmp / "videos" / name, video, fps=FPS)
            rows.append({"video": name, "caption": caption, "aesthetic score": 5.0,
                         "motion score": float(max(o.speed for o in truth)), "temporal consistency score": 1.0,
                         "camera motion": "static", "frame": spec.frames, "fps": FPS, "seconds": spec.frames / FPS})
            truths[name] = [asdict(o) for o in truth]
            if i == 0:  # the disk holds them all, judged by the first clip; then a progress bar for the rest
                _check_disk(tmp / "videos" / name, num, out)
                bar = tqdm(total=num, initial=1, desc="export", leave=False)
            else:
                bar.update(1)
        bar.close()
        (tmp / "truth.jsonl").write_text("".join(json.dumps({"video": k, "truth": v}) + "\n"
                                                for k, v in truths.items()))
        pd.DataFrame(rows).to_csv(tmp / "OpenVid-1M.csv", index=False)
    return out / "OpenVid-1M.csv"


def _check_disk(first_clip: Path, num: int, out: Path) -> None:
    """Refuse an export the disk cannot hold, judged by its first clip (with a quarter to spare)."""
    need = first_clip.stat().st_size * num * 1.25
    free = shutil.disk_usage(first_clip.parent).free
    if need > free:
        raise ValueError(f"--num {num}: about {need / 2**20:,.1f} MiB of clips ({first_clip.stat().st_size} bytes "
                         f"each), and the disk of {out} has {free / 2**20:,.1f} MiB free")
