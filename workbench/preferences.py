"""Build the synthetic preference dataset of trajectory alignment (TA): {caption, first frame, x0^w, x0^l}.

For each train clip (its caption and first frame) and a noise seed, the aligned model samples the same
noise with `win_steps` (winner) and `lose_steps` (loser) steps ("Trajectory Alignment": 8 vs 4 in round 1,
4 vs 2 in round 2). Ablation (Figure 6, blue line): `winners="real"` takes the real clip instead.
Stored as latents (what DPO trains on) in safetensors shards, one per batch, plus pairs.json, written to a temporary
folder and renamed when complete, so a killed build is never read (data/preferences.py reads it).

    folder/  pairs.json  pairs-00000.safetensors (winner B,C,T,H,W; loser; first B,3,H,W) ...
"""
from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
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
                      winners: str = "sampled", seed: int = 0, batch_size: int = 32, overrides=(),
                      progress: bool = True, device: str = "auto") -> Path:
    """Sample `num_pairs` preference pairs from the model at `model` (run, checkpoint or model folder) on `device`.

    Batch j of pairs is shard `pairs-j`, written as soon as it is sampled (memory holds one batch, not the set);
    under several processes (`accelerate launch`) by process j % world, into the one staged folder the main
    process made; the main process then writes pairs.json and publishes the folder, and every process returns
    once it is there: the same folder one process writes."""
    if winners not in ("sampled", "real"):
        raise ValueError(f"winners: expected 'sampled' or 'real', got {winners!r}")
    out = Path(out)
    if (out / "pairs.json").is_file():
        raise FileExistsError(f"{out}: already holds a preference dataset")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out}: exists and is not an empty folder; choose a new one")
    m = load_model(model, overrides, device=device)
    source = build_dataset(dataclasses.replace(m.config.data, preferences=""), "train")  # the clips, not earlier pairs
    if num_pairs > len(source):
        raise ValueError(f"num_pairs={num_pairs} exceeds the {len(source)} train clips")
    meta = {**made_by(model, num_pairs, win_steps, lose_steps, winners, seed, overrides),
            "frames": int(source[0]["video"].shape[1])}
    procs = processes()
    with staged_folder(out, "preferences") if procs.main else nullcontext() as tmp:  # a killed build is never read
        tmp = Path(procs.broadcast(str(tmp)))
        done = _sample_pairs(m, source, num_pairs, win_steps, lose_steps, winners, seed, batch_size, progress,
                             procs, tmp)
        shards = len(batch_starts(num_pairs, batch_size))
        items = [it for batch in procs.gather(done, shards) for it in batch]     # every shard is written by now
        if procs.main:
            meta["shards"] = shards
            (tmp / "pairs.json").write_text(json.dumps({"meta": meta, "items": items}, indent=0))
    procs.barrier()                                      # the others return once the folder is published
    return out


def batch_starts(num_pairs: int, batch_size: int) -> range:
    """The first pair of each batch (shard)."""
    return range(0, num_pairs, batch_size)


def _sample_pairs(m, source, num_pairs: int, win_steps: int, lose_steps: int, winners: str, seed: int,
                  batch_size: int, progress: bool, procs: Processes, tmp: Path) -> dict[int, list[dict]]:
    """This process's share of the batches, each written to shard pairs-j (winner, loser B,C,T,H,W; first B,3,H,W);
    {j: the batch's items {caption, clip, shard}}."""
    starts = batch_starts(num_pairs, batch_size)
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
        write_weights({"winner": winner.float().contiguous(), "loser": loser.float().contiguous(),
                       "first": batch["video"][:, :, 0].float().contiguous()}, tmp / f"pairs-{j:05d}.safetensors")
        done[j] = [{"caption": c, "clip": i, "shard": j} for c, i in zip(batch["caption"], idx)]
    return done


def _device(m) -> torch.device:
    return next(m.net.parameters()).device
