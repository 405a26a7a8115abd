"""The one training loop: it feeds the task, steps the schedulers, keeps the EMA, and writes samples,
metrics and checkpoints, so that neither a crash nor Ctrl-C loses the run.

It knows nothing about GANs: the task does one optimisation step on a batch and returns its loss
terms (see `img2img.tasks.base` for the contract). Read `Trainer.fit` top to bottom.
"""
from __future__ import annotations

import re
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from img2img.config import PipelineBase
from img2img.engine import checkpoint as ckpt_io
from img2img.engine import run as run_io
from img2img.engine.distributed import Dist, pick_device, setup_function, stale_references
from img2img.engine.health import HealthMonitor
from img2img.engine.progress import Progress
from img2img.engine.provenance import component_origins
from img2img.engine.run import RunFolder
from img2img.engine.signals import EXIT_SIGINT, EXIT_SIGTERM, StopRequest, TrainingStopped
from img2img.engine.state import TrainingState
from img2img.engine.translators import (
    TranslatorEMA,
    check_translators,
    fresh_translator,
    plain_state,
    written_for_generator,
)
from img2img.errors import Img2ImgError
from img2img.precision import Precision
from img2img.registry import get_registry
from img2img.tasks.base import Task


def total_steps(train, steps_per_epoch: int) -> int:
    return train.max_steps or (train.epochs + train.decay_epochs) * steps_per_epoch


@dataclass
class Trainer(TrainingState):
    pipeline: PipelineBase
    run: RunFolder
    dist: Dist = field(default_factory=Dist)
    device: torch.device | None = None
    console: Console = field(default_factory=Console)
    resume_from: dict | None = None
    saved_step: int | None = field(default=None, init=False)
    """The step last written to last.pt by this process (None before the first save)."""

    def __post_init__(self) -> None:
        self.train = self.pipeline.train
        if self.device is None:
            self.device = pick_device(self.train.device)
        if self.dist.device is None:
            self.dist.device = self.device
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        amp = Precision(self.train.precision, self.device)
        self.train.precision = amp.name  # `auto` is decided here; pipeline.yaml records the choice
        registry = get_registry()
        task_cls = registry.get("task", self.pipeline.task).factory
        torch.manual_seed(self.pipeline.seed)  # identical initial weights on every rank
        setup = setup_function(self.device, self.dist, channels_last=self.train.channels_last,
                               compile=self.train.compile, note=self._note_once_on_rank_0)
        self.task: Task = task_cls(self.pipeline, device=self.device, precision=amp, registry=registry,
                                   setup=setup, agree=self.dist.agree)
        self._check_contract()
        if self.dist.enabled:  # each rank its own dropout noise
            torch.manual_seed(self.pipeline.seed + 1000 * self.dist.rank)
        self.data = self._make_data(task_cls)
        self.origins = component_origins(self.pipeline, registry)
        self.sources = check_translators(self.task)  # before the first step: a task bug is a message
        self.ema = TranslatorEMA(self.task, self.train.ema) if self.train.ema else None
        self._eval_translators: dict[str, nn.Module] | None = None
        self.step = self.epoch = self.step_in_epoch = 0
        self.skipped_steps = 0
        self.window: dict[str, torch.Tensor] = {}
        self.window_count = 0
        self.window_time = 0.0
        self.carried: dict | None = None  # a row logged before log_every: what a resumed run carries on from
        self.resumed_mid_window = False
        self.best: dict | None = None
        self.bad_step = torch.tensor(-1, device=self.device)
        self.validator = None
        self.stopper = StopRequest()
        self.health = HealthMonitor(self.task, self.pipeline, run_dir=self.run.root, console=self.console,
                                    main=self.dist.main)  # training health (engine/health.py)
        if self.resume_from is not None:
            self.restore(self.resume_from)

    # -- set-up -------------------------------------------------------------------------------
    def _note_once_on_rank_0(self, text: str) -> None:
        if self.dist.main:
            self.console.print(f"note: {text}", highlight=False, markup=False)

    def _check_contract(self) -> None:
        task = self.task
        if not task.optimizers:
            raise Img2ImgError(f"task '{self.pipeline.task}' built no optimizers; its build() must fill "
                               "self.optimizers")
        hidden = [name for name in vars(task) if not name.startswith("_")
                  and callable(getattr(Task, name, None)) and not isinstance(getattr(Task, name), type)]
        if hidden:  # e.g. self.judge = self.nets["judge"]: the engine calls task.judge(direction, ...)
            raise Img2ImgError(
                f"task '{self.pipeline.task}' sets {', '.join(f'self.{n}' for n in hidden)}, which hides "
                f"{', '.join(f'Task.{n}()' for n in hidden)} that the engine calls; rename the attribute "
                "(e.g. keep networks in self.nets and read self.nets[key])")
        stale = stale_references(task)
        if stale:
            raise Img2ImgError(
                f"task '{self.pipeline.task}' keeps networks from before the engine wrapped them: "
                f"{', '.join(stale)}. They would train without gradient sync (torchrun) or outside "
                "torch.compile; keep what self.build_net()/self.setup() return, or read self.nets[key]")

    def _make_data(self, task_cls):
        from img2img.data import TrainData

        d = self.pipeline.data
        names = task_cls.domains_for(self.pipeline)
        domains = None
        if task_cls.data_kind == "unpaired" and (d.domains is not None or tuple(names) != ("a", "b")):
            domains = {name: d.folder(name) for name in names}  # the a/b spelling keeps its own path
        data = TrainData(
            kind=task_cls.data_kind, a=d.folder("a"), b=d.folder("b"), pairs=d.pairs, direction=d.direction,
            domains=domains, channels={name: d.channels.of(name) for name in names},
            yaml_paths={name: d.domain_path(name) for name in names},
            channels_a=d.channels.a, channels_b=d.channels.b, transforms=d.transforms,
            input_transforms=d.input_transforms, seed=self.pipeline.seed, batch_size=self.train.batch_size,
            num_workers=d.num_workers, skip_unreadable=d.skip_unreadable, rank=self.dist.rank,
            world_size=self.dist.world, pin_memory=self.device.type == "cuda",
        )
        skipped = data.check()
        if skipped and self.dist.main:
            self.console.print(f"[yellow]skipped {len(skipped)} unreadable file(s) (data.skip_unreadable):[/]")
            for path, reason in skipped[:20]:
                self.console.print(f"  {path}: {reason}", markup=False, highlight=False, soft_wrap=True)
        if data.steps_per_epoch == 0:
            raise Img2ImgError(f"data: fewer images than train.batch_size={self.train.batch_size}"
                               f"{' x ' + str(self.dist.world) + ' processes' if self.dist.enabled else ''}; "
                               "lower the batch size or add images")
        return data

    # -- translators for samples and validation -------------------------------------------------
    def translators_for_eval(self) -> dict[str, nn.Module]:
        """A plain module per direction: the EMA when kept, else one sharing the live weights (so
        evaluating never runs a distributed wrapper and never changes the training modules' mode)."""
        if self.ema is not None:
            return dict(self.ema.modules)
        if written_for_generator(type(self.task)):  # img2img 0.1 tasks: their plain generator itself
            return {d: self.task.generator(d) for d in self.task.directions}
        if self._eval_translators is None:
            self._eval_translators = {}
            for d in self.task.directions:
                module = fresh_translator(self.task, d)
                module.load_state_dict(plain_state(self.task.translator(d)), assign=True)
                self._eval_translators[d] = module
        return self._eval_translators

    generators_for_eval = translators_for_eval  # the name img2img 0.1 used

    # -- logging ------------------------------------------------------------------------------
    def _accumulate(self, losses: dict[str, torch.Tensor]) -> None:
        total = None
        for k, v in losses.items():
            self.window[k] = self.window[k] + v if k in self.window else v.clone()
            total = v if total is None else total + v
        if total is not None and self.train.on_nan == "stop":
            bad = ~torch.isfinite(total)
            self.bad_step = torch.where(bad & (self.bad_step < 0), torch.tensor(self.step, device=self.device),
                                        self.bad_step)
        self.window_count += 1

    def _flush_window(self) -> dict:
        names = sorted(self.window)
        values = torch.stack([self.window[k] for k in names]) / max(1, self.window_count)
        if self.dist.enabled:
            torch.distributed.all_reduce(values)
            values /= self.dist.world
        row = {"step": self.step, "epoch": self.epoch}
        row.update({k: float(v) for k, v in zip(names, values.tolist())})
        rates = {name: opt.param_groups[0]["lr"] for name, opt in self.task.optimizers.items()}
        row["lr"] = rates["g"] if "g" in rates else next(iter(rates.values()))
        row.update({f"lr_{name}": value for name, value in rates.items()})
        row["seconds_per_step"] = self.window_time / max(1, self.window_count)
        row["images_per_s"] = self.train.batch_size * self.dist.world / max(row["seconds_per_step"], 1e-9)
        if self.skipped_steps:
            row["skipped_steps"] = self.skipped_steps
        self.window, self.window_count, self.window_time = {}, 0, 0.0
        return row

    def _write_row(self, row: dict) -> None:
        if self.dist.main:
            run_io.append_row(self.run.metrics, row)

    def write_samples(self) -> Path | None:
        if not self.dist.main:
            return None
        from torchvision.utils import make_grid, save_image

        translators = self.translators_for_eval()
        modes = {d: g.training for d, g in translators.items()}
        for g in translators.values():
            g.eval()
        try:
            with torch.no_grad(), self.task.amp.autocast():
                columns = self.task.sample_columns(self.fixed_batch, translators)
        finally:
            for d, g in translators.items():
                g.train(modes[d])
        columns = [_to_rgb(c.float().cpu()) for c in columns]
        n = columns[0].shape[0]
        tiles = [columns[j][i] for i in range(n) for j in range(len(columns))]
        grid = make_grid(torch.stack(tiles), nrow=len(columns), padding=2, normalize=True, value_range=(-1, 1))
        path = self.run.samples / f"step-{self.step}.png"
        from img2img import atomic

        with self.stopper.deferred(), atomic.atomic_write(path, "wb") as fh:
            save_image(grid, fh, format="png")
        if self.tb is not None:
            self.tb.add_image("samples", grid, self.step)
        return path

    # -- run ----------------------------------------------------------------------------------
    def fit(self) -> Path:
        from img2img.engine.validation import Validator

        train = self.train
        steps_per_epoch = self.data.steps_per_epoch
        total = total_steps(train, steps_per_epoch)
        self.fixed_batch = self.data.fixed_batch(train.samples)
        self._check_sizes()
        self.tb = self._tensorboard() if self.dist.main else None
        self.validator = Validator.create(self) if self.dist.main else None
        if self.dist.main:
            self.write_run_files()
            # a row logged at the end of a run that stopped between log steps is logged again, whole, at the
            # next log step of this one, as an uninterrupted run logs it (the checkpoint kept its window)
            again = self.resumed_mid_window and total > self.step
            run_io.truncate_metrics(self.run.metrics, self.step, drop_loss_row=again)
            self.health.start(self.step, inclusive=not again)  # training health: drop records after the checkpoint
        progress = Progress(self.console, total, self.step, enabled=self.dist.main)
        per_step = self.task.scheduler_interval == "step"
        with self.stopper.installed(), progress:
            while self.step < total:
                tick = time.perf_counter()
                for batch in self.data.epoch(self.epoch, self.step_in_epoch):
                    skipped_before = self.task.skipped_updates
                    losses = self.task.train_step(batch)
                    self.carried = None
                    self.step += 1
                    self.step_in_epoch += 1
                    if self.task.skipped_updates > skipped_before:
                        self.skipped_steps += 1
                    if per_step:
                        self._step_schedulers()
                    if self.ema is not None:
                        self.ema.update()
                    self._accumulate(losses)
                    now = time.perf_counter()
                    self.window_time += now - tick
                    tick = now
                    if self.step % train.log_every == 0 or self.step == total:
                        if train.on_nan == "stop":
                            self.check_finite()
                        if self.step % train.log_every:  # the last step, between log steps
                            self.carried = self.carry_state(row_logged=True)
                        row = self._flush_window()
                        row.update(self.health.observe(row, self.fixed_batch))  # training health signals
                        self._write_row(row)
                        progress.log(row)
                        self._tensorboard_row(row)
                        if self.dist.agree(self.health.stopping):  # train.health: stop
                            self._stop_unhealthy()
                    progress.advance(self.step)
                    if self.validator is not None and self.validator.due(self.step, total):
                        with self.stopper.deferred():
                            row = self.validator.run()
                        self._write_row(row)
                        progress.note(row)
                    if self.step % train.sample_every == 0 or self.step == total:
                        self.write_samples()
                    if self.step % train.checkpoint_every == 0 or self.step == total:
                        self.save_checkpoint(periodic=self.step % train.checkpoint_every == 0)
                    signum = self.dist.max(self.stopper.signum or 0) or None
                    if signum is not None:
                        self._stop(signum)
                    if self.step_in_epoch >= steps_per_epoch:
                        self._end_epoch(per_step)
                    if self.step >= total:
                        break
                    tick = time.perf_counter()
                else:
                    if self.step_in_epoch >= steps_per_epoch or steps_per_epoch == 0:
                        self._end_epoch(per_step)
        if self.tb is not None:
            self.tb.close()
        self.dist.barrier()
        return self.run.last

    def _end_epoch(self, per_step: bool) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        if not per_step:
            self._step_schedulers()

    def _step_schedulers(self) -> None:
        with warnings.catch_warnings():  # resumed at an epoch's end: no optimiser step yet in this process
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            for scheduler in self.task.schedulers.values():
                scheduler.step()

    def _check_sizes(self) -> None:
        """Images that the translators cannot take: say so before the first step, not mid-forward."""
        first = next(v for v in self.fixed_batch.values() if torch.is_tensor(v) and v.dim() == 4)  # a or any domain
        h, w = first.shape[-2:]
        for d in self.task.directions:
            multiple = ckpt_io.size_multiple(self.task.translator(d))
            if h % multiple or w % multiple:
                spec = getattr(getattr(self.pipeline, "model", None), "generator", None)
                name = f"'{spec.name}' " if spec is not None else ""
                raise Img2ImgError(
                    f"training images come out of data.transforms at {w}x{h}, but the generator {name}needs "
                    f"multiples of {multiple}; add a stage such as RandomCrop: {{height: "
                    f"{max(multiple, h // multiple * multiple)}, width: {max(multiple, w // multiple * multiple)}}} "
                    "(or Resize) to data.transforms")

    def _stop(self, signum: int) -> None:
        if self.saved_step != self.step:  # this step may be checkpointed already
            self.save_checkpoint(periodic=False)
        self.dist.barrier()
        code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
        raise TrainingStopped(code, f"{name}: stopped after step {self.step}; checkpoint {self.run.last}. "
                                    f"Continue with: img2img train --resume {self.run.root}")

    def _stop_unhealthy(self) -> None:
        """``train.health: stop``: samples and a complete checkpoint of this step, then exit 1 with the finding."""
        self.write_samples()
        if self.saved_step != self.step:
            self.save_checkpoint(periodic=False)
        self.dist.barrier()
        raise self.health.stop_error(self.run.last, self.run.root, self.step)

    def _tensorboard(self):
        if not self.train.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.console.print("[yellow]train.tensorboard is set but the tensorboard package is not installed "
                               "(pip install tensorboard); continuing without it[/]")
            return None
        return SummaryWriter(str(self.run.root / "tensorboard"))

    def _tensorboard_row(self, row: dict) -> None:
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, self.step)


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images.repeat(1, 3, 1, 1)
    if images.shape[1] == 4:  # composite on white so transparency is visible in the grid
        alpha = (images[:, 3:4] + 1) / 2
        return images[:, :3] * alpha + (1 - alpha)
    return images
