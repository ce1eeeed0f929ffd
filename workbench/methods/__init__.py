"""Training methods: one file each, one signature.

A method is built as `Method(cfg, net, encoders)`; methods/base.py says what it exposes (roles, frozen
networks, state, losses per role due). The training loop knows no method by name; it looks it up here.
"""
from workbench.methods.adversarial import Adversarial
from workbench.methods.base import Distillation, LossOut, Method, Role, TrainStep
from workbench.methods.ccd import CCD
from workbench.methods.cdm import CDM
from workbench.methods.dcd import DCD
from workbench.methods.dmd2 import DMD2
from workbench.methods.dpo import FlowDPO
from workbench.methods.flow_matching import FlowMatching
from workbench.methods.lcm import LCM
from workbench.methods.osv import OSV
from workbench.methods.pcm import PCM

__all__ = ["METHODS", "Distillation", "LossOut", "Method", "Role", "TrainStep", "build_method"]

METHODS: dict[str, type[Method]] = {
    "flow_matching": FlowMatching,
    "ccd": CCD,
    "dcd": DCD,
    "adversarial": Adversarial,
    "dpo": FlowDPO,
    "lcm": LCM,
    "pcm": PCM,
    "osv": OSV,
    "cdm": CDM,
    "dmd2": DMD2,
}


def build_method(cfg, net, encoders) -> Method:
    name = cfg.train.method
    if name not in METHODS:
        raise KeyError(f"train.method: unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name](cfg, net, encoders)
