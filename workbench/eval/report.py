"""`python -m workbench eval`: sample the test (or validation) split at several step counts and seeds, score every
metric, tabulate.

Rows are tidy (one per model x steps x seed): FVD against the real test clips of the same first frames (with its
variant; with the toy FVD net also `fvd_ae`, the FVD of the self-supervised toy video autoencoder that sees
backgrounds, with its own variant), the VBench-I2V dimensions and groups, PSNR/SSIM against the real continuation,
the toy oracle metrics and seconds per clip. `summarise` gives mean and spread over seeds; `to_markdown` lays it out
like the paper's Table 1. Beside them, for paired comparisons (workbench/eval/paired.py): clips.csv (every per-clip
metric per model x steps x seed x clip), features.npz (the FVD features of every sample set and of the real clips)
and diversity.csv (per first frame, across the seeds: workbench/eval/diversity.py), summarised in table.md.
Reference features and (small) sample sets are cached, keyed by everything they depend on.
The models and the evaluation networks run on `EvalSpec.device` ("auto": the GPU where one is present). Under
several processes (`accelerate launch`) batch j of the test clips is sampled and scored by process j % world; the
main process gathers the batches and writes the same tables (sec_per_clip aside: a timing) one process writes.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.config import to_dict
from workbench.data import split_size
from workbench.data.io import write_mp4
from workbench.data.synthetic import to_tensor, to_uint8
from workbench.devices import Processes, processes, resolve_device
from workbench.eval.diversity import diversity
from workbench.eval.feature_nets import Dinov2FrameFeatures, ToyFrameFeatures
from workbench.eval.fidelity import psnr, ssim
from workbench.eval.fvd import ToyAEExtractor, ToyFVDExtractor, fvd, load_extractor
from workbench.eval.oracle import clip_metrics
from workbench.eval.vbench import VBenchNets, quality_groups, run_vbench, vbench_available, vbench_clips
from workbench.generate import generate, sample_sheet, test_batch
from workbench.methods import load_config
from workbench.models.weights import tensor_names
from workbench.eval.tables import report_markdown
from workbench.files import check_output_folder, output_folder
from workbench.runs import load_model, resolve_weights

@dataclass
class EvalSpec:
    fvd_extractor: str = "toy"      # "toy" (experiments/toy/fvd; adds fvd_ae from experiments/toy/fvd_ae), "toy-ae",
                                    # a toy net .safetensors, or an I3D TorchScript file
    frame_features: str = "toy"     # VBench frame features: "toy" (the toy FVD net) or a local DINOv2 folder
    vbench: str = "auto"            # "auto": the vbench package where it and its weights are installed; "builtin"
    cache: str = "runs/eval-cache"  # reference features and sample sets ("" = off)
    max_cached_mb: int = 256        # sample sets larger than this are not cached
    device: str = "auto"            # the models' and the evaluation networks' (workbench.devices.resolve_device)


def _key(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_key(data_cfg, split: str = "test") -> str:
    """What decides a split's clips, hashed: the source and its spec (a CSV's split also by test_size, its
    validation split by validation_size too), not keys that only shape training (data.preferences, train_size): TA's
    models share the teacher's test clips. The test split's key is the one the shipped tables name."""
    d = to_dict(data_cfg)
    kind = d["kind"]
    sizes = {"test_size": d["test_size"]} if kind == "videos" else {}
    if split != "test":
        sizes = {"split": split, **sizes, **({"validation_size": d["validation_size"]} if kind == "videos" else {})}
    return _key({"kind": kind, "spec": d.get(kind), **sizes})


class Scorer:
    """Every metric of generated clips against the real clips that share their first frames."""

    def __init__(self, spec: EvalSpec):
        self.spec = spec
        self.device = device = str(resolve_device(spec.device))
        self.extractor = load_extractor(spec.fvd_extractor, device)
        # FVD columns -> extractor: the toy FVD net hardly sees backgrounds, so beside it the autoencoder's FVD
        self.extractors = {"fvd": self.extractor}
        if spec.fvd_extractor == "toy":
            self.extractors["fvd_ae"] = ToyAEExtractor(device=device)
        if spec.frame_features == "toy":
            toy = self.extractor if isinstance(self.extractor, ToyFVDExtractor) else ToyFVDExtractor(device=device)
            self.nets = VBenchNets(ToyFrameFeatures(toy.net, "subject", toy.weight_hash),
                                   ToyFrameFeatures(toy.net, "background", toy.weight_hash))
        else:
            dino = Dinov2FrameFeatures(spec.frame_features, device)
            self.nets = VBenchNets(dino, dino)
        self.use_vbench = spec.vbench == "auto" and vbench_available()
        self.variant = {"vbench": "vbench package" if self.use_vbench else "built-in",
                        "vbench_features": f"{self.nets.subject.name} / {self.nets.background.name}"}

    def clips(self, fake_BTHWC: np.ndarray, batch: dict) -> dict[str, np.ndarray]:
        """Per-clip metrics and FVD features of uint8 clips (B, T, H, W, 3) for a test batch."""
        real = np.stack([to_uint8(v) for v in batch["video"]])
        fake = torch.stack([to_tensor(v) for v in fake_BTHWC])
        out = {f"features_{col}": ext(fake) for col, ext in self.extractors.items()}  # per FVD column
        out.update(vbench_clips(fake, batch["video"][:, :, 0], self.nets, proxies=not self.use_vbench))
        out["psnr"], out["ssim"] = psnr(fake_BTHWC, real), ssim(fake_BTHWC, real)
        truths = batch.get("truth")
        if truths and truths[0]:
            per = [clip_metrics(f, r, t) for f, r, t in zip(fake_BTHWC, real, truths)]
            out.update({k: np.array([p[k] for p in per]) for k in per[0]})
        return out


def _mean(chunks: list[dict]) -> dict:
    """Mean over clips of each per-clip metric (NaN entries, e.g. unstated directions, are left out)."""
    row = {}
    for k in chunks[0]:
        if not k.startswith("features"):
            v = np.concatenate([c[k] for c in chunks])
            row[k] = float(np.nanmean(v)) if not np.isnan(v).all() else float("nan")
    return row


class Cache:
    """npz files keyed by a hash of everything their content depends on ('' = no cache)."""

    def __init__(self, folder: str):
        self.root = Path(folder) if folder else None

    def load(self, kind: str, key: str) -> dict | None:
        path = self.root / kind / f"{key}.npz" if self.root else None
        if path is None or not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def save(self, kind: str, key: str, **arrays) -> None:
        if self.root:
            (self.root / kind).mkdir(parents=True, exist_ok=True)
            tmp = self.root / kind / f"{key}.tmp.npz"
            np.savez(tmp, **arrays)
            tmp.rename(self.root / kind / f"{key}.npz")


def _features(scorer: Scorer, chunks: list[dict]) -> dict[str, np.ndarray]:
    """FVD features per FVD column, concatenated over batches."""
    return {col: np.concatenate([c[f"features_{col}"] for c in chunks]) for col in scorer.extractors}


def _metrics_code() -> str:
    """A hash of the code that scores clips: a cached row of the real clips' metrics is stale when it changes."""
    from workbench.eval import fidelity, oracle, vbench
    return _key([Path(m.__file__).read_text() for m in (fidelity, oracle, vbench)])


def _reference(scorer: Scorer, cache: Cache, cfg, batches: list[dict], num: int, split: str, procs: Processes
               ) -> tuple[dict, dict]:
    """FVD features (per FVD column) of the real clips of a split and their own metrics (the ceiling), cached by
    extractors + data + split + num + the metrics' code."""
    key = _key({"extractors": {col: ext.describe() for col, ext in scorer.extractors.items()},
                "variant": scorer.variant, "data": to_dict(cfg.data), "split": split, "num": num,
                "metrics": _metrics_code()})
    hit = cache.load("reference", key)
    if hit is not None:
        return {col: hit[f"features_{col}"] for col in scorer.extractors}, json.loads(str(hit["row"]))
    done = {j: scorer.clips(np.stack([to_uint8(v) for v in batches[j]["video"]]), batches[j])
            for j in procs.mine(len(batches))}
    chunks = procs.gather(done, len(batches))
    feats, row = _features(scorer, chunks), _mean(chunks)
    if procs.main:
        cache.save("reference", key, row=np.array(json.dumps(row)),
                   **{f"features_{col}": f for col, f in feats.items()})
    procs.barrier()                                      # every process sees the cache the main one wrote
    return feats, row


def _sample_set(scorer: Scorer, model, batches: list[dict], steps: int, seed: int, cache: Cache, key: str,
                max_mb: int, procs: Processes, bar) -> tuple[list[np.ndarray], list[dict], float]:
    """(uint8 clips per batch, their per-clip metrics per batch, seconds per clip) of one sample set (model x
    steps x seed), from the cache or the sampler; this process samples and scores its share of the batches."""
    hit = cache.load("samples", key)
    cached = None
    if hit is not None:
        bounds = np.cumsum([0] + [len(b["caption"]) for b in batches])
        cached = [hit["clips"][lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    done = {}
    for j in procs.mine(len(batches)):
        t0, secs = time.perf_counter(), 0.0
        if cached is None:
            fake = generate(model, batches[j], steps, seed)
            secs = time.perf_counter() - t0
            clips = np.stack([to_uint8(v) for v in fake])
        else:
            clips = cached[j]
        done[j] = (clips, scorer.clips(clips, batches[j]), secs)
        bar.update(1)
    made = procs.gather(done, len(batches))
    clips, chunks = [m[0] for m in made], [m[1] for m in made]
    if cached is not None:
        return clips, chunks, float(hit["sec_per_clip"])
    every = np.concatenate(clips)
    per_clip = sum(m[2] for m in made) / len(every)
    if procs.main and every.nbytes <= max_mb * 2 ** 20:
        cache.save("samples", key, clips=every, sec_per_clip=np.array(per_clip))
    procs.barrier()                                      # every process sees the cache the main one wrote
    return clips, chunks, per_clip


def _score(scorer: Scorer, clips: list[np.ndarray], chunks: list[dict], sec_per_clip: float, batches: list[dict],
           ref_feats: dict, main: bool = True) -> dict:
    """Metrics of one sample set from its per-batch clips and per-clip metrics (the vbench package: main only)."""
    row = {"sec_per_clip": sec_per_clip}
    row.update({col: fvd(f, ref_feats[col]) for col, f in _features(scorer, chunks).items()})
    row.update(_mean(chunks))
    if scorer.use_vbench and main:
        mp4 = Path(tempfile.mkdtemp(prefix="vbench-"))
        for b, batch_clips in zip(batches, clips):
            for i, c in enumerate(batch_clips):
                write_mp4(mp4 / f"{b['seed'][i]}.mp4", c, fps=8)
        row.update(run_vbench(mp4, mp4 / "results", scorer.device))
        shutil.rmtree(mp4)
    return {**row, **quality_groups(row)}


def _clip_rows(ids: dict, chunks: list[dict]) -> pd.DataFrame:
    """clips.csv rows of one sample set: its ids, the clip's index in the split, every per-clip metric (with the
    VBench quality groups of the clip's built-in dimensions: a linear formula, so their mean is the table's group
    where the vbench package did not score it)."""
    per_clip = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if not k.startswith("features")}
    return pd.DataFrame({**ids, "clip": np.arange(len(per_clip["psnr"])), **per_clip, **quality_groups(per_clip)})


def _write_features(path: Path, sets: list[tuple[dict, int, dict]], references: list[dict]) -> None:
    """features.npz: per FVD column `col`, `col` (sets, clips, D) and `reference_col` (references, clips, D) as
    float32, with each set's method, steps, seed and the index of its reference (the real clips it is scored on).
    Written as np.savez does but with fixed entry times, so the same features give the same bytes."""
    ids = pd.DataFrame([s[0] for s in sets])
    arrays = {"method": ids["method"].to_numpy(str), "steps": ids["steps"].to_numpy(), "seed": ids["seed"].to_numpy(),
              "reference": np.array([s[1] for s in sets]),
              **{col: np.stack([s[2][col] for s in sets]).astype(np.float32) for col in sets[0][2]},
              **{f"reference_{col}": np.stack([r[col] for r in references]).astype(np.float32)
                 for col in references[0]}}
    with zipfile.ZipFile(path, "w") as z:
        for name, array in arrays.items():
            with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)


def evaluate(checkpoints: list[str], steps_list: list[int], num: int, seeds: list[int], out: str | Path,
             batch_size: int = 32, names: list[str] | None = None, sheet_num: int = 6,
             spec: EvalSpec | None = None, overrides: list[str] = (), force: bool = False,
             draw: Callable[[pd.DataFrame, Path], object] | None = None, split: str = "test") -> pd.DataFrame:
    """Score every checkpoint at every step count and seed on clips 0..num-1 of `split` ("test", or "validation"
    for choosing settings); return the rows and write results.csv, reference.csv, clips.csv, features.npz,
    diversity.csv and table.md into a new folder `out`, or (force) in place of an earlier eval output there, keeping
    the files a user added beside it. Nothing here draws: `draw(rows, folder)` (e.g. workbench.plots.evaluation_figures),
    where given, writes its figures into the output folder before it is published, so they belong to this output."""
    spec = spec or EvalSpec()
    out = Path(out)
    check_output_folder(out, "eval", force)
    if names and len(names) != len(checkpoints):
        raise ValueError(f"--names: {len(names)} names for {len(checkpoints)} checkpoints")
    scorer, cache, procs = Scorer(spec), Cache(spec.cache), processes()
    for ckpt in checkpoints:  # every model readable, and its split large enough, before any work
        weights, config = resolve_weights(ckpt)
        tensor_names(weights)
        size = split_size(load_config(config, overrides).data, split)
        if num > size:
            raise ValueError(f"--num {num}: more {split} clips than {ckpt}'s {split} split holds (data.{split}_size "
                             f"{size}; --set data.{split}_size=N to change it)")
    # written as it goes, published when complete; the other processes' outputs are the main one's
    with output_folder(out, "eval", force) if procs.main else tempfile.TemporaryDirectory() as tmp:
        tmp, rows, refs, ref_features = Path(tmp), [], {}, {}
        clip_tables, feature_sets, spreads = [], [], []
        for k, ckpt in enumerate(checkpoints):
            model = load_model(ckpt, overrides, device=scorer.device)
            cfg = model.config
            name = names[k] if names else cfg.name
            batches = [test_batch(cfg, min(batch_size, num - s), s, split) for s in range(0, num, batch_size)]
            truths = [t for b in batches for t in b.get("truth", [])]     # the toy's ground truth, per clip
            ref_feats, ref_row = _reference(scorer, cache, cfg, batches, num, split, procs)
            spec_key = split_key(cfg.data, split)[:8]
            refs.setdefault(spec_key, {"num": num, **ref_row})                # one row per distinct set of clips
            ref_features.setdefault(spec_key, ref_feats)
            weights = Path(resolve_weights(ckpt)[0]).resolve()
            reference = f"{num} videos | reference: {split} clips 0-{num - 1} of data spec {spec_key}"
            variant = {f"{col}_variant": f"{ext.describe()} | {reference}" for col, ext in scorer.extractors.items()}
            variant.update(scorer.variant)
            nfe_per_step = 1 if cfg.sample.guidance == 1.0 else 2
            bar = tqdm(total=len(steps_list) * len(seeds) * len(procs.mine(len(batches))), desc=f"eval {name}",
                       disable=not procs.main)
            for steps in steps_list:
                by_seed = []                                                  # uint8 clips (N, T, H, W, 3) per seed
                for seed in seeds:
                    bar.set_postfix(steps=steps, seed=seed)
                    key = _key({"weights": [str(weights), weights.stat().st_size, weights.stat().st_mtime_ns],
                                "steps": steps, "seed": seed, "num": num, "data": to_dict(cfg.data), "split": split,
                                "sample": to_dict(cfg.sample)})
                    made = _sample_set(scorer, model, batches, steps, seed, cache, key, spec.max_cached_mb, procs, bar)
                    ids = {"method": name, "steps": steps, "nfe": steps * nfe_per_step, "seed": seed}
                    rows.append({**ids, "num": num, "split": split,
                                 **_score(scorer, *made, batches, ref_feats, procs.main), **variant})
                    clip_tables.append(_clip_rows(ids, made[1]))
                    feature_sets.append((ids, list(ref_features).index(spec_key), _features(scorer, made[1])))
                    by_seed.append(np.concatenate(made[0]))
                spreads.append(pd.DataFrame({"method": name, "steps": steps, "nfe": steps * nfe_per_step,
                                             "clip": np.arange(num), **diversity(np.stack(by_seed), truths)}))
            bar.close()
            if sheet_num and split == "test":        # (sample_sheet draws test clips) a row per step count
                sample_sheet(model, tmp / f"contact_sheet_{name}.png", steps_list, min(sheet_num, num), procs=procs)
        df, spread = pd.DataFrame(rows), pd.concat(spreads, ignore_index=True)
        label = lambda k: f"real {split} clips" + (f" (data spec {k})" if len(refs) > 1 else "")  # noqa: E731
        reference = pd.DataFrame([{"method": label(k), **r, **quality_groups(r)} for k, r in refs.items()])
        if procs.main:
            df.to_csv(tmp / "results.csv", index=False)
            reference.to_csv(tmp / "reference.csv", index=False)
            pd.concat(clip_tables, ignore_index=True).to_csv(tmp / "clips.csv", index=False)
            spread.to_csv(tmp / "diversity.csv", index=False)
            _write_features(tmp / "features.npz", feature_sets, list(ref_features.values()))
            (tmp / "table.md").write_text(report_markdown(df, reference, spread))
            if draw is not None:
                draw(df, tmp)
    procs.barrier()                                      # the others return once the output is published
    return df
