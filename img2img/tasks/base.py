"""The task contract: a training recipe the generic loop drives without knowing about GANs.

A task subclass sets ``Pipeline`` (its pydantic pipeline model), ``data_kind`` (``"unpaired"`` or
``"paired"``) and ``directions``, builds its networks in ``build()`` (into ``self.nets`` and
``self.optimizers``), performs one optimisation step in ``train_step(batch)`` and returns its loss
terms as detached tensors, and gives the generator for each direction through ``generator()``.
"""
from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

from img2img.config import GeneratorSpec, PipelineBase


class Precision:
    """Autocast and gradient scaling for one precision setting (fp32, bf16-mixed, fp16-mixed)."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.name = precision
        self.device = device
        self.dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16-mixed" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class ImagePool:
    """History of generated images (Shrivastava et al. 2017): D sees old fakes half of the time.

    Its randomness comes from its own generator so that a resumed run draws the same choices.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.rng).item() > 0.5:
                i = int(torch.randint(self.size, (), generator=self.rng))
                old = self.images[i].clone()
                self.images[i] = image.clone()
                out.append(old)
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {"images": [t.cpu() for t in self.images], "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.images = [t.to(device) for t in state["images"]]
        self.rng.set_state(state["rng"])


@contextlib.contextmanager
def _weights_left_uninitialised():
    """Make `torch.nn.init` a no-op for a meta-device build (random init of meta tensors imports
    torch._dynamo, seconds of start-up, for values that do not exist)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(module, "module") and isinstance(module.module, nn.Module):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


class Task:
    """Base class of training recipes; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Pipeline: ClassVar[type[PipelineBase]] = PipelineBase
    data_kind: ClassVar[str] = "unpaired"
    directions: ClassVar[tuple[str, ...]] = ("a2b", "b2a")

    def __init__(self, pipeline: PipelineBase, *, device: torch.device | str = "cpu",
                 precision: Precision | None = None, registry: Any = None) -> None:
        from img2img.registry import get_registry

        self.pipeline = pipeline
        self.device = torch.device(device)
        self.amp = precision or Precision("fp32", self.device)
        self.registry = registry or get_registry()
        self.nets = nn.ModuleDict()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.skip_nonfinite = pipeline.train.on_nan == "skip"
        self.skipped_steps = 0
        self.build()
        self.nets.to(self.device)

    # -- to implement -----------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def generator(self, direction: str) -> nn.Module:
        """The (unwrapped) generator translating in `direction`."""
        raise NotImplementedError

    def sample_columns(self, batch: dict[str, torch.Tensor], generators: dict[str, nn.Module]) -> list[torch.Tensor]:
        """Columns of the sample grid, each [B, C, H, W] in [-1, 1]."""
        raise NotImplementedError

    def channels(self, direction: str) -> tuple[int, int]:
        ch = self.pipeline.data.channels
        return (ch.a, ch.b) if direction == "a2b" else (ch.b, ch.a)

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    @classmethod
    def validate(cls, pipeline: PipelineBase) -> list[tuple[str, str]]:
        """Cross-field checks run after the pipeline validated; returns (dotted path, message)."""
        problems = cls.validate_data(pipeline)
        problems += cls.validate_size_multiple(pipeline, "model.generator", pipeline.model.generator)
        return problems

    # -- helpers for subclasses -------------------------------------------------------------
    @classmethod
    def validate_data(cls, pipeline: PipelineBase) -> list[tuple[str, str]]:
        data = pipeline.data
        if cls.data_kind == "paired":
            if data.pairs is None and (data.a is None or data.b is None):
                return [("data", "set data.a (inputs) and data.b (targets) paired by file name, "
                                 "or data.pairs (a folder of side-by-side AB images)")]
            if data.pairs is not None and (data.a is not None or data.b is not None):
                return [("data.pairs", "use either data.pairs or data.a/data.b, not both")]
            return []
        problems = [(f"data.{k}", f"required: the folder of domain {k.upper()} images")
                    for k in ("a", "b") if getattr(data, k) is None]
        if data.pairs is not None:
            problems.append(("data.pairs", f"the {cls.name} task trains on unpaired folders data.a and data.b"))
        return problems

    @classmethod
    def validate_size_multiple(cls, pipeline: PipelineBase, path: str, spec: GeneratorSpec) -> list[tuple[str, str]]:
        from img2img.data import transforms
        from img2img.registry import get_registry

        size = transforms.output_size(pipeline.data.transforms)
        if size is None:
            return []
        with torch.device("meta"), _weights_left_uninitialised():  # no memory, whatever ngf says
            net = get_registry().build("generator", spec.ref(), in_channels=3, out_channels=3)
        multiple = int(getattr(net, "size_multiple", 1))
        bad = [s for s in size if s % multiple]
        if bad:
            return [("data.transforms", f"the training crop {size[0]}x{size[1]} is not a multiple of {multiple}, "
                                        f"which {path} '{spec.name}' needs; crop to "
                                        f"{max(multiple, size[0] // multiple * multiple)} or change the generator")]
        return []

    def build_net(self, kind: str, spec: Any, **io: int) -> nn.Module:
        net = self.registry.build(kind, spec.ref() if hasattr(spec, "ref") else spec, **io)
        if self.pipeline.train.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def build_loss(self, spec: Any) -> nn.Module:
        return self.registry.build("loss", spec.ref() if hasattr(spec, "ref") else spec).to(self.device)

    def adam(self, params: Any, which: str) -> torch.optim.Optimizer:
        train = self.pipeline.train
        lr = train.lr_d if which == "d" and train.lr_d is not None else train.lr
        betas = train.betas_d if which == "d" and train.betas_d is not None else train.betas
        # one fused kernel over all parameters: on a CPU 3-4x faster than foreach (same update
        # formula, rounded in a different order), on a GPU fewer launches
        fast = {"fused": True} if self.device.type in ("cuda", "cpu") else {"foreach": True}
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), **fast)

    def optimise(self, loss: torch.Tensor, *optimizers: torch.optim.Optimizer) -> None:
        """One backward, then a step of each optimiser (several when one loss trains several parts).

        Under ``train.on_nan: skip`` a non-finite loss skips the update.
        """
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        if self.skip_nonfinite and not bool(torch.isfinite(loss)):
            self.skipped_steps += 1
            return
        self.amp.backward(loss)
        for optimizer in optimizers:
            self.amp.step(optimizer)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fmt = torch.channels_last if self.pipeline.train.channels_last else torch.contiguous_format
        return {k: v.to(self.device, non_blocking=True, memory_format=fmt) if torch.is_tensor(v) and v.dim() == 4
                else v for k, v in batch.items()}

    # -- training health (read by img2img/engine/health.py; see docs/health.md) -------------
    discriminators: ClassVar[dict[str, str]] = {}
    """Which discriminator judges each direction: direction -> key in `nets`, e.g. {"a2b": "d_b"}.
    Unset, the names say it: ``d_b`` judges a2b, ``d_a`` b2a, ``d`` the one direction of a task."""
    adversarial_terms: ClassVar[dict[str, tuple[str, str]]] = {}
    """direction -> (the generator's, the discriminator's) adversarial loss term in `train_step`'s
    result. Unset: the terms named like the translator's and the discriminator's keys in `nets`."""

    def discriminator_key(self, direction: str) -> str | None:
        """The key in `nets` of the discriminator that judges `direction`, or None (no adversary)."""
        if direction in self.discriminators:
            return self.discriminators[direction]
        names = [f"d_{direction[-1]}"] + (["d"] if len(self.directions) == 1 else [])
        return next((name for name in names if name in self.nets), None)

    def judge(self, direction: str, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Logits of the discriminator of `direction` for `output`, a real or translated image of
        `source`. Conditional tasks override it (pix2pix judges the pair)."""
        return unwrap(self.nets[self.discriminator_key(direction)])(output)

    def health_signals(self, batch: dict[str, torch.Tensor], translators: dict[str, nn.Module]) -> dict[str, float]:
        """Signals of the task's own (or replacing built-in ones of the same name, such as
        ``health/diversity_a2b``), measured without gradients on the fixed sample batch."""
        return {}
    # -- end of training health --------------------------------------------------------------
