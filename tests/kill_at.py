"""Run `python -m workbench ARGS` and SIGKILL it at an exact point of its N-th call of a checkpoint function.

    python tests/kill_at.py POINT N ARGS...      (POINT "none": no kill; the test method `two_roles` is registered)

POINT: before-checkpoint (the N-th save_checkpoint is called; nothing of it written), mid-checkpoint (the
N-th safetensors file of the run's checkpoints is written, the folder still .tmp-*), before-prune (the N-th
checkpoint is renamed into place, older ones not yet pruned), mid-prune (inside the N-th deletion of a
checkpoint folder, its state.json and one weights file already deleted), after-checkpoint (the N-th
save_checkpoint has returned).
"""
import os
import shutil
import signal
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # this checkout's workbench, whatever pip installed

import workbench.train.checkpoint as checkpoint
import workbench.train.loop as loop
from workbench.__main__ import main

import two_roles  # noqa: F401,E402  registers the test method `two_roles`

POINTS = {"before-checkpoint": (loop, "save_checkpoint", True),
          "mid-checkpoint": (checkpoint, "write_weights", False),
          "before-prune": (checkpoint, "prune_checkpoints", True), "after-checkpoint": (loop, "save_checkpoint", False)}


def kill_at(point: str, n: int) -> None:
    if point == "none":
        return
    if point == "mid-prune":
        return kill_mid_prune(n)
    module, name, before = POINTS[point]
    real, calls = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if before and calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        if not before and calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(module, name, wrapped)


def kill_mid_prune(n: int) -> None:
    real, calls = shutil.rmtree, [0]

    def rmtree(path, *args, **kwargs):
        folder = Path(path)
        if (folder / "state.json").is_file():  # a checkpoint folder (not a temporary one, nor a sheet's scratch)
            calls[0] += 1
            if calls[0] == n:
                (folder / "state.json").unlink()
                next(folder.glob("*.safetensors")).unlink()
                os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *args, **kwargs)
    shutil.rmtree = rmtree


if __name__ == "__main__":
    kill_at(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
