"""`python -m workbench ARGS` under `accelerate launch`, one or more runs in one launch, recording what each
process did into RECORD/rank-<r>.json (tests/test_multiprocess.py reads it).

    accelerate launch ... tests/launched.py RECORD ARGS [--- ARGS ...]

Per run and process: the accelerate distributed type, the class each trained role was prepared as, its count of
FSDP units (train.fsdp) and whether its transformer recomputes blocks in backward, how many checkpoints the
process wrote, and a digest of each role's final weights (whole, if sharded). The test methods `keyed_roles` and
`two_roles` are registered.
"""
import hashlib
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # this checkout's workbench, whatever pip installed

from torch.distributed.fsdp import FSDPModule  # noqa: E402

import workbench.train.loop as loop  # noqa: E402
from workbench.__main__ import main  # noqa: E402
from workbench.train.fsdp import whole  # noqa: E402

import keyed_noise  # noqa: F401,E402  registers `keyed_roles`
import two_roles  # noqa: F401,E402  registers `two_roles`


def digest(module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode() + whole(v).detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def record_run(argv: list[str]) -> dict:
    seen, build, save = {}, loop.build_trained, loop.save_checkpoint

    def build_trained(roles, tc, accelerator):
        seen["accelerator"], seen["trained"] = accelerator, build(roles, tc, accelerator)
        return seen["trained"]

    def save_checkpoint(*args, **kwargs):
        seen["saves"] = seen.get("saves", 0) + kwargs.get("write", True)  # FSDP: the others only gather
        return save(*args, **kwargs)

    loop.build_trained, loop.save_checkpoint = build_trained, save_checkpoint
    try:
        code = main(argv)
    finally:
        loop.build_trained, loop.save_checkpoint = build, save
    trained = seen.get("trained", {})
    return {"code": code, "distributed_type": seen["accelerator"].distributed_type.value if seen else None,
            "rank": seen["accelerator"].process_index if seen else None, "saves": seen.get("saves", 0),
            "wrapped": {n: type(t.net).__name__ for n, t in trained.items()},
            "units": {n: sum(isinstance(m, FSDPModule) for m in t.net.modules()) for n, t in trained.items()},
            "checkpointing": {n: getattr(getattr(t.role.net, "transformer", None), "gradient_checkpointing", False)
                              for n, t in trained.items()},
            "weights": {n: digest(t.role.net) for n, t in trained.items()}}


if __name__ == "__main__":
    record, args = Path(sys.argv[1]), sys.argv[2:]
    runs, cut = [], [i for i, a in enumerate(args) if a == "---"]
    for lo, hi in zip([0] + [i + 1 for i in cut], cut + [len(args)]):
        runs.append(record_run(args[lo:hi]))
    import torch.distributed as dist
    rank = dist.get_rank() if dist.is_initialized() else 0
    record.mkdir(parents=True, exist_ok=True)
    (record / f"rank-{rank}.json").write_text(json.dumps(runs, indent=1))
    sys.exit(max(r["code"] for r in runs))
