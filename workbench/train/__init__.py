from workbench.train.checkpoint import NonFiniteWeightsError
from workbench.train.loop import NonFiniteLossError, TrainInterrupted, steps_on_batch, train

__all__ = ["NonFiniteLossError", "NonFiniteWeightsError", "TrainInterrupted", "steps_on_batch", "train"]
