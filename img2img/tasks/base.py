"""The task contract: a training recipe that the engine drives without knowing about GANs.

A task subclass sets ``Pipeline`` (its pydantic pipeline model) and ``data_kind`` (``"unpaired"`` or
``"paired"``), builds its networks in ``build()`` into ``self.nets`` and its optimisers into
``self.optimizers``, and performs one optimisation step in ``train_step(batch)``, returning its loss
terms as detached tensors. What the engine would otherwise have to guess, the task says:

- **Translators.** ``translator_nets = {"a2b": "g_ab", ...}`` names the net that translates each
  direction; a translator made of several networks (``decoder_b(encoder_a(x))``) overrides
  ``translator(direction)`` to compose them from ``self.nets`` and ``build_translator(direction)`` to
  build a fresh one without the rest of the task. translate, export and serve call only
  ``build_translator`` and load the translator's weights; the engine checkpoints (and keeps the EMA
  of) exactly the tensors ``translator(direction)`` uses, wherever they live in ``self.nets``.
- **Wrapping.** ``self.build_net(...)`` and ``self.setup(module)`` return the network placed on the
  training device and wrapped as the run needs (SyncBatchNorm and DistributedDataParallel under
  torchrun, ``torch.compile`` with ``train.compile``); anything stored into ``self.nets`` is set up
  the same way. Keep what they return (or read ``self.nets[key]``): a reference to a network taken
  before it was set up would train without gradient sync, and the engine refuses such a task.
  ``unwrap(net)`` gives the plain module (e.g. to call a discriminator without synchronising it).
- **Learning rate.** ``configure_schedulers()`` returns a ``torch.optim.lr_scheduler`` per optimiser
  (default: constant for ``train.epochs``, then linear decay over ``train.decay_epochs``, as the
  reference); the engine steps them every epoch (``scheduler_interval = "step"``: every step),
  checkpoints them and logs each optimiser's rate as ``lr_<name>``.
- **Non-finite losses.** ``self.optimise(loss, *optimizers)`` does one backward and steps the
  optimisers; under ``train.on_nan: skip`` a non-finite loss on any torchrun rank skips the update
  on every rank.
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from img2img.config import GeneratorSpec, PipelineBase
from img2img.config.domains import split_direction
from img2img.precision import Precision
from img2img.tasks import data_checks, validation as val
from img2img.tasks.engine_state import EngineState, check_engine_names


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


def reference_decay(epoch: int, train: Any) -> float:
    """The reference schedule's factor for `epoch` (0-based): 1 for ``train.epochs`` epochs, then a
    linear decay to zero over ``train.decay_epochs``. ``max_steps`` only ends training early."""
    return max(0.0, 1.0 - max(0, epoch + 1 - train.epochs) / float(train.decay_epochs + 1))


class Nets(nn.ModuleDict):
    """The task's networks by name; a module stored here is set up (device, wrappers) on the way in."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        object.__setattr__(self, "_task", weakref.proxy(task))

    def __setitem__(self, key: str, module: nn.Module) -> None:
        super().__setitem__(key, self._task.setup(module))


class Task:
    """Base class of training recipes; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Pipeline: ClassVar[type[PipelineBase]] = PipelineBase
    data_kind: ClassVar[str] = "unpaired"
    translator_nets: ClassVar[dict[str, str]] = {}
    """direction -> key of the net in `nets` that translates it (the usual case: one generator each)."""
    directions: ClassVar[tuple[str, ...]] = ("a2b", "b2a")
    """The directions the task translates; defaults to the keys of `translator_nets` when it is set.
    A task whose directions depend on the pipeline (one per pair of ``data.domains``) overrides
    `directions_for`; an instance's ``self.directions`` is what `directions_for` gave its pipeline."""
    domains: ClassVar[tuple[str, ...]] = ("a", "b")
    """The domains the engine loads for the task (unpaired: batch key = domain name); `img2img validate`
    requires a folder for each. A task whose domains come from the pipeline overrides `domains_for`."""
    scheduler_interval: ClassVar[str] = "epoch"
    """When the engine steps the learning-rate schedulers: every ``"epoch"`` or every ``"step"``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("translator_nets") and "directions" not in cls.__dict__:
            cls.directions = tuple(cls.translator_nets)

    def __init__(self, pipeline: PipelineBase, *, device: torch.device | str = "cpu",
                 precision: Precision | None = None, registry: Any = None,
                 setup: Callable[[nn.Module], nn.Module] | None = None,
                 agree: Callable[[bool], bool] | None = None, build: bool = True) -> None:
        from img2img.registry import get_registry

        check_engine_names(type(self), Task)
        self.pipeline = pipeline
        self.directions = tuple(type(self).directions_for(pipeline))
        self.device = torch.device(device)
        self.amp = precision or Precision("fp32", self.device)
        self.registry = registry or get_registry()
        self.__engine = EngineState(setup=setup, agree=agree or (lambda flag: flag))
        self.nets = Nets(self)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.skip_nonfinite = pipeline.train.on_nan == "skip"
        self.skipped_updates = 0
        if build:
            self.build()
            self.schedulers = dict(self.configure_schedulers())

    @classmethod
    def directions_for(cls, pipeline: PipelineBase) -> tuple[str, ...]:
        """The directions this task translates under `pipeline` (default: the class's ``directions``)."""
        return tuple(cls.directions)

    @classmethod
    def domains_for(cls, pipeline: PipelineBase) -> tuple[str, ...]:
        """The domains the engine loads for this task under `pipeline` (default: the class's ``domains``)."""
        return tuple(cls.domains)

    @classmethod
    def for_inference(cls, pipeline: PipelineBase, *, device: torch.device | str = "cpu") -> Task:
        """An instance whose `build()` did not run: for `build_translator` (translate, export, serve)."""
        return cls(pipeline, device=device, build=False)

    # -- to implement -----------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sample_columns(self, batch: dict[str, torch.Tensor], translators: dict[str, nn.Module]) -> list[torch.Tensor]:
        """Columns of the sample grid, each [B, C, H, W] in [-1, 1]."""
        raise NotImplementedError

    # -- translators ------------------------------------------------------------------------
    def translator(self, direction: str) -> nn.Module:
        """The module translating `direction` during training, made of (possibly wrapped) `nets`."""
        if type(self).generator is not Task.generator:  # a task written against img2img 0.1
            return self.generator(direction)
        key = self.translator_nets.get(direction)
        if key is None:
            raise NotImplementedError(
                f"task '{self.name or type(self).__name__}' names no translator for {direction}: set "
                "translator_nets = {direction: key of nets} or override translator()")
        return self.nets[key]

    def build_translator(self, direction: str) -> nn.Module:
        """A new, untrained translator for `direction`, built without the rest of the task.

        The default builds ``model.generator`` with the direction's channels; a task whose translator
        is not one generator overrides this (and `translator`). Its state-dict names must be those of
        `translator(direction)` without wrappers.
        """
        spec = getattr(getattr(self.pipeline, "model", None), "generator", None)
        if spec is None:
            raise NotImplementedError(f"task '{self.name or type(self).__name__}' has no model.generator; "
                                      "override build_translator(direction)")
        cin, cout = self.channels(direction)
        with self.plain_nets():
            return self.build_net("generator", spec, in_channels=cin, out_channels=cout)

    def generator(self, direction: str) -> nn.Module:
        """The plain (unwrapped) translator of `direction`; the name img2img 0.1 used."""
        return unwrap(self.translator(direction))

    def channels(self, direction: str) -> tuple[int, int]:
        """(input, output) channels of `direction`: those of its source and target domain."""
        ch = self.pipeline.data.channels
        if "2" not in direction:  # not <from>2<to>: as img2img 0.2 read it
            return (ch.a, ch.b) if direction == "a2b" else (ch.b, ch.a)
        source, target = split_direction(direction)
        return ch.of(source), ch.of(target)

    # -- state beyond nets and optimisers --------------------------------------------------------
    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # -- learning rate ------------------------------------------------------------------------
    def configure_schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """A scheduler per optimiser; the default is the reference's constant-then-linear decay."""
        def factor(epoch: int) -> float:  # a plain function: LambdaLR does not save it, it reads the pipeline
            return reference_decay(epoch, self.pipeline.train)

        return {name: torch.optim.lr_scheduler.LambdaLR(opt, factor) for name, opt in self.optimizers.items()}

    # -- pipeline checks ----------------------------------------------------------------------
    @classmethod
    def validate(cls, pipeline: PipelineBase) -> list[tuple[str, str]]:
        """Cross-field checks run after the pipeline validated; returns (dotted path, message)."""
        problems = cls.validate_data(pipeline)
        model = getattr(pipeline, "model", None)
        if isinstance(getattr(model, "generator", None), GeneratorSpec):
            problems += cls.validate_size_multiple(pipeline, "model.generator", model.generator)
        problems += val.check_pipeline(cls, pipeline)
        return problems

    # -- validation during training (img2img/tasks/validation.py, docs/evaluation.md) ------------
    val_higher_is_better: ClassVar[frozenset[str]] = val.HIGHER_IS_BETTER
    """The metrics of `val_metrics` where higher is better (best.pt keeps the maximum)."""

    @classmethod
    def val_metrics(cls, pipeline: PipelineBase) -> tuple[str, ...]:
        """The metrics `train.val_metric` may name, the default first: paired l1, psnr, ssim, kid, fid;
        unpaired with b2a cycle_l1, kid, fid; unpaired one-direction kid, fid. Extend it together
        with `validation_scores` to offer a metric of your own."""
        return val.default_metrics(cls, pipeline)

    @classmethod
    def val_directions(cls, pipeline: PipelineBase) -> tuple[str, ...]:
        """The directions kid/fid validation translates (each ``data.val.<from>`` against real images of
        its target domain; ``val_kid`` is their mean, ``val_kid_<direction>`` each). Default: a2b for a
        task of two domains, every direction for one of more."""
        return val.default_directions(cls, pipeline)

    @classmethod
    def val_extractor_default(cls, pipeline: PipelineBase, metric: str) -> str:
        """The feature extractor kid/fid use without `train.val_extractor` (see `val.default_extractor`)."""
        return val.default_extractor(cls, pipeline, metric)

    @classmethod
    def validate_setup(cls, pipeline: PipelineBase) -> list[tuple[str, str]]:
        """What stops validation on this machine (an extractor not installed, its weights missing);
        run by `img2img validate` and before training, never when a checkpoint is opened."""
        return val.check_setup(cls, pipeline)

    def validation_scores(self, translators: dict[str, nn.Module], val_images: val.ValImages) -> dict[str, float]:
        """The task's own validation scores (the engine adds kid and fid): `translators` are in eval
        mode, take any image size, and run under no_grad and the training precision."""
        return val.default_scores(self, translators, val_images)

    @classmethod
    def validate_data(cls, pipeline: PipelineBase) -> list[tuple[str, str]]:
        """The data section suits the task: paired folders or pairs, or a folder per domain it loads."""
        return data_checks.check_data(cls, pipeline)

    @classmethod
    def validate_domains(cls, pipeline: PipelineBase) -> list[tuple[str, str]]:
        """A folder for every domain the task loads (``domains_for``), and none for another."""
        return data_checks.check_domains(cls, pipeline)

    @classmethod
    def validate_size_multiple(cls, pipeline: PipelineBase, path: str, spec: GeneratorSpec) -> list[tuple[str, str]]:
        from img2img.data import sizes

        size = sizes.output_size(pipeline.data.transforms)
        if size is None:
            return []
        multiple = size_multiple_of(spec)
        bad = [s for s in size if s % multiple]
        if bad:
            return [("data.transforms", f"the training crop {size[0]}x{size[1]} is not a multiple of {multiple}, "
                                        f"which {path} '{spec.name}' needs; crop to "
                                        f"{max(multiple, size[0] // multiple * multiple)} or change the generator")]
        return []

    # -- helpers for subclasses -------------------------------------------------------------
    def setup(self, module: nn.Module) -> nn.Module:
        """Place `module` on the training device and wrap it as the run needs; keep what this returns."""
        engine = self.__engine
        if module in engine.set_up:
            return module
        if engine.plain or engine.setup is None:
            module = module.to(self.device)
            if self.pipeline.train.channels_last and not engine.plain:
                module = module.to(memory_format=torch.channels_last)
        else:
            module = engine.setup(module)
        engine.set_up.add(module)
        return module

    @contextlib.contextmanager
    def plain_nets(self):
        """Within this block `build_net`/`setup` only move networks to the device, without wrappers."""
        self.__engine.plain += 1
        try:
            yield
        finally:
            self.__engine.plain -= 1

    def build_net(self, kind: str, spec: Any, **io: int) -> nn.Module:
        """Build a component from the registry and set it up (see `setup`)."""
        return self.setup(self.registry.build(kind, spec.ref() if hasattr(spec, "ref") else spec, **io))

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

        Under ``train.on_nan: skip`` a non-finite loss (on any torchrun rank) skips the update.
        """
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        if self.skip_nonfinite and self.__engine.agree(not bool(torch.isfinite(loss))):
            self.skipped_updates += 1
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
        names = [f"d_{direction.rpartition('2')[2]}"] + (["d"] if len(self.directions) == 1 else [])
        return next((name for name in names if name in self.nets), None)

    def judge(self, direction: str, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits of the discriminator of `direction` for `output`, a real or translated image of
        `source`: a tensor, or a list of them (one per scale; health averages its signals over the
        scales). Conditional tasks override it (pix2pix judges the pair)."""
        return unwrap(self.nets[self.discriminator_key(direction)])(output)

    def health_signals(self, batch: dict[str, torch.Tensor], translators: dict[str, nn.Module]) -> dict[str, float]:
        """Signals of the task's own (or replacing built-in ones of the same name, such as
        ``health/diversity_a2b``), measured without gradients on the fixed sample batch."""
        return {}
    # -- end of training health --------------------------------------------------------------


def meta_build(kind: str, spec: Any, **io: int) -> nn.Module:
    """A component built on the meta device (no memory, no init): to read its attributes at validate time."""
    from img2img.registry import get_registry

    ref = spec.ref() if hasattr(spec, "ref") else dict(spec)
    with torch.device("meta"), _weights_left_uninitialised():  # no memory, whatever ngf says
        return get_registry().build(kind, ref, **io)


def size_multiple_of(spec: GeneratorSpec | dict) -> int:
    """The `size_multiple` of a generator spec, from a meta-device build (no memory, no init)."""
    return int(getattr(meta_build("generator", spec, in_channels=3, out_channels=3), "size_multiple", 1))
