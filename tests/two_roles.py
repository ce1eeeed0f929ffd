"""A two-role method for the trainer's tests: registered as `two_roles` when this module is imported.

Role "model" (A, the exported FlowNet) updates every 5th step at its own lr, with an EMA; role "critic" (B,
a linear head on pooled clips) updates every step at another lr, without one.
"""
import torch

from workbench.methods import LossOut, Role, register
from workbench.methods.flow_matching import FlowMatching


@register("two_roles")
class TwoRoles(FlowMatching):
    def __init__(self, cfg, net, encoders):
        super().__init__(cfg, net, encoders)
        self.critic = torch.nn.Linear(3, 1)
        self.model_grad_seen: list[bool] = []  # per step: did A's parameters require grad inside losses?

    def roles(self):
        return {"model": Role(self.net, lr=2e-3, every=5, ema=0.9, export=True),
                "critic": Role(self.critic, lr=5e-4)}

    def losses(self, batch, step):
        self.model_grad_seen.append(any(p.requires_grad for p in self.net.parameters()))
        out = {}
        if "model" in step.due:
            out["model"] = super().losses(batch, step).losses["model"]
        if "critic" in step.due:
            pooled = batch["video"].mean(dim=(2, 3, 4))                      # B, 3
            out["critic"] = (step.nets["critic"](pooled) - 1).pow(2).mean()
        return LossOut(out, {f"loss_{k}": v.item() for k, v in out.items()})
