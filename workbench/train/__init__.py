from workbench.train.checkpoint import NonFiniteWeightsError
from workbench.train.loop import NonFiniteLossError, TrainInterrupted, train
from workbench.train.roles import steps_on_batch

__all__ = ["NonFiniteLossError", "NonFiniteWeightsError", "TrainInterrupted", "steps_on_batch", "train"]
