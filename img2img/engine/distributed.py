"""Where a process stands in a torchrun job, and how the engine wraps a task's networks.

Wrapping follows Lightning Fabric's rule: a network is wrapped once, when the task builds it, and the
task keeps only the wrapped object. `setup_function` returns the wrapper the engine hands to a task
(device, layout, SyncBatchNorm and DDP under torchrun, ``torch.compile``); `stale_references` finds
networks a task kept from before they were wrapped.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from img2img.devices import select_device


@dataclass
class Dist:
    """Where this process stands in a torchrun job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def agree(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        return self.max(int(bool(flag))) > 0

    def max(self, value: int) -> int:
        """The largest `value` over all ranks."""
        if not self.enabled:
            return int(value)
        tensor = torch.tensor([int(value)], device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    return select_device(name, option="train.device", local_rank=local_rank)


def setup_distributed(device_name: str, timeout_s: float) -> tuple[Dist, torch.device]:
    """Join the torchrun job described by the environment (gloo on CPUs, NCCL on GPUs), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        device = pick_device(device_name)
        return Dist(device=device), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                             device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device), device


LOCAL_BATCH_NORM_NOTE = ("batch norm on {device}: each process normalises with its own batch's statistics "
                         "(SyncBatchNorm, which shares them across processes, runs on CUDA only); the weights and "
                         "running statistics stay those of process 0's replica, gradients are averaged as usual")


def setup_function(device: torch.device, dist: Dist, *, channels_last: bool, compile: bool,
                   note: Callable[[str], None] | None = None) -> Callable[[nn.Module], nn.Module]:
    """The wrapper a task applies to each network it builds (see `img2img.tasks.Task.setup`).

    Under torchrun, batch norm is synchronised across processes on CUDA (NCCL); on CPUs (gloo), where
    SyncBatchNorm does not run, each process keeps its own batch statistics, and `note` says so once."""
    noted = []

    def setup(module: nn.Module) -> nn.Module:
        module = module.to(device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
                if device.type == "cuda":
                    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
                elif not noted:
                    noted.append(True)
                    if note is not None:
                        note(LOCAL_BATCH_NORM_NOTE.format(device=device.type))
            if any(p.requires_grad for p in module.parameters()):
                module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
        if compile:
            module = torch.compile(module)
        return module

    return setup


def stale_references(task) -> list[str]:
    """Attributes of `task` holding a network that `task.nets` holds only wrapped (DDP, compile).

    Such a reference trains without gradient sync (DDP) or outside the compiled graph.
    """
    from img2img.tasks.base import unwrap

    wrapped = {id(unwrap(net)): key for key, net in task.nets.items() if unwrap(net) is not net}
    found = []

    def check(name: str, value: object) -> None:
        if isinstance(value, nn.Module) and id(value) in wrapped:
            found.append(f"self.{name} (the unwrapped nets['{wrapped[id(value)]}'])")

    for name, value in vars(task).items():
        if name.startswith("_") or name == "nets":
            continue
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                check(f"{name}[{i}]", item)
        elif isinstance(value, dict):
            for key, item in value.items():
                check(f"{name}[{key!r}]", item)
        else:
            check(name, value)
    return found
