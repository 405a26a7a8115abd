"""The training engine: the loop, its run folder and checkpoints, validation, precision and torchrun."""
