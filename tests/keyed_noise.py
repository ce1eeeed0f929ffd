"""A two-role test method whose randomness is a function of (seed, step, clip), not of the process drawing it:
registered as `keyed_roles` when this module is imported.

The methods draw a batch's noise from one generator per process, so two processes at B/2 draw other noise than
one at B. Here each clip's noise and time come from its own generator, so 2 x B/2 and 1 x B see the same
numbers and must end with the same weights (tests/test_multiprocess.py). Role "model" (exported, EMA) trains
by flow matching (Eq. 2) every step; role "critic" (a linear head on pooled clips) every 2nd step.
"""
import numpy as np
import torch

from workbench.flow import interpolate, target_velocity
from workbench.methods import LossOut, Role, register
from workbench.methods.flow_matching import FlowMatching


def clip_generator(seed: int, step: int, clip_seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, clip_seed]).generate_state(1)[0]))


@register("keyed_roles")
class KeyedRoles(FlowMatching):
    def __init__(self, cfg, net, encoders):
        super().__init__(cfg, net, encoders)
        self.critic = torch.nn.Linear(3, 1)

    def roles(self):
        return {"model": Role(self.net, ema=0.9, export=True), "critic": Role(self.critic, lr=5e-3, every=2)}

    def losses(self, batch, step):
        out = {}
        if "model" in step.due:
            x0, cond = self.encoders.prepare(batch["video"], batch["caption"])
            gens = [clip_generator(self.cfg.train.seed, step.index, s) for s in batch["seed"]]
            x1 = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(x0)
            t = torch.cat([torch.rand(1, generator=g) for g in gens]).to(x0)
            v = step.nets["model"](interpolate(x0, x1, t), t, cond)
            out["model"] = (v.float() - target_velocity(x0, x1).float()).pow(2).mean()  # Eq. (2)
        if "critic" in step.due:
            out["critic"] = (step.nets["critic"](batch["video"].mean(dim=(2, 3, 4))) - 1).pow(2).mean()
        return LossOut(out, {f"loss_{k}": v.item() for k, v in out.items()})
