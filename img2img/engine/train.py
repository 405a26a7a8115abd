"""The one training loop: device, precision, distributed data parallel, checkpoints, logging.

It knows nothing about GANs: the task does one optimisation step on a batch and returns its loss
terms; this loop feeds it, schedules the learning rate, keeps the generator EMA, writes samples,
metrics and checkpoints, and makes sure neither a crash nor Ctrl-C loses the run.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import yaml
from rich.console import Console
from torch import nn

from img2img._version import __version__
from img2img.config import PipelineBase, apply_overrides, dump_pipeline, validate_pipeline
from img2img.devices import select_device
from img2img.engine import checkpoint as ckpt_io
from img2img.engine.health import HealthMonitor
from img2img.errors import Img2ImgError
from img2img.registry import get_registry
from img2img.tasks.base import Precision, Task, unwrap

EXIT_SIGINT, EXIT_SIGTERM = 130, 143


@dataclass
class Dist:
    """Where this process stands in a torchrun job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    return select_device(name, option="train.device", local_rank=local_rank)


def setup_distributed(device_name: str, timeout_s: float) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                             device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, world=world, local_rank=local_rank), device


# ---------------------------------------------------------------------------------------------
# run folder


@dataclass
class RunFolder:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    def is_run(self) -> bool:
        return (self.root / "pipeline.yaml").exists() or self.checkpoints.exists()


def prepare_run_folder(out: Path, *, resume: bool, overwrite: bool) -> RunFolder:
    run = RunFolder(Path(out))
    if resume:
        return run
    if run.root.exists() and any(run.root.iterdir()):
        if not run.is_run():
            raise Img2ImgError(f"{run.root} exists and is not an img2img run folder; choose another --out")
        if not overwrite:
            raise Img2ImgError(f"{run.root} already holds a run; continue it with --resume {run.root}, "
                               f"start over with --overwrite, or choose another --out")
        shutil.rmtree(run.root)
    run.root.mkdir(parents=True, exist_ok=True)
    return run


# ---------------------------------------------------------------------------------------------
# learning-rate schedule


def lr_factor(epoch: int, train) -> float:
    """Constant for `epochs`, then linear decay to zero over `decay_epochs`, per epoch (the reference).

    `max_steps` only ends training early; it does not stretch the schedule, so extending a run with
    ``--resume --set train.max_steps=N`` continues exactly as an uninterrupted run would.
    """
    return max(0.0, 1.0 - max(0, epoch + 1 - train.epochs) / float(train.decay_epochs + 1))


def total_steps(train, steps_per_epoch: int) -> int:
    return train.max_steps or (train.epochs + train.decay_epochs) * steps_per_epoch


# ---------------------------------------------------------------------------------------------
# signals


class StopRequest:
    """SIGINT/SIGTERM finish the current step, then the loop checkpoints and exits 130/143.

    A second SIGINT interrupts at once (checkpoints are atomic, so nothing half-written stays).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


class TrainingStopped(Exception):
    """Raised after a signal-triggered checkpoint; carries the exit code (130 or 143)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class Trainer:
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
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        registry = get_registry()
        task_cls = registry.get("task", self.pipeline.task).factory
        torch.manual_seed(self.pipeline.seed)  # identical initial weights on every rank
        self.task: Task = task_cls(self.pipeline, device=self.device,
                                   precision=Precision(self.train.precision, self.device), registry=registry)
        if self.dist.enabled:  # each rank its own dropout noise
            torch.manual_seed(self.pipeline.seed + 1000 * self.dist.rank)
        self.data = self._make_data(task_cls)
        self.origins = ckpt_io.component_origins(self.pipeline, registry)
        self.ema: dict[str, nn.Module] = {}
        if self.train.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            for d in self.task.directions:
                self.ema[d] = AveragedModel(self.task.generator(d), multi_avg_fn=get_ema_multi_avg_fn(self.train.ema),
                                            use_buffers=True)
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.window: dict[str, torch.Tensor] = {}
        self.window_count = 0
        self.window_time = 0.0
        self.best: dict | None = None
        self.bad_step = torch.tensor(-1, device=self.device)
        self.validator = None
        self.health = HealthMonitor(self.task, self.pipeline, run_dir=self.run.root, console=self.console,
                                    main=self.dist.main)  # training health (engine/health.py)
        if self.resume_from is not None:
            self._restore(self.resume_from)
        self._distribute()

    # -- set-up -------------------------------------------------------------------------------
    def _make_data(self, task_cls):
        from img2img.data import TrainData

        d = self.pipeline.data
        data = TrainData(
            kind=task_cls.data_kind, a=d.a, b=d.b, pairs=d.pairs, direction=d.direction,
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

    def _distribute(self) -> None:
        nets = self.task.nets
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            for name in list(nets.keys()):
                net = nets[name]
                if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
                    net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
                if any(p.requires_grad for p in net.parameters()):
                    ids = [self.device.index] if self.device.type == "cuda" else None
                    net = DDP(net, device_ids=ids)
                nets[name] = net
        if self.train.compile:
            for name in list(nets.keys()):
                nets[name] = torch.compile(nets[name])

    # -- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": ckpt_io.FORMAT,
            "img2img_version": __version__,
            "task": self.pipeline.task,
            "pipeline": dump_pipeline(self.pipeline),
            "plugins": self.origins,
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "world_size": self.dist.world,
            "nets": {k: unwrap(v).state_dict() for k, v in self.task.nets.items()},
            "generators": {d: self._net_key(d) for d in self.task.directions},
            "optimizers": {k: o.state_dict() for k, o in self.task.optimizers.items()},
            "amp": self.task.amp.state_dict(),
            "ema": {d: m.state_dict() for d, m in self.ema.items()},
            "extra": self.task.extra_state(),
            "rng": ckpt_io.rng_state(),
            "window": {"sums": {k: v.cpu() for k, v in self.window.items()}, "count": self.window_count,
                       "seconds": self.window_time},
            "best": self.best,
            "health": self.health.state_dict(),  # training health: its window, so resume diagnoses alike
        }

    def _net_key(self, direction: str) -> str:
        gen = self.task.generator(direction)
        for key, net in self.task.nets.items():
            if unwrap(net) is gen:
                return key
        raise RuntimeError(f"generator for {direction} is not in task.nets")

    def _restore(self, ckpt: dict) -> None:
        for key, state in ckpt["nets"].items():
            unwrap(self.task.nets[key]).load_state_dict(state)
        for key, state in ckpt["optimizers"].items():
            self.task.optimizers[key].load_state_dict(state)
        self.task.amp.load_state_dict(ckpt.get("amp") or {})
        for d, state in (ckpt.get("ema") or {}).items():
            if d in self.ema:
                self.ema[d].load_state_dict(state)
        self.task.load_extra_state(ckpt.get("extra") or {})
        self.step, self.epoch, self.step_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.dist.world:  # same images consumed, counted in this job's steps
            self.step_in_epoch = self.step_in_epoch * saved_world // self.dist.world
        window = ckpt.get("window") or {}
        self.window = {k: v.to(self.device) for k, v in (window.get("sums") or {}).items()}
        self.window_count = window.get("count", 0)
        self.window_time = window.get("seconds", 0.0)
        self.best = ckpt.get("best")
        self.health.load_state_dict(ckpt.get("health"))  # training health
        ckpt_io.set_rng_state(ckpt["rng"])
        if self.dist.enabled:  # every rank draws its own dropout noise
            torch.manual_seed(self.pipeline.seed + self.dist.rank + 7919 * self.step)

    def save_checkpoint(self, *, periodic: bool) -> None:
        """Write last.pt (and step-N.pt when periodic) atomically; a NaN since the last one stops instead."""
        if not self.dist.main:
            return
        self._check_finite()
        if self.saved_step is None:  # the first save of this process: clear what a killed one left
            ckpt_io.remove_partial_files(self.run.checkpoints)
        state = self.state()
        ckpt_io.atomic_save(state, self.run.last)
        if periodic:
            ckpt_io.atomic_save(state, self.run.checkpoints / f"step-{self.step}.pt")
            self._prune_checkpoints()
        self.saved_step = self.step

    def _prune_checkpoints(self) -> None:
        keep = self.train.keep_checkpoints
        found = sorted(self.run.checkpoints.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        for old in found[: max(0, len(found) - keep)]:
            old.unlink(missing_ok=True)

    def _check_finite(self) -> None:
        bad = int(self.bad_step)
        if bad >= 0:
            raise Img2ImgError(
                f"a loss became NaN or inf at step {bad}; training stopped and the last good checkpoint "
                f"({self.run.last}) is kept. Lower train.lr, use train.precision=fp32, or set "
                "train.on_nan=skip to skip such steps.")

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
        optimizers = self.task.optimizers
        row["lr"] = optimizers["g"].param_groups[0]["lr"] if "g" in optimizers else \
            next(iter(optimizers.values())).param_groups[0]["lr"]
        if "d" in optimizers:
            row["lr_d"] = optimizers["d"].param_groups[0]["lr"]
        row["seconds_per_step"] = self.window_time / max(1, self.window_count)
        row["images_per_s"] = self.train.batch_size * self.dist.world / max(row["seconds_per_step"], 1e-9)
        if self.task.skipped_steps:
            row["skipped_steps"] = self.task.skipped_steps
        self.window, self.window_count, self.window_time = {}, 0, 0.0
        return row

    def _write_row(self, row: dict) -> None:
        if not self.dist.main:
            return
        with open(self.run.metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()

    # -- samples ------------------------------------------------------------------------------
    def generators_for_eval(self) -> dict[str, nn.Module]:
        if self.ema:
            return {d: m.module for d, m in self.ema.items()}
        return {d: self.task.generator(d) for d in self.task.directions}

    def write_samples(self) -> Path | None:
        if not self.dist.main:
            return None
        from torchvision.utils import make_grid, save_image

        gens = self.generators_for_eval()
        modes = {d: g.training for d, g in gens.items()}
        for g in gens.values():
            g.eval()
        try:
            with self.task.amp.autocast():
                columns = self.task.sample_columns(self.fixed_batch, gens)
        finally:
            for d, g in gens.items():
                g.train(modes[d])
        columns = [_to_rgb(c.float().cpu()) for c in columns]
        n = columns[0].shape[0]
        tiles = [columns[j][i] for i in range(n) for j in range(len(columns))]
        grid = make_grid(torch.stack(tiles), nrow=len(columns), padding=2, normalize=True, value_range=(-1, 1))
        path = self.run.samples / f"step-{self.step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
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
            self._write_run_files()
            self._truncate_metrics()
            self.health.start(self.step)  # training health: drop records after the checkpoint
        base_lrs = {k: [g.get("initial_lr", g["lr"]) for g in o.param_groups] for k, o in self.task.optimizers.items()}
        for k, o in self.task.optimizers.items():
            for g, lr in zip(o.param_groups, base_lrs[k]):
                g["initial_lr"] = lr
        stopper = StopRequest()
        progress = _Progress(self.console, total, self.step, enabled=self.dist.main)
        with stopper.installed(), progress:
            while self.step < total:
                epoch_iter = self.data.epoch(self.epoch, self.step_in_epoch)
                tick = time.perf_counter()
                for batch in epoch_iter:
                    factor = lr_factor(self.epoch, train)
                    for k, o in self.task.optimizers.items():
                        for g in o.param_groups:
                            g["lr"] = g["initial_lr"] * factor
                    losses = self.task.train_step(batch)
                    self.step += 1
                    self.step_in_epoch += 1
                    for d, m in self.ema.items():
                        m.update_parameters(self.task.generator(d))
                    self._accumulate(losses)
                    now = time.perf_counter()
                    self.window_time += now - tick
                    tick = now
                    if self.step % train.log_every == 0 or self.step == total:
                        if train.on_nan == "stop":
                            self._check_finite()
                        row = self._flush_window()
                        row.update(self.health.observe(row, self.fixed_batch))  # training health signals
                        self._write_row(row)
                        progress.log(row)
                        if self.tb is not None:
                            for k, v in row.items():
                                if k not in ("step", "epoch"):
                                    self.tb.add_scalar(k, v, self.step)
                        if self._agreed_signal(1 if self.health.stopping else None):  # train.health: stop
                            self._stop_unhealthy()
                    progress.advance(self.step)
                    if self.validator is not None and self.validator.due(self.step, total):
                        row = self.validator.run()
                        self._write_row(row)
                        progress.note(row)
                    if self.step % train.sample_every == 0 or self.step == total:
                        self.write_samples()
                    if self.step % train.checkpoint_every == 0 or self.step == total:
                        self.save_checkpoint(periodic=self.step % train.checkpoint_every == 0)
                    signum = self._agreed_signal(stopper.signum)
                    if signum is not None:
                        self._stop(signum)
                    if self.step >= total:
                        break
                    tick = time.perf_counter()
                else:
                    self.epoch += 1
                    self.step_in_epoch = 0
                    continue
                if self.step_in_epoch >= steps_per_epoch:
                    self.epoch += 1
                    self.step_in_epoch = 0
        if self.tb is not None:
            self.tb.close()
        self.dist.barrier()
        return self.run.last

    def _agreed_signal(self, signum: int | None) -> int | None:
        """Under torchrun every rank stops after the same step: the highest signal seen wins."""
        if not self.dist.enabled:
            return signum
        flag = torch.tensor([signum or 0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        value = int(flag.item())
        return value or None

    def _check_sizes(self) -> None:
        """Images that the generators cannot take: say so before the first step, not mid-forward."""
        h, w = self.fixed_batch["a"].shape[-2:]
        for d in self.task.directions:
            multiple = int(getattr(self.task.generator(d), "size_multiple", 1))
            if h % multiple or w % multiple:
                spec = getattr(getattr(self.pipeline, "model", None), "generator", None)
                name = f"'{spec.name}' " if spec is not None else ""
                raise Img2ImgError(
                    f"training images come out of data.transforms at {w}x{h}, but the generator {name}needs "
                    f"multiples of {multiple}; add a stage such as RandomCrop: {{height: {max(multiple, h // multiple * multiple)}, "
                    f"width: {max(multiple, w // multiple * multiple)}}} (or Resize) to data.transforms")

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

    def _truncate_metrics(self) -> None:
        """On resume, drop rows logged after the checkpoint so every step is logged once."""
        path = self.run.metrics
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if row.get("step", 0) <= self.step:
                kept.append(line)
        _atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _write_run_files(self) -> None:
        root = self.run.root
        _atomic_write_text(root / "pipeline.yaml", yaml.safe_dump(dump_pipeline(self.pipeline), sort_keys=False))
        (root / "plugins.json").write_text(json.dumps(self.origins, indent=2) + "\n")
        described = self.data.describe_transforms()
        (root / "transforms.json").write_text(json.dumps(described, indent=2, default=str) + "\n")

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


def _atomic_write_text(path: Path, text: str) -> None:
    """Replace a small text file so that a kill at any moment leaves the old or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images.repeat(1, 3, 1, 1)
    if images.shape[1] == 4:  # composite on white so transparency is visible in the grid
        alpha = (images[:, 3:4] + 1) / 2
        return images[:, :3] * alpha + (1 - alpha)
    return images


class _Progress:
    """A rich progress bar on a terminal, one line per log row elsewhere (CI logs, files)."""

    def __init__(self, console: Console, total: int, start: int, enabled: bool) -> None:
        self.console, self.total, self.enabled = console, total, enabled
        self.live = enabled and console.is_terminal
        self.progress = None
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                                     console=console, transient=False)
            self.task_id = self.progress.add_task("train", total=total, completed=start, rate="", losses="")

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        terms = {k: v for k, v in row.items() if k not in ("step", "epoch", "lr", "lr_d", "seconds_per_step",
                                                             "images_per_s", "skipped_steps")
                 and not k.startswith("health/")}  # training health has its own lines
        text = " ".join(f"{k} {v:.3f}" for k, v in terms.items())
        rate = f"{1.0 / max(row['seconds_per_step'], 1e-9):.2f} it/s"
        if self.progress is not None:
            self.progress.update(self.task_id, rate=rate, losses=text)
        else:
            self.console.print(f"step {row['step']}/{self.total} epoch {row['epoch']} {rate} lr {row['lr']:.2e} {text}",
                               highlight=False)

    def note(self, row: dict) -> None:
        if self.enabled:
            text = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
            self.console.print(f"step {row['step']} validation: {text}", highlight=False)


# ---------------------------------------------------------------------------------------------
# entry point


def train(pipeline_path: Path | None, *, overrides: list[str] | None = None, out: Path | None = None,
          resume: Path | None = None, overwrite: bool = False, console: Console | None = None) -> Path:
    """Train from a pipeline file, or continue a run; returns the path of `last.pt`."""
    from img2img.config import load_pipeline

    console = console or Console()
    overrides = list(overrides or [])
    resume_state = None
    if resume is not None:
        resume_state = ckpt_io.load_checkpoint(resume)
        ckpt_path = Path(resume_state["path"])
        run_root = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
        if out is not None and Path(out).resolve() != run_root.resolve():
            raise Img2ImgError(f"--out {out} differs from the run being resumed ({run_root}); drop --out")
        raw = apply_overrides(resume_state["pipeline"], overrides)
        pipeline = validate_pipeline(raw, source=f"{ckpt_path} (+ --set)")
        if pipeline_path is not None:
            _warn_if_changed(console, load_pipeline(pipeline_path), pipeline, pipeline_path)
        run = RunFolder(run_root)
    else:
        if pipeline_path is None:
            raise Img2ImgError("give a pipeline file, or --resume RUN_DIR")
        pipeline = load_pipeline(pipeline_path, overrides)
        run = RunFolder(Path(out) if out else Path("runs") / pipeline.name)
    timeout = float(os.environ.get("IMG2IMG_DIST_TIMEOUT", "300"))
    dist, device = setup_distributed(pipeline.train.device, timeout)
    try:
        if dist.main and resume_state is None:  # only rank 0 touches the run folder and the demo data
            _ensure_synth(pipeline, console)
            run = prepare_run_folder(run.root, resume=False, overwrite=overwrite)
        dist.barrier()
        return _fit(pipeline, run, dist, device, console, resume_state)
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _fit(pipeline, run, dist, device, console, resume_state) -> Path:
    trainer = Trainer(pipeline, run, dist=dist, device=device, console=console, resume_from=resume_state)
    if trainer.dist.main:
        where = f"resuming at step {trainer.step}" if resume_state else "starting"
        ranks = f" x {dist.world} processes" if dist.enabled else ""
        console.print(f"[bold]{pipeline.task}[/] {pipeline.name}: {where} on {trainer.device}{ranks} "
                      f"({trainer.data.steps_per_epoch} steps/epoch, "
                      f"{total_steps(pipeline.train, trainer.data.steps_per_epoch)} steps) -> {run.root}")
    trainer.fit()
    if trainer.dist.main:
        console.print(f"[green]done[/]: {run.root} (checkpoints/last.pt, samples/, metrics.jsonl)")
    return run.last


def _ensure_synth(pipeline: PipelineBase, console: Console) -> None:
    name = pipeline.data.synthesize
    if not name:
        return
    from img2img.datasets.synth import ensure_synth

    target = pipeline.data.a or pipeline.data.pairs
    if target is None:
        return
    root = target.parent
    if ensure_synth(name, root, seed=0):
        console.print(f"generated the '{name}' demo data set in {root}")


def _warn_if_changed(console: Console, from_file: PipelineBase, resumed: PipelineBase, path: Path) -> None:
    a, b = dump_pipeline(from_file), dump_pipeline(resumed)
    changed = sorted(_diff(a, b))
    changed = [c for c in changed if not c.startswith("train.")]
    if changed:
        console.print(f"[yellow]note: {path} differs from the checkpoint in {', '.join(changed)}; "
                      "the checkpoint's pipeline is used (change train.* settings with --set)[/]")


def _diff(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            out |= _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
