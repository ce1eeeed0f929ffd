"""The only training loop. It knows roles, never a method by name (methods/base.py says what a method is).

Each step: the roles due (Role.every / when), their losses from `method.losses`, then each due role's update in
declared order (zero_grad, backward, clip, AdamW, LR schedule in its own updates, EMA), then the method's
`after_update`. Roles not due have requires_grad off, so no graph is built through them.
Exact resume: the batch of step s and the step's random generator are pure functions of (seed, s), and a
checkpoint holds every role's weights, optimizer, schedule and EMA, the method's state and the global RNG, so a
run killed at any point and resumed from its last checkpoint ends bitwise equal to an uninterrupted run (on CPU).
Several processes (`accelerate launch`): process r takes slice r of each step's global batch and draws from
step_generator(seed, step, r); each role's gradients are averaged over processes before its clip and step, so the
processes hold equal weights; only the main process writes files, and a metrics row is the mean over processes.
train.fsdp: each trained role (and its EMA) is sharded by FSDP2 instead (train/fsdp.py): gradients arrive averaged
in the shards, every process takes part in gathering checkpoints and sample sheets, the main process still writes.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from workbench.config import Config, ConfigError, load_config, to_dict, trained_changes
from workbench.data import build_dataset, collate
from workbench.files import staged_file, writing
from workbench.generate import Model, estimates_sheet, sample_sheet
from workbench.methods import LossOut, Role, TrainStep, build_method
from workbench.models import build_backbone
from workbench.models.ema import ema_update, frozen_copy
from workbench.train.checkpoint import (CheckpointError, RoleCheckpoint, check_processes, complete_checkpoints,
                                       last_good, load_checkpoint, prune_checkpoints, save_checkpoint)
from workbench.train.fsdp import reshard, shard_role, whole


class NonFiniteLossError(FloatingPointError):
    pass


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during the steps; args[0] is one line: where it stopped, the checkpoint kept, how to continue."""


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The step's only source of randomness (noise, timesteps, caption dropout) on one process."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


class StepBatchSampler(torch.utils.data.Sampler):
    """This process's share of each step's global batch, drawn from a seeded permutation per epoch.

    The data position is the step: resuming at step s needs nothing else. With `world` processes the
    global batch is world * batch_size clips and process `rank` takes its own slice of it.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 rank: int = 0, world: int = 1):
        self.n, self.seed, self.start, self.end = n, seed, start_step, end_step
        self.b, self.lo = batch_size * world, batch_size * rank
        self.hi = self.lo + batch_size

    def __len__(self):
        return max(0, self.end - self.start)

    def __iter__(self):
        perm, epoch = None, -1
        for step in range(self.start, self.end):
            idx = []
            for pos in range(step * self.b, (step + 1) * self.b):
                if pos // self.n != epoch:
                    epoch = pos // self.n
                    perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
                idx.append(int(perm[pos % self.n]))
            yield idx[self.lo:self.hi]


def lr_lambda(tc, updates: int, total: int) -> float:
    """The LR factor after `updates` of a role's own updates, out of the `total` it makes in the run."""
    if updates < tc.warmup_steps:
        return (updates + 1) / tc.warmup_steps
    if tc.schedule == "constant":
        return 1.0
    if tc.schedule == "cosine":
        p = (updates - tc.warmup_steps) / max(1, total - tc.warmup_steps)
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    raise ValueError(f"train.schedule: expected 'constant' or 'cosine', got {tc.schedule!r}")


@dataclass
class Trained:
    """The loop's side of a role: its prepared network, optimizer, LR schedule (in its own updates) and EMA."""
    role: Role
    net: torch.nn.Module                      # role.net wrapped by accelerate (DDP), or sharded in place (FSDP)
    params: list[torch.nn.Parameter]          # role.params, or their sharded replacements (train.fsdp)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: torch.nn.Module | None


def build_trained(roles: dict[str, Role], tc, accelerator) -> dict[str, Trained]:
    """An AdamW and LR schedule per role (its settings over train's), every role prepared by accelerate: wrapped
    in DDP, or (train.fsdp, several processes) sharded with its EMA by FSDP2 and only its optimizer prepared."""
    fsdp = tc.fsdp and accelerator.num_processes > 1
    out = {}
    for name, role in roles.items():
        total = sum(role.due(s) for s in range(tc.steps))
        ema = frozen_copy(role.net) if role.ema is not None else None
        transformer = getattr(role.net, "transformer", None)
        if tc.activation_checkpointing and transformer is not None:
            transformer.enable_gradient_checkpointing()      # diffusers: each block recomputed in backward
        params = role.params
        if fsdp:                                             # fully_shard replaces the parameters: find them by name
            names = {id(p): n for n, p in role.net.named_parameters()}
            shard_role(role.net)
            if ema is not None:
                shard_role(ema)                              # sharded the same way: its update lerps local shards
            now = dict(role.net.named_parameters())
            params = [now[names[id(p)]] for p in role.params]
        opt = torch.optim.AdamW(params, lr=tc.lr if role.lr is None else role.lr,
                                betas=role.betas or tc.betas,
                                weight_decay=tc.weight_decay if role.weight_decay is None else role.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u, total=total: lr_lambda(tc, u, total))
        out[name] = Trained(role, role.net, params, opt, sched, ema)
    nets = [] if fsdp else [t.net for t in out.values()]
    prepared = accelerator.prepare(*nets, *[t.optimizer for t in out.values()])
    prepared = prepared if isinstance(prepared, tuple) else (prepared,)
    for i, t in enumerate(out.values()):
        t.optimizer = prepared[len(nets) + i]
        t.net = prepared[i] if nets else t.net
        if t.ema is not None:
            t.ema.to(accelerator.device)
    return out


def update_roles(method, trained: dict[str, Trained], batch: dict, step: TrainStep, accelerator, tc) -> LossOut:
    """One step: the due roles' losses, then each due role's update in declared order; the losses, the logs
    (with grad norms) and the method's images.

    DDP's own gradient hooks are off (no_sync): they fail on a net run several times before one backward (DMD2's
    fake score) or reached by another role's backward; `average_grads` does their averaging instead."""
    with ExitStack() as local:
        for t in trained.values():
            local.enter_context(accelerator.no_sync(t.net))
        return _update_roles(method, trained, batch, step, accelerator, tc)


def _update_roles(method, trained: dict[str, Trained], batch: dict, step: TrainStep, accelerator, tc) -> LossOut:
    for name, t in trained.items():  # no graph through a role that does not update now ...
        for p in t.params:
            p.requires_grad_(name in step.due)
    try:
        with accelerator.autocast():
            res = method.losses(batch, step)
    finally:                         # ... and every role trainable again once the graph is built
        for t in trained.values():
            for p in t.params:
                p.requires_grad_(True)
            reshard(t.net)           # FSDP: a root gathered without a backward to come would go stale
    if set(res.losses) != set(step.due):
        raise RuntimeError(f"{type(method).__name__}.losses returned losses for {sorted(res.losses)} at step "
                           f"{step.index}, but the roles due are {sorted(step.due)}")
    logs = dict(res.logs)
    for name, t in trained.items():
        if name not in step.due:
            continue
        t.optimizer.zero_grad(set_to_none=True)
        accelerator.backward(res.losses[name])
        average_grads(t.params, accelerator)
        clip = tc.grad_clip if t.role.grad_clip is None else t.role.grad_clip
        if clip > 0:
            logs[f"grad_norm/{name}"] = whole(accelerator.clip_grad_norm_(t.params, clip)).item()
        t.optimizer.step()
        t.scheduler.step()
        if t.ema is not None:
            ema_update(t.ema, t.role.net, t.role.ema)
    method.after_update(step)
    return LossOut(res.losses, logs, res.images)


def average_grads(params: list[torch.nn.Parameter], accelerator, bucket: int = 1 << 25) -> None:
    """Each gradient <- its mean over processes (what DDP's reducer does), in buckets of `bucket` elements.
    A sharded gradient (FSDP) is left alone: its backward has reduce-scattered the mean already."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
    while grads:
        n, size = 0, 0
        while n < len(grads) and (n == 0 or size + grads[n].numel() <= bucket):
            size += grads[n].numel()
            n += 1
        flat = torch.cat([g.reshape(-1) for g in grads[:n]])
        torch.distributed.all_reduce(flat)
        flat /= accelerator.num_processes
        for g, part in zip(grads[:n], flat.split([g.numel() for g in grads[:n]])):
            g.copy_(part.view_as(g))
        grads = grads[n:]


def train_step(trained: dict[str, Trained], index: int, generator: torch.Generator, snapshot: bool = False
               ) -> TrainStep:
    """Step `index` as a method sees it: the prepared nets and the roles due now."""
    return TrainStep(index, generator, {n: t.net for n, t in trained.items()},
                     frozenset(n for n, t in trained.items() if t.role.due(index)), snapshot)


def steps_on_batch(method, tc, batch: dict, steps: int, generator=None) -> list[dict]:
    """The loop's update `steps` times on one fixed batch: no data loader, checkpoints or files (tests, notebooks).

    `generator(i)` gives step i's generator (default: the loop's step_generator)."""
    accelerator = Accelerator(cpu=True)
    trained = build_trained(method.roles(), tc, accelerator)
    logs = []
    for i in range(steps):
        step = train_step(trained, i, generator(i) if generator else step_generator(tc.seed, i))
        logs.append(update_roles(method, trained, batch, step, accelerator, tc).logs)
    return logs


def train(cfg: Config, out_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train `cfg.train.method` for `cfg.train.steps` steps; returns the run folder.

    Every input is checked before the run folder is touched. A resumed run ends as an uninterrupted one
    would: same weights, optimizer state, checkpoint set, metrics rows and sample sheets.
    Ctrl-C raises TrainInterrupted, and a non-finite loss or weights (before a checkpoint holds them) a
    FloatingPointError, each naming the last good checkpoint; a failed write (a full disk) an OSError naming the file.
    """
    tc = cfg.train
    out = Path(out_dir or cfg.out)
    ckpt_root = out / "checkpoints"
    ckpts = _check_run_folder(out, cfg, resume)

    if not torch.distributed.is_initialized():  # one process (a notebook, a test): each run picks its own precision
        AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=tc.mixed_precision)
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError("accelerate config: distributed_type FSDP: the loop shards the trained roles itself; "
                          "set train.fsdp=true and launch with experiments/wan/accelerate_fsdp.yaml (MULTI_GPU)")
    torch.manual_seed(tc.seed)
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    roles = method.roles()
    exported = [name for name, r in roles.items() if r.export]
    if len(exported) != 1:
        raise ValueError(f"train.method={tc.method}: exactly one role must be exported, got {exported}")
    dataset = build_dataset(cfg.data, "train")

    main = accelerator.is_main_process                 # the only process that writes into the run folder
    fsdp = tc.fsdp and accelerator.num_processes > 1   # then every process gathers what the main one writes
    rank, world = accelerator.process_index, accelerator.num_processes
    launch = {"processes": world, "global_batch": tc.batch_size * world}  # recorded in each checkpoint
    check_processes(ckpts, launch)
    accelerator.wait_for_everyone()                    # every process has checked the folder before it changes
    if main:
        out.mkdir(parents=True, exist_ok=True)
        with writing(out / "config.yaml"):
            (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    trained = build_trained(roles, tc, accelerator)
    for module in method.frozen().values():
        module.to(accelerator.device)
    encoders.to(accelerator.device)
    start, unreadable = _resume(ckpts, trained, method.state())
    accelerator.wait_for_everyone()                    # every process has read the checkpoint it resumes from
    if main:
        _set_aside(unreadable, start)
        prune_checkpoints(ckpt_root, tc.keep_ckpts)    # a run killed before its pruning left one more
        _truncate_metrics(out / "metrics.jsonl", start)  # rows logged after that checkpoint are logged again
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(len(dataset), tc.batch_size, tc.seed, start, tc.steps, rank, world),
        collate_fn=collate, num_workers=tc.num_workers,
        generator=torch.Generator().manual_seed(tc.seed))  # its own seed draw: the global RNG stays untouched
    shown = trained[exported[0]]
    sampled = Model(shown.ema if shown.ema is not None else shown.role.net, encoders, cfg)

    bar = tqdm(total=tc.steps, initial=start, desc=cfg.name, disable=not progress or not accelerator.is_main_process)
    t0, finished = time.time(), start
    try:
        for index, batch in zip(range(start, tc.steps), loader):
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            done = index + 1
            sheet_due = done == tc.steps or bool(tc.sample_every and done % tc.sample_every == 0)
            step = train_step(trained, index, step_generator(tc.seed, index, rank), snapshot=sheet_due)
            out_step = update_roles(method, trained, batch, step, accelerator, tc)
            losses, logs = out_step.losses, out_step.logs
            finite = accelerator.reduce(torch.stack([torch.isfinite(v.detach()).all() for v in losses.values()])
                                        .float().to(accelerator.device), "sum") == world  # every process stops
            for (name, loss), ok in zip(losses.items(), finite.tolist()):
                if not ok:
                    raise NonFiniteLossError(
                        f"step {index}: loss '{name}' is "
                        + (f"{loss.item()}" if not torch.isfinite(loss) else "not finite on another process")
                        + f"; run stopped, {last_good(ckpt_root)}")
            bar.update(1)
            finished = done
            if done % tc.log_every == 0 or done == tc.steps:
                logs = _mean_over_processes(logs, accelerator)
                lrs = {f"lr/{n}": t.scheduler.get_last_lr()[0] for n, t in trained.items()}
                row = {"step": done, **logs, "lr": next(iter(lrs.values())), **(lrs if len(lrs) > 1 else {}),
                       "elapsed_s": round(time.time() - t0, 3)}
                if main:  # opened per row: a write that failed is not retried (and failed again) at close
                    with writing(out / "metrics.jsonl"), open(out / "metrics.jsonl", "a") as metrics:
                        metrics.write(json.dumps(row) + "\n")
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if not k.startswith("grad_norm")})
            # The step's outputs first, its checkpoint last: a run killed in between redoes the step on resume.
            if (main or fsdp) and sheet_due:
                with tempfile.TemporaryDirectory() as scratch:  # the sheet of a process that does not write
                    sheet = (out if main else Path(scratch)) / "samples" / f"step-{done:06d}.png"
                    with writing(sheet):
                        sample_sheet(sampled, sheet)
                reshard(sampled.net)
            if main and sheet_due and out_step.images:                # e.g. DMD2's student / real / fake x0
                with writing(sheet := out / "samples" / f"estimates-{done:06d}.png"):
                    estimates_sheet(out_step.images, encoders, sheet, tc.sample_num)
            if done % tc.ckpt_every == 0 or done == tc.steps:  # every process checks the weights are finite
                save_checkpoint(ckpt_root, done, _role_files(trained), method.state(),
                                {"name": cfg.name, **launch}, keep=tc.keep_ckpts, write=main)
    except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of wherever the step was
        raise TrainInterrupted(f"stopped after step {finished} of {tc.steps}; {last_good(ckpt_root)}; continue "
                               f"with the same command and --resume --out {out}") from None
    finally:
        bar.close()
    accelerator.wait_for_everyone()
    return out


def _role_files(trained: dict[str, Trained]) -> dict[str, RoleCheckpoint]:
    return {name: RoleCheckpoint(t.role.net, t.ema, t.optimizer, t.scheduler, t.role.export)
            for name, t in trained.items()}


def _check_run_folder(out: Path, cfg: Config, resume: bool) -> list[Path]:
    """The run's complete checkpoints, once `out` is known to be a run folder this call may continue."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: is a file; expected a run folder")
    ckpts = complete_checkpoints(out / "checkpoints")
    if ckpts and not resume:
        raise FileExistsError(f"{out}: already holds checkpoints; pass --resume or choose another --out")
    if ckpts and (out / "config.yaml").is_file():
        changes = trained_changes(load_config(out / "config.yaml"), cfg)
        if changes:
            raise ConfigError(f"--resume: this config changes what {out} was trained with ({'; '.join(changes)}; "
                              f"saved in {out / 'config.yaml'}); a resumed run keeps its config: drop the change, "
                              f"or train into a new --out")
    return ckpts


def _resume(ckpts: list[Path], trained: dict[str, Trained], state: dict
            ) -> tuple[int, list[tuple[Path, CheckpointError]]]:
    """Load the newest readable checkpoint (step 0 if there is none); also the newer unreadable ones."""
    errors = []
    for ckpt in reversed(ckpts):
        try:
            return load_checkpoint(ckpt, _role_files(trained), state)["step"], errors
        except CheckpointError as e:
            errors.append((ckpt, e))
    if errors:
        raise errors[0][1]
    return 0, []


def _set_aside(unreadable: list[tuple[Path, CheckpointError]], step: int) -> None:
    """Unreadable checkpoints kept for a look, out of the way of the steps that will be saved again."""
    for bad, e in unreadable:
        aside = bad.with_name(f".unreadable-{bad.name}")
        os.replace(bad, aside)
        print(f"warning: {e}; set aside as {aside.name}, resuming from step-{step:06d}", file=sys.stderr)


def _mean_over_processes(logs: dict[str, float], accelerator) -> dict[str, float]:
    """Each logged number's mean over processes: a row describes the global batch (one process: unchanged)."""
    if accelerator.num_processes == 1:
        return logs
    keys = sorted(logs)
    mean = accelerator.reduce(torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64,
                                           device=accelerator.device), "mean")
    return dict(zip(keys, mean.tolist()))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from, so metrics.jsonl has each step once."""
    if path.is_file():
        rows = [r for r in path.read_text().splitlines() if _row_step(r) <= step]
        with staged_file(path, kind="metrics") as tmp:  # a kill mid-rewrite keeps the old rows whole
            tmp.write_text("".join(r + "\n" for r in rows))


def _row_step(row: str) -> float:
    """A metrics row's step; a row torn by a kill mid-write counts as after every checkpoint."""
    try:
        return json.loads(row)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
