"""Training tasks. Built-ins (cyclegan, pix2pix) register through `register_tasks` like any plugin."""
from img2img.tasks.base import Precision, Task, set_requires_grad, unwrap
from img2img.tasks.pool import ImagePool

__all__ = ["ImagePool", "Precision", "Task", "set_requires_grad", "unwrap"]
