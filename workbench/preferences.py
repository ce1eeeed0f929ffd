"""Build the synthetic preference dataset of trajectory alignment (TA): {caption, first frame, x0^w, x0^l}.

For each train clip (its caption and first frame) and a noise seed, the aligned model samples the same
noise with `win_steps` (winner) and `lose_steps` (loser) steps ("Trajectory Alignment": 8 vs 4 in round 1,
4 vs 2 in round 2). Ablation (Figure 6, blue line): `winners="real"` takes the real clip instead.
Stored as latents (what DPO trains on) in safetensors shards plus pairs.json, written to a temporary
folder and renamed when complete, so a killed build is never read (data/preferences.py reads it).

    folder/  pairs.json  pairs-00000.safetensors (winner B,C,T,H,W; loser; first B,3,H,W) ...
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from workbench.data import build_dataset, collate
from workbench.devices import Processes, processes
from workbench.files import staged_folder
from workbench.generate import generate_latents
from workbench.models.weights import write_weights
from workbench.runs import load_model, resolve_weights


def made_by(model, num_pairs: int, win_steps: int, lose_steps: int, winners: str, seed: int, overrides=()) -> dict:
    """Everything that decides a pair set's contents: its cache key (the model's weights by path, size, mtime)."""
    weights = Path(resolve_weights(model)[0]).resolve()
    return {"model": str(model), "weights": [str(weights), weights.stat().st_size, weights.stat().st_mtime_ns],
            "num_pairs": num_pairs, "win_steps": win_steps, "lose_steps": lose_steps, "winners": winners,
            "seed": seed, "overrides": list(overrides)}


def cached_preferences(model, out: str | Path, num_pairs: int, win_steps: int = 8, lose_steps: int = 4,
                       winners: str = "sampled", seed: int = 0, log=print, **kw) -> Path:
    """`out` if it holds the pairs these arguments make; built there if absent; refused (one line naming the
    differing keys) if it holds pairs made otherwise."""
    out = Path(out)
    if (out / "pairs.json").is_file():
        saved = json.loads((out / "pairs.json").read_text())["meta"]
        want = made_by(model, num_pairs, win_steps, lose_steps, winners, seed, kw.get("overrides", ()))
        diff = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in want.items() if saved.get(k) != v]
        if diff:
            raise FileExistsError(f"{out}: holds preference pairs made otherwise ({'; '.join(diff)}); delete it or "
                                  f"choose another folder")
        log(f"reused {num_pairs} preference pairs in {out}")
        return out
    log(f"building {num_pairs} preference pairs ({win_steps} vs {lose_steps} steps) from {model}")
    return build_preferences(model, out, num_pairs, win_steps, lose_steps, winners, seed, **kw)


def build_preferences(model: str | Path, out: str | Path, num_pairs: int, win_steps: int = 8, lose_steps: int = 4,
                      winners: str = "sampled", seed: int = 0, batch_size: int = 32, shard_size: int = 256,
                      overrides=(), progress: bool = True, device: str = "auto") -> Path:
    """Sample `num_pairs` preference pairs from the model at `model` (run, checkpoint or model folder) on `device`.

    Under several processes (`accelerate launch`) batch j of pairs is sampled by process j % world; the main
    process gathers them and writes the same folder one process writes; every process returns once it is there."""
    if winners not in ("sampled", "real"):
        raise ValueError(f"winners: expected 'sampled' or 'real', got {winners!r}")
    out = Path(out)
    if (out / "pairs.json").is_file():
        raise FileExistsError(f"{out}: already holds a preference dataset")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out}: exists and is not an empty folder; choose a new one")
    m = load_model(model, overrides, device=device)
    cfg = m.config
    source = build_dataset(dataclasses.replace(cfg.data, preferences=""), "train")  # the clips, not earlier pairs
    if num_pairs > len(source):
        raise ValueError(f"num_pairs={num_pairs} exceeds the {len(source)} train clips")
    meta = made_by(model, num_pairs, win_steps, lose_steps, winners, seed, overrides)
    procs = processes()
    batches = _sample_pairs(m, source, num_pairs, win_steps, lose_steps, winners, seed, batch_size, progress, procs)
    if procs.main:
        with staged_folder(out, "preferences") as tmp:  # a killed build is never read; only our own folder is removed
            _write_pairs(batches, tmp, shard_size, {**meta, "frames": int(source[0]["video"].shape[1])})
    procs.barrier()                                      # the others return once the folder is published
    return out


def _sample_pairs(m, source, num_pairs: int, win_steps: int, lose_steps: int, winners: str, seed: int,
                  batch_size: int, progress: bool, procs: Processes) -> list[dict]:
    """Every batch of pairs {winner, loser, first, caption, clip} in order; this process samples its share."""
    starts = range(0, num_pairs, batch_size)
    sample = lambda b, steps: generate_latents(m, b, steps, seed).cpu()  # noqa: E731
    done = {}
    for j in tqdm(procs.mine(len(starts)), desc="preference pairs", disable=not progress or not procs.main):
        idx = list(range(starts[j], min(starts[j] + batch_size, num_pairs)))
        batch = collate([source[i] for i in idx])
        batch["seed"] = idx                                               # the noise of pair i: (seed, i)
        loser = sample(batch, lose_steps)
        with torch.no_grad():
            winner = (m.encoders.encode_video(batch["video"].to(_device(m))).cpu() if winners == "real"
                      else sample(batch, win_steps))
        done[j] = {"winner": winner.float(), "loser": loser.float(), "first": batch["video"][:, :, 0].float(),
                   "caption": list(batch["caption"]), "clip": idx}
    return procs.gather(done, len(starts))


def _device(m) -> torch.device:
    return next(m.net.parameters()).device


def _write_pairs(batches: list[dict], tmp: Path, shard_size: int, meta: dict) -> None:
    items, shard, n_shards = [], {"winner": [], "loser": [], "first": []}, 0

    def flush():
        nonlocal shard, n_shards
        if shard["winner"]:
            write_weights({k: torch.cat(v).contiguous() for k, v in shard.items()},
                          tmp / f"pairs-{n_shards:05d}.safetensors")
            n_shards += 1
            shard = {"winner": [], "loser": [], "first": []}

    for b in batches:
        for k in shard:
            shard[k].append(b[k])
        items += [{"caption": c, "clip": i, "shard": n_shards} for c, i in zip(b["caption"], b["clip"])]
        if sum(len(w) for w in shard["winner"]) >= shard_size:
            flush()
    flush()
    meta = {**meta, "shards": n_shards}
    (tmp / "pairs.json").write_text(json.dumps({"meta": meta, "items": items}, indent=0))
