from workbench.train.loop import NonFiniteLossError, steps_on_batch, train

__all__ = ["NonFiniteLossError", "steps_on_batch", "train"]
