"""Side by side: several models on one test clip, from the same first frame and noise (the app's Compare tab).

Videos are written once under a cache folder with content-hash names and reused; on the toy a clip takes
milliseconds to sample, so the tab renders on demand. Configs and models read from disk are kept in a `Loaded`
that the caller owns (the app makes one for its lifetime); a call given none reads what it needs afresh.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from workbench.data.io import contact_sheet, view_scale, write_mp4
from workbench.data.synthetic import to_uint8
from workbench.eval.fidelity import psnr
from workbench.eval.metrics import METRICS
from workbench.eval.oracle import clip_metrics
from workbench.folders import ModelFolder
from workbench.generate import Model, generate, test_batch
from workbench.methods import load_config
from workbench.runs import load_model

FPS = 8
PER_CLIP = {m.name for m in METRICS if m.per_clip}   # the metric table's columns shown for each clip


@dataclass
class LabelledVideo:
    label: str                # e.g. "toy/ccd, 4 steps", or "real continuation"
    video: Path               # mp4 under the cache, named by its content's hash
    metrics: dict[str, float]


TEACHER_STEPS, STUDENT_STEPS = (2, 4, 8, 25), (1, 2, 4)
TOY_PRESETS = ("toy", "toy-no-positions", "tiny-wan")


class Loaded:
    """Configs and models read from disk, each once per version of its file (keyed by path and mtime), the least
    recently used dropped beyond `configs` and `models`. Owned by its caller: the app keeps one for its lifetime.
    Models sample on `device` (workbench.devices.resolve_device; "auto": the GPU where one is present)."""

    def __init__(self, configs: int = 64, models: int = 16, device: str = "auto"):
        self.device = device
        self._config = lru_cache(maxsize=configs)(_read_config)    # per instance: nothing is kept module-wide
        self._model = lru_cache(maxsize=models)(_read_model)

    def config(self, folder: str | Path):
        """The folder's config.yaml (the choices list reads it for every model)."""
        f = ModelFolder(folder).config
        return self._config(str(f), f.stat().st_mtime_ns)

    def model(self, folder: str | Path) -> Model:
        """load_model of the folder, once per weights version."""
        return self._model(str(folder), ModelFolder(folder).weights.stat().st_mtime_ns, self.device)


def _read_config(path: str, mtime_ns: int):
    return load_config(path)


def _read_model(folder: str, mtime_ns: int, device: str) -> Model:
    return load_model(folder, device=device)


def on_demand(folder: Path, loaded: Loaded | None = None) -> bool:
    """Sampled while the reader waits: toy-scale models only (a Wan-scale clip takes minutes: build a study set)."""
    cfg = (loaded or Loaded()).config(folder)
    return not cfg.model.transformer_path and cfg.model.preset in TOY_PRESETS


def choices(models: dict[str, Path], loaded: Loaded | None = None) -> list[str]:
    """"name @ steps" for every model sampled on demand: a teacher (trained by flow matching) at 2/4/8/25 steps, a
    student at 1/2/4."""
    loaded = loaded or Loaded()
    out = []
    for name, folder in models.items():
        if not on_demand(folder, loaded):
            continue
        steps = TEACHER_STEPS if loaded.config(folder).train.method == "flow_matching" else STUDENT_STEPS
        out += [f"{name} @ {s}" for s in steps]
    return out


def parse_choice(choice: str, models: dict[str, Path], loaded: Loaded | None = None) -> tuple[str, Path, int]:
    """"toy/ccd @ 4" -> (label, folder, steps); a ValueError names what is wrong."""
    name, _, steps = choice.rpartition(" @ ")
    if name not in models or not steps.isdigit() or not on_demand(models[name], loaded):
        raise ValueError(f"unknown model choice {choice!r}")
    return f"{name}, {steps} step{'s' * (steps != '1')}", models[name], int(steps)


def _write(video_THWC: np.ndarray, cache: Path) -> Path:
    """An mp4 named by the hash of its pixels: the same clip is one file, and the name tells nothing else."""
    name = hashlib.sha256(video_THWC.tobytes()).hexdigest()[:24] + ".mp4"
    path = cache / name
    if not path.is_file():
        write_mp4(path, video_THWC, fps=FPS, scale=view_scale(*video_THWC.shape[1:3]))
    return path


def compare(picks: list[tuple[str, Path, int]], clip: int, seed: int, cache: str | Path, loaded: Loaded | None = None
            ) -> tuple[dict, LabelledVideo, list[LabelledVideo], Path]:
    """(the clip's caption and first frame, the real continuation, each pick's video with its metrics, a frame strip).

    `picks`: (label, model folder, steps). Every pick sees the same first frame, caption and noise (seed). Models
    are read through `loaded` (a fresh one, kept for this call only, where none is given).
    """
    loaded = loaded or Loaded()
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    if not picks:
        raise ValueError("choose at least one model")
    first = loaded.model(picks[0][1])
    if not 0 <= clip < first.config.data.test_size:
        raise ValueError(f"clip: expected 0..{first.config.data.test_size - 1}, got {clip}")
    batch = test_batch(first.config, 1, clip)
    real = to_uint8(batch["video"][0])
    truth = batch["truth"][0] if "truth" in batch else None
    shown, rows, labels = [], [real], ["real"]
    for label, folder, steps in picks:
        video = to_uint8(generate(loaded.model(folder), batch, steps, seed)[0])
        metrics = {"psnr": float(psnr(video[None], real[None])[0])}
        if truth is not None:
            metrics.update({k: v for k, v in clip_metrics(video, real, truth).items() if k in PER_CLIP})
        shown.append(LabelledVideo(label, _write(video, cache), metrics))
        rows.append(video)
        labels.append(label)
    strip = cache / f"strip-{hashlib.sha256(json.dumps(labels).encode() + b''.join(r.tobytes() for r in rows)).hexdigest()[:24]}.png"
    if not strip.is_file():
        contact_sheet(rows, labels).save(strip)
    k = view_scale(*real.shape[1:3])                                   # the first frame, enlarged like the videos
    info = {"caption": batch["caption"][0], "first_frame": real[0].repeat(k, 0).repeat(k, 1), "clip": clip}
    return info, LabelledVideo("real continuation", _write(real, cache), {}), shown, strip


def prerendered(study, item: str) -> tuple[str, Path, list[LabelledVideo]]:
    """A study set's item, labelled (for reviewers: Compare at any scale, where sampling on demand is too slow):
    (caption, first frame, each video as "method, N steps")."""
    if item not in study.items:
        raise ValueError(f"item: {item!r} is not in study {study.id}")
    it = study.items[item]
    shown = [LabelledVideo(f"{v['method']}, {v['steps']} step{'s' * (v['steps'] != 1)}", study.video_path(v["video"]), {})
             for v in it["videos"]]
    return it["caption"], study.frame_path(it["first_frame"]), shown

