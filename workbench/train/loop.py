"""The only training loop. It knows roles, never a method by name (methods/base.py says what a method is;
train/roles.py how a role is updated).

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

import sys
import tempfile
import time
from pathlib import Path

import accelerate
import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from workbench.config import Config, ConfigError, flat, to_dict, trained_changes
from workbench.data import build_dataset, collate
from workbench.files import writing
from workbench.folders import Checkpoint, RunFolder
from workbench.generate import Model, estimates_sheet, sample_sheet
from workbench.methods import LossOut, Role, build_method, load_config
from workbench.models import build_backbone
from workbench.train.checkpoint import (CheckpointError, check_processes, last_good, load_checkpoint,
                                       prune_checkpoints, save_checkpoint)
from workbench.train.fsdp import reshard
from workbench.train.roles import Trained, build_trained, step_generator, train_step, update_roles


class NonFiniteLossError(FloatingPointError):
    pass


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during the steps; args[0] is one line: where it stopped, the checkpoint kept, how to continue."""


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


def train(cfg: Config, out_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train `cfg.train.method` for `cfg.train.steps` steps; returns the run folder.

    Every input is checked before the run folder is touched. A resumed run ends as an uninterrupted one
    would: same weights, optimizer state, checkpoint set, metrics rows and sample sheets.
    Ctrl-C raises TrainInterrupted, and a non-finite loss or weights (before a checkpoint holds them) a
    FloatingPointError, each naming the last good checkpoint; a failed write (a full disk) an OSError naming the file.
    """
    tc, run = cfg.train, RunFolder(out_dir or cfg.out)
    ckpts = _check_run_folder(run, cfg, resume)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no",  # autocast: train/roles.py
                              log_with=None if tc.log_with == "none" else tc.log_with, project_dir=run.tensorboard)
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError("accelerate config: distributed_type FSDP: the loop shards the trained roles itself; "
                          "set train.fsdp=true and launch with experiments/wan/accelerate_fsdp.yaml (MULTI_GPU)")
    torch.manual_seed(tc.seed)
    net, encoders = build_backbone(cfg.model, cache=cfg.data.cache)
    method = build_method(cfg, net, encoders)
    roles = method.roles()
    exported = _exported(roles, tc.method)
    dataset = build_dataset(cfg.data, "train")
    outputs = StepOutputs(run, cfg, accelerator)
    check_processes(ckpts, outputs.launch)
    accelerator.wait_for_everyone()                    # every process has checked the folder before it changes
    outputs.begin()
    trained = build_trained(roles, tc, accelerator)
    for module in [*method.frozen().values(), encoders]:
        module.to(accelerator.device)
    start = _resume(run, ckpts, trained, method.state(), accelerator, tc.keep_ckpts)
    outputs.ready(trained[exported], encoders)
    rank, world = accelerator.process_index, accelerator.num_processes
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(len(dataset), tc.batch_size, tc.seed, start, tc.steps, rank, world),
        collate_fn=collate, num_workers=tc.num_workers,
        generator=torch.Generator().manual_seed(tc.seed))  # its own seed draw: the global RNG stays untouched
    bar = tqdm(total=tc.steps, initial=start, desc=cfg.name, disable=not progress or not accelerator.is_main_process)
    finished = start
    try:
        for index, batch in zip(range(start, tc.steps), loader):
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            step = train_step(trained, index, step_generator(tc.seed, index, rank), outputs.sheet_due(index + 1))
            result = update_roles(method, trained, batch, step, accelerator, tc)
            _stop_unless_finite(result, index, accelerator, run)
            finished = index + 1
            bar.update(1)
            outputs.after_step(finished, result, trained, method.state(), bar)
    except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of wherever the step was
        raise TrainInterrupted(f"stopped after step {finished} of {tc.steps}; {last_good(run)}; continue "
                               f"with the same command and --resume --out {run.path}") from None
    finally:
        bar.close()
        outputs.end()
    accelerator.wait_for_everyone()
    return run.path


class StepOutputs:
    """What the run writes into its folder (main process only) and when: the config, a metrics row every
    train.log_every steps, sample sheets, checkpoints. The step's outputs first, its checkpoint last: a run killed
    in between redoes the step on resume."""

    def __init__(self, run: RunFolder, cfg: Config, accelerator):
        self.run, self.cfg, self.tc, self.accelerator = run, cfg, cfg.train, accelerator
        self.main = accelerator.is_main_process                      # the only process that writes
        self.fsdp = self.tc.fsdp and accelerator.num_processes > 1   # then every process gathers what it writes
        self.record = launch_record(self.tc, accelerator)            # launch.json
        self.launch = {k: self.record[k] for k in ("processes", "global_batch")}  # also in each checkpoint
        self.tracking = self.tc.log_with != "none"

    def begin(self) -> None:
        """The config and launch.json (how it was launched: processes, global batch, precision, devices, versions);
        a resumed run checks the launch against its checkpoint's first (check_processes)."""
        if self.main:
            self.run.write_config(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            self.run.write_launch(self.record)
        if self.tracking:                               # accelerate's trackers: TensorBoard under <run>/tensorboard
            self.accelerator.init_trackers(self.cfg.name, config=_hparams(self.cfg))

    def end(self) -> None:
        if self.tracking:
            self.accelerator.end_training()

    def ready(self, exported: Trained, encoders) -> None:
        """The steps begin: the clock of metrics' elapsed_s starts; the sample sheets show the exported role's EMA
        where it keeps one."""
        self.sampled = Model(exported.ema if exported.ema is not None else exported.role.net, encoders, self.cfg)
        self.t0 = time.time()

    def sheet_due(self, done: int) -> bool:
        return done == self.tc.steps or bool(self.tc.sample_every and done % self.tc.sample_every == 0)

    def after_step(self, done: int, result: LossOut, trained: dict[str, Trained], state: dict, bar) -> None:
        tc = self.tc
        if done % tc.log_every == 0 or done == tc.steps:
            logs = _mean_over_processes(result.logs, self.accelerator)
            lrs = {f"lr/{n}": t.scheduler.get_last_lr()[0] for n, t in trained.items()}
            row = {"step": done, **logs, "lr": next(iter(lrs.values())), **(lrs if len(lrs) > 1 else {}),
                   "elapsed_s": round(time.time() - self.t0, 3)}
            if self.main:
                self.run.append_metrics(row)
            if self.tracking:
                self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=done)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if not k.startswith("grad_norm")})
        if self.sheet_due(done):
            self.sheets(done, result)
        if done % tc.ckpt_every == 0 or done == tc.steps:  # every process checks the weights are finite
            save_checkpoint(self.run, done, trained, state, {"name": self.cfg.name, **self.launch}, keep=tc.keep_ckpts,
                            write=self.main)

    def sheets(self, done: int, result: LossOut) -> None:
        if self.main or self.fsdp:
            with tempfile.TemporaryDirectory() as scratch:  # the sheet of a process that does not write
                sheet = self.run.sample_sheet(done) if self.main else Path(scratch) / "sheet.png"
                with writing(sheet):
                    sample_sheet(self.sampled, sheet)
            reshard(self.sampled.net)
        if self.main and result.images:                  # e.g. DMD2's student / real / fake x0
            with writing(sheet := self.run.sample_sheet(done, "estimates")):
                estimates_sheet(result.images, self.sampled.encoders, sheet, self.tc.sample_num)


def launch_record(tc, accelerator) -> dict:
    """launch.json: what a reader of the run needs to compare it with another (the trained settings: config.yaml)."""
    return {"processes": accelerator.num_processes, "global_batch": tc.batch_size * accelerator.num_processes,
            "batch_per_process": tc.batch_size, "mixed_precision": tc.mixed_precision,
            "distributed": accelerator.distributed_type.value, "fsdp": tc.fsdp and accelerator.num_processes > 1,
            "activation_checkpointing": tc.activation_checkpointing, "device": accelerator.device.type,
            "device_name": torch.cuda.get_device_name() if accelerator.device.type == "cuda" else "cpu",
            "torch": torch.__version__, "accelerate": accelerate.__version__}


def _hparams(cfg: Config) -> dict:
    """The config flattened to TensorBoard's hyperparameter types (numbers, strings, booleans)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat(to_dict(cfg)).items()}


def _exported(roles: dict[str, Role], method: str) -> str:
    exported = [name for name, r in roles.items() if r.export]
    if len(exported) != 1:
        raise ValueError(f"train.method={method}: exactly one role must be exported, got {exported}")
    return exported[0]


def _stop_unless_finite(result: LossOut, index: int, accelerator, run: RunFolder) -> None:
    """A non-finite loss on any process stops every process, naming the last good checkpoint."""
    finite = accelerator.reduce(torch.stack([torch.isfinite(v.detach()).all() for v in result.losses.values()])
                                .float().to(accelerator.device), "sum") == accelerator.num_processes
    for (name, loss), ok in zip(result.losses.items(), finite.tolist()):
        if not ok:
            raise NonFiniteLossError(f"step {index}: loss '{name}' is "
                                     + (f"{loss.item()}" if not torch.isfinite(loss) else "not finite on another process")
                                     + f"; run stopped, {last_good(run)}")


def _check_run_folder(run: RunFolder, cfg: Config, resume: bool) -> list[Checkpoint]:
    """The run's complete checkpoints, once `run` is known to be a run folder this call may continue."""
    if run.path.exists() and not run.path.is_dir():
        raise FileExistsError(f"--out {run.path}: is a file; expected a run folder")
    ckpts = run.checkpoints()
    if ckpts and not resume:
        raise FileExistsError(f"{run.path}: already holds checkpoints; pass --resume or choose another --out")
    if ckpts and run.config.is_file():
        changes = trained_changes(load_config(run.config), cfg)
        if changes:
            raise ConfigError(f"--resume: this config changes what {run.path} was trained with ({'; '.join(changes)}; "
                              f"saved in {run.config}); a resumed run keeps its config: drop the change, "
                              f"or train into a new --out")
    return ckpts


def _resume(run: RunFolder, ckpts: list[Checkpoint], trained: dict[str, Trained], state: dict, accelerator,
            keep: int) -> int:
    """The step to start from: the newest readable checkpoint's, loaded (0 if there is none). The main process then
    sets newer unreadable checkpoints aside, finishes a killed run's pruning and drops metrics rows logged after."""
    start, errors = 0, []
    for ckpt in reversed(ckpts):
        try:
            start = load_checkpoint(ckpt, trained, state)["step"]
            break
        except CheckpointError as e:
            errors.append((ckpt, e))
    else:
        if errors:
            raise errors[0][1]
    accelerator.wait_for_everyone()                    # every process has read the checkpoint it resumes from
    if accelerator.is_main_process:
        for bad, e in errors:                          # kept for a look, out of the way of the steps saved again
            aside = bad.set_aside()
            print(f"warning: {e}; set aside as {aside.name}, resuming from step-{start:06d}", file=sys.stderr)
        prune_checkpoints(run, keep)                   # a run killed before its pruning left one more
        run.truncate_metrics(start)                    # rows logged after that checkpoint are logged again
    return start


def _mean_over_processes(logs: dict[str, float], accelerator) -> dict[str, float]:
    """Each logged number's mean over processes: a row describes the global batch (one process: unchanged)."""
    if accelerator.num_processes == 1:
        return logs
    keys = sorted(logs)
    mean = accelerator.reduce(torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64,
                                           device=accelerator.device), "mean")
    return dict(zip(keys, mean.tolist()))
