"""Helpers shared by the benchmark scripts: building a real task from a pipeline, timing, output.

Every benchmark prints exactly one JSON object as its last stdout line (progress goes to stderr),
so a script or CI job can read the result with ``tail -n 1 | python -m json.tool``.
"""
from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE_STEP = REPO / "benchmarks" / "reference_step.py"
"""The published recipes as a plain PyTorch step (the default yardstick)."""
SHARED_REFERENCE_STEP = REPO.parent / "shared/bench/reference_step.py"
"""The project's shared yardstick, beside the checkout where it exists: an optional cross-check."""


def log(*parts: Any) -> None:
    """Progress for a human, on stderr so that stdout's last line stays the JSON result."""
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Linux's VmHWM where there is one: ru_maxrss is the same number for a process started from a
    shell, but a process forked from a large one inherits that one's RSS in ru_maxrss.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20  # macOS reports bytes


def summary(times: list[float]) -> dict[str, float]:
    return {"seconds_per_step": statistics.median(times), "min": min(times), "max": max(times)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call, with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device


def pipeline_dict(task: str, size: int, batch: int, precision: str, channels_last: bool,
                  compile: bool, data_root: Path, pix2pix_recipe: str = "unet") -> dict[str, Any]:
    """The pipeline of the reference's default recipe for `task`, as a user would write it.

    `pix2pix_recipe` "unet" is the published one (U-Net-256, batch norm, vanilla GAN; fewer
    downsamplings below 256 px), "resnet" the variant the shared yardstick runs.
    """
    generator = {"name": "resnet_9blocks", "ngf": 64}
    train = {"batch_size": batch, "precision": precision, "channels_last": channels_last, "compile": compile}
    data = {"a": str(data_root / "a"), "b": str(data_root / "b"),
            "transforms": [{"RandomCrop": {"height": size, "width": size}}]}
    if task == "cyclegan":
        return {"task": "cyclegan", "name": "bench", "data": data,
                "model": {"generator": generator, "discriminator": {"name": "patchgan", "ndf": 64, "n_layers": 3}},
                "losses": {"adversarial": {"name": "lsgan"}, "cycle": {"name": "l1", "weight": 10.0},
                           "identity": {"name": "l1", "weight": 5.0}},
                "train": {**train, "pool_size": 50}}
    if task == "pix2pix" and pix2pix_recipe == "unet":
        downs = min(8, size.bit_length() - 1)
        unet = {"name": "unet_256", "ngf": 64} if downs == 8 else {"name": "unet", "num_downs": downs, "ngf": 64}
        return {"task": "pix2pix", "name": "bench", "data": data,
                "model": {"generator": unet, "discriminator": {"name": "patchgan", "ndf": 64, "n_layers": 3,
                                                               "norm": "batch"}},
                "losses": {"adversarial": {"name": "vanilla"}, "reconstruction": {"name": "l1", "weight": 100.0}},
                "train": train}
    if task == "pix2pix":
        # the shared yardstick's pix2pix: the ResNet generator, a conditional instance-norm
        # PatchGAN, LSGAN and L1 weight 100
        return {"task": "pix2pix", "name": "bench", "data": data,
                "model": {"generator": generator,
                          "discriminator": {"name": "patchgan", "ndf": 64, "n_layers": 3, "norm": "instance"}},
                "losses": {"adversarial": {"name": "lsgan"}, "reconstruction": {"name": "l1", "weight": 100.0}},
                "train": train}
    if task == "cut":
        return {"task": "cut", "name": "bench", "data": data,
                "model": {"generator": generator, "discriminator": {"name": "patchgan", "ndf": 64, "n_layers": 3}},
                "train": train}
    raise SystemExit(f"unknown task {task!r}; expected cyclegan, pix2pix or cut")


def build_task(task: str, *, size: int, batch: int, precision: str, channels_last: bool, compile: bool,
               device: torch.device, data_root: Path, seed: int = 0, pix2pix_recipe: str = "unet"):
    """The real task, built through the registry from a validated pipeline, as `img2img train` does.

    Its networks stay eager even when ``compile`` is set (so that FLOPs can be counted first);
    `compile_nets` then wraps them as the training loop does for ``train.compile``.
    """
    from img2img.config import validate_pipeline
    from img2img.registry import get_registry
    from img2img.precision import Precision

    registry = get_registry()
    if not registry.has("task", task):
        hint = " (install it with: pip install -e plugins/img2img-cut)" if task == "cut" else ""
        raise SystemExit(f"task '{task}' is not registered{hint}; known: {', '.join(registry.names('task'))}")
    pipeline = validate_pipeline(pipeline_dict(task, size, batch, precision, channels_last, compile, data_root,
                                               pix2pix_recipe))
    torch.manual_seed(seed)
    task_cls = registry.get("task", task).factory
    return task_cls(pipeline, device=device, precision=Precision(precision, device), registry=registry)


def compile_nets(task) -> None:
    """Wrap every network of `task` in `torch.compile`, as the engine does for ``train.compile``."""
    for name in list(task.nets.keys()):
        compiled = torch.compile(task.nets[name])
        task.setup(compiled)  # mark it set up: stored as it is
        task.nets[name] = compiled


def random_batch(task, size: int, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch in [-1, 1] with the channels the task's pipeline declares."""
    gen = torch.Generator().manual_seed(seed)
    ch = task.pipeline.data.channels
    return {"a": torch.rand(batch, ch.a, size, size, generator=gen) * 2 - 1,
            "b": torch.rand(batch, ch.b, size, size, generator=gen) * 2 - 1}
