"""Frozen study sets: every model's video for the same first frames and noise, under content-hash names.

    study folder    manifest.json            the only file that knows which method made which video
                    videos/<sha256>.mp4      same frame size, length and frame rate for every method, and the
                                             same byte size for every video (padded by a trailing `free` box)
                    frames/<sha256>.png      each item's first frame (the image the videos continue)
                    eval/results.csv         (optional) the study's models evaluated at their step counts:
                                             `python -m workbench eval MODEL... --out <study>/eval`

A study is built in a temporary sibling folder (`workbench.files.staged_folder`: `.wb-study-<pid>-*`) and renamed
when complete, so a folder that exists is whole; the next build removes the temporary folder of a killed one.
Attention-check items show a real test clip beside copies of it that are visibly corrupted (heavy noise and
shuffled frames): the real clip is their known answer on every criterion. They look like any other item: as
many videos, the same size in pixels and in bytes, hash names; only the manifest marks them. Videos are encoded
single-threaded (workbench.data.io.write_mp4): the same models and seed rebuild the same video files.

Serve `videos/` and `frames/` to annotators, never `manifest.json` (it names the methods).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from workbench import shipped
from workbench.files import staged_folder

__all__ = ["CRITERIA", "REAL", "CORRUPTED", "ModelSpec", "Study", "build_study", "load_study", "parse_model_spec"]

CRITERIA = ("frame_quality", "temporal_consistency", "image_alignment")  # the paper's Figure 4 criteria
REAL = "real"              # method name of an attention item's real clip (its known answer)
CORRUPTED = "corrupted"    # method name of an attention item's corrupted copies
MANIFEST = "manifest.json"
VIDEOS, FRAMES, EVALUATED = "videos", "frames", "eval/results.csv"
FORMAT = 1
SHIPPED = "experiments/toy"  # short names: `teacher@8` -> workbench.shipped("experiments/toy/teacher")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One entrant of a study: a model folder sampled at a step count. `name` is what results call it."""
    name: str
    folder: Path
    steps: int

    @property
    def label(self) -> str:
        return f"{self.name}@{self.steps}"


def parse_model_spec(spec: str) -> ModelSpec:
    """`FOLDER@STEPS` (a run, checkpoint or model folder), or `NAME@STEPS` for a shipped toy model."""
    folder, at, steps = spec.rpartition("@")
    if not at or not folder or not steps.strip().isdigit() or int(steps) < 1:
        raise ValueError(f"model spec {spec!r}: expected FOLDER@STEPS with STEPS >= 1, e.g. experiments/toy/teacher@8")
    path = Path(folder)
    if not path.exists() and "/" not in folder and shipped(SHIPPED).joinpath(folder).is_dir():
        path = shipped(SHIPPED) / folder
    if not path.is_dir():
        raise FileNotFoundError(f"model spec {spec!r}: no folder {folder} (nor a shipped toy model of that name)")
    return ModelSpec(path.resolve().name, path, int(steps))


def _shown_path(path: Path) -> str:
    """A folder as the manifest records it: relative to the shipped artifacts' folder (the repository) when inside
    it."""
    try:
        return str(path.resolve().relative_to(shipped()))
    except ValueError:
        return str(path.resolve())


def _unique_names(specs: list[ModelSpec]) -> list[ModelSpec]:
    """Folder names as method names; folders that share a name are called by their recorded path instead."""
    folders: dict[str, set[Path]] = {}
    for s in specs:
        folders.setdefault(s.name, set()).add(s.folder.resolve())
    out = [s if len(folders[s.name]) == 1 else dataclasses.replace(s, name=_shown_path(s.folder)) for s in specs]
    seen = set()
    for s in out:
        if s.name in (REAL, CORRUPTED):
            raise ValueError(f"model {s.folder}: the name {s.name!r} is reserved for attention checks; rename it")
        if s.label in seen:
            raise ValueError(f"model {s.label} is listed twice")
        seen.add(s.label)
    return out


@dataclasses.dataclass(frozen=True)
class Study:
    """A built study folder and its manifest, read-only."""
    path: Path
    manifest: dict

    @property
    def id(self) -> str:
        return self.manifest["study"]

    @property
    def criteria(self) -> tuple[str, ...]:
        return tuple(self.manifest["criteria"])

    @property
    def items(self) -> dict[str, dict]:
        return {it["id"]: it for it in self.manifest["items"]}

    def video_path(self, name: str) -> Path:
        return self.path / VIDEOS / name

    def frame_path(self, name: str) -> Path:
        return self.path / FRAMES / name

    @property
    def media(self) -> tuple[Path, Path]:
        """The folders annotators may be served, absolute (as a server's allowed paths): the videos and the first
        frames, never the manifest."""
        return self.path.resolve() / VIDEOS, self.path.resolve() / FRAMES

    @property
    def manifest_path(self) -> Path:
        """The one file that names each video's method, absolute (as a server's blocked paths): never served."""
        return self.path.resolve() / MANIFEST

    def evaluated(self) -> pd.DataFrame | None:
        """The study's own models evaluated at their step counts (its eval/results.csv), or None where nobody has
        evaluated them: what people's judgements are set against."""
        f = self.path / EVALUATED
        return pd.read_csv(f) if f.is_file() else None


def load_study(path: str | Path) -> Study:
    """The study in a folder that `build_study` wrote."""
    path = Path(path)
    f = path / MANIFEST
    if not f.is_file():
        raise FileNotFoundError(f"{path}: not a study folder (no {MANIFEST})")
    manifest = json.loads(f.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{f}: study format {manifest.get('format')!r}; this workbench reads format {FORMAT}")
    return Study(path, manifest)


def _hashed(folder: Path, data: bytes, suffix: str) -> str:
    """Write `data` as folder/<sha256>.suffix (in the staged study folder: fsynced when it is published); the name."""
    name = hashlib.sha256(data).hexdigest() + suffix
    if not (folder / name).exists():
        (folder / name).write_bytes(data)
    return name


def _video(folder: Path, video_THWC: np.ndarray, fps: int, scale: int) -> str:
    """An mp4 written under a pending name (`_publish_videos` pads and names it by content); that name."""
    from workbench.data.io import write_mp4
    pending = folder / f".pending-{len(list(folder.glob('.pending-*')))}.mp4"
    write_mp4(pending, video_THWC, fps=fps, scale=scale)
    return pending.name


def padded_size(sizes: list[int], block: int = 4096) -> int:
    """The one byte size of every video of a study: above the largest by at least a `free` box header (8 bytes),
    rounded up to `block`."""
    return -(-(max(sizes) + 8) // block) * block


def pad_mp4(data: bytes, size: int) -> bytes:
    """An mp4 grown to `size` bytes by a trailing top-level `free` box (ISO/IEC 14496-12 4.1: players skip it),
    so a file's size tells nothing of its content (an attention check's noisy copies encode far larger)."""
    gap = size - len(data)
    if gap < 8:
        raise ValueError(f"cannot pad an mp4 of {len(data)} bytes to {size}: a free box needs 8 bytes")
    return data + gap.to_bytes(4, "big") + b"free" + bytes(gap - 8)


def _publish_videos(folder: Path, items: list[dict]) -> None:
    """Every pending video padded to the study's one size and renamed to <sha256>.mp4; the items' names (and an
    attention item's answer) updated to match."""
    pending = sorted(folder.glob(".pending-*.mp4"))
    size = padded_size([f.stat().st_size for f in pending]) if pending else 0
    names = {}
    for f in pending:
        names[f.name] = _hashed(folder, pad_mp4(f.read_bytes(), size), ".mp4")
        f.unlink()
    for it in items:
        for v in it["videos"]:
            v["video"] = names[v["video"]]
        if it.get("attention"):
            it["attention"]["answer"] = names[it["attention"]["answer"]]


def _frame(folder: Path, frame_HWC: np.ndarray, scale: int) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(frame_HWC.repeat(scale, axis=0).repeat(scale, axis=1)).save(buf, format="PNG")
    return _hashed(folder, buf.getvalue(), ".png")


def corrupt(video_THWC: np.ndarray, rng: np.random.Generator, noise: float = 90.0) -> np.ndarray:
    """A visibly worse copy of a clip on every criterion: heavy Gaussian noise (std `noise` of 255) on every frame
    and the frames after the first in a shuffled order."""
    T = video_THWC.shape[0]
    order = np.arange(T)
    if T > 2:
        while (order == np.arange(T)).all():
            order = np.concatenate([[0], rng.permutation(np.arange(1, T))])
    noisy = video_THWC[order].astype(np.float64) + rng.normal(0.0, noise, video_THWC.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def build_study(models: list[str], items: int, seed: int, out: str | Path, attention_checks: float = 0.1,
                fps: int = 8, batch_size: int = 16, device: str = "auto") -> Path:
    """Build a blind study set in `out` (which must not exist); returns `out`.

    `models`: `FOLDER@STEPS` specs (`teacher@8` for a shipped toy model); every model samples test clips
    0..items-1 with its own sampler on the same first frames and noise (`seed`). ceil(items * attention_checks)
    attention items (test clips items, items+1, ...) are mixed in at random places. The models run on `device`;
    under several processes (`accelerate launch`) batch j of a model's clips is sampled by process j % world and
    the main process writes the study (every process returns once it is published).
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"--out {out}: exists; a study is never rebuilt in place (choose a new folder)")
    if items < 1:
        raise ValueError(f"items: {items}; a study needs at least one item")
    if not 0 <= attention_checks < 1:
        raise ValueError(f"attention_checks: {attention_checks}; a share in [0, 1)")
    specs = _unique_names([parse_model_spec(m) for m in models])
    if len(specs) < 2:
        raise ValueError(f"models: {len(specs)} given; a study compares at least two")
    checks = math.ceil(items * attention_checks)

    import torch  # the sampling stack, only once the arguments are known to be good

    from workbench.data.io import view_scale
    from workbench.data.synthetic import to_uint8
    from workbench.devices import processes
    from workbench.generate import test_batch
    from workbench.runs import load_model

    procs = processes()
    first = load_model(specs[0].folder, device=device)   # a bad device is refused before any folder is made
    clips = test_batch(first.config, items + checks)     # the first model's config chooses the clips
    if not procs.main:                                   # samples its share of every model's batches, writes nothing
        for k, spec in enumerate(specs):
            model = first if k == 0 else load_model(spec.folder, device=device)
            _sampled(model, clips, spec.steps, items, seed, batch_size, procs)
        procs.barrier()
        return out
    # staged: a failure removes the half-built folder, and a killed build's folder goes at the next build
    with staged_folder(out, kind="study") as tmp:
        (tmp / VIDEOS).mkdir()
        (tmp / FRAMES).mkdir()
        real_BCTHW = clips["video"]
        _, _, T, H, W = real_BCTHW.shape
        scale = view_scale(H, W)
        regular = [{"clip": int(clips["seed"][i]), "caption": clips["caption"][i],
                    "first_frame": _frame(tmp / FRAMES, to_uint8(real_BCTHW[i, :, :1])[0], scale), "videos": []}
                   for i in range(items)]
        for k, spec in enumerate(specs):
            model = first if k == 0 else load_model(spec.folder, device=device)
            for j, v in enumerate(_sampled(model, clips, spec.steps, items, seed, batch_size, procs)):
                if tuple(v.shape[1:]) != (T, H, W):
                    raise ValueError(f"model {spec.folder}: makes clips of {tuple(v.shape[1:])} (T, H, W); "
                                     f"the study's first model makes {(T, H, W)}")
                regular[j]["videos"].append({"video": _video(tmp / VIDEOS, to_uint8(v), fps, scale),
                                             "method": spec.name, "steps": spec.steps})
            del model  # one network in memory at a time (Wan scale)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

        rng = np.random.default_rng([seed, 0x57_0D_1E])
        attention = []
        for i in range(items, items + checks):
            real = to_uint8(real_BCTHW[i])
            videos = [{"video": _video(tmp / VIDEOS, real, fps, scale), "method": REAL, "steps": 0}]
            videos += [{"video": _video(tmp / VIDEOS, corrupt(real, rng), fps, scale), "method": CORRUPTED,
                        "steps": 0} for _ in range(len(specs) - 1)]
            attention.append({"clip": int(clips["seed"][i]), "caption": clips["caption"][i],
                              "first_frame": _frame(tmp / FRAMES, real[0], scale), "videos": videos,
                              "attention": {"answer": videos[0]["video"]}})
        all_items = regular + attention
        _publish_videos(tmp / VIDEOS, all_items)   # one byte size for every video: size tells nothing
        order = rng.permutation(len(all_items))
        listed = [{"id": f"{pos:03d}", **all_items[i], "attention": all_items[i].get("attention")}
                  for pos, i in enumerate(order)]
        names = json.dumps([[v["video"] for v in it["videos"]] for it in listed]).encode()
        manifest = {
            "format": FORMAT,
            "study": "study-" + hashlib.sha256(names).hexdigest()[:12],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": seed,
            "criteria": list(CRITERIA),
            "video": {"frames": T, "height": H * scale, "width": W * scale, "fps": fps},
            "models": [{"name": s.name, "folder": _shown_path(s.folder), "steps": s.steps} for s in specs],
            "attention_checks": checks,
            "items": listed,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    procs.barrier()
    return out


def _sampled(model, clips: dict, steps: int, items: int, seed: int, batch_size: int, procs) -> list:
    """`model`'s videos (3,T,H,W pixels on the CPU) of the first `items` clips of the test batch `clips` at `steps`,
    in order, on every process; this process samples batch j of them where j % world is its rank."""
    from workbench.generate import generate
    starts = range(0, items, batch_size)
    done = {}
    for j in procs.mine(len(starts)):
        sub = {key: v[starts[j]:min(starts[j] + batch_size, items)] for key, v in clips.items()}
        done[j] = list(generate(model, sub, steps, seed))
    return [v for part in procs.gather(done, len(starts)) for v in part]
