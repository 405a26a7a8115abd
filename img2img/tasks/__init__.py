"""Training tasks. Built-ins (cyclegan, pix2pix) register through `register_tasks` like any plugin."""
from img2img.tasks.base import ImagePool, Precision, Task, set_requires_grad, unwrap

__all__ = ["ImagePool", "Precision", "Task", "set_requires_grad", "unwrap"]
