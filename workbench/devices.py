"""Where work runs: one rule for the device of every command and notebook, and its share under `accelerate launch`.

    resolve_device(name)  "auto" -> this process's GPU where CUDA is present, else the CPU; "cpu", "cuda", "cuda:1",
                          "mps" taken as asked, refused in one line (ValueError) where no such device is here
    processes()           this process's rank and the number of processes (`accelerate launch`, torchrun: the
                          WORLD_SIZE / RANK environment), with `mine` (its share of n work items), `gather` (every
                          share, in order, on every process) and `barrier`

"auto" skips Apple's MPS (float64 and some video ops are missing there): ask for "mps" by name.
A bare "cuda" under several processes means this process's GPU (cuda:LOCAL_RANK), as "auto" does.
Work is split by item (a batch of clips, a batch of pairs): item j on process j % world, so each item is computed
in the same batch as in one process and the gathered output is the same.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["Processes", "best_device", "processes", "resolve_device"]

KNOWN = "auto, cpu, cuda, cuda:N or mps"


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def best_device() -> torch.device:
    """This process's GPU where CUDA is present (cuda:LOCAL_RANK under several processes), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", _local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The device `name` asks for, or a ValueError naming what is missing (one line): see the module docstring."""
    if name is None or str(name) == "auto":
        return best_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name}: not a device (expected {KNOWN})") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here (use auto or cpu)")
        count = torch.cuda.device_count()
        if device.index is None:
            return torch.device("cuda", _local_rank() % count)
        if device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device{'s' * (count != 1)} "
                             f"(cuda:0..cuda:{count - 1})")
        return device
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"--device {name}: MPS is not available here (use auto or cpu)")
        return device
    raise ValueError(f"--device {name}: not a device the workbench runs on (expected {KNOWN})")


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a launch (rank 0 of 1 when run alone)."""
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that writes outputs."""
        return self.rank == 0

    def mine(self, n: int) -> range:
        """This process's share of work items 0..n-1: item j on process j % world."""
        return range(self.rank, n, self.world)

    def gather(self, done: dict[int, object], n: int) -> list:
        """Items 0..n-1 in order, on every process, from each process's `done` {item: result} of its `mine(n)`."""
        if self.world > 1:
            import torch.distributed as dist
            shares = [None] * self.world
            dist.all_gather_object(shares, done)
            done = {k: v for share in shares for k, v in share.items()}
        return [done[j] for j in range(n)]

    def broadcast(self, value):
        """The main process's `value`, on every process (a picklable object, e.g. a staged folder's path)."""
        if self.world > 1:
            import torch.distributed as dist
            box = [value]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        return value

    def barrier(self) -> None:
        """Wait for every process (a no-op alone): e.g. until the main process has published an output."""
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()


def processes() -> Processes:
    """This process's rank and the process count; under a launch (WORLD_SIZE > 1) the process group is set up by
    accelerate's PartialState (gloo on CPU, NCCL on GPUs), as `train` does."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Processes()
    from accelerate import PartialState
    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(state.process_index, state.num_processes)
