"""What a checkpoint holds and how a run is restored from one, and the run's files beside it.

`TrainingState` is the part of the `Trainer` that turns a training into a self-describing
checkpoint (pipeline, plugin versions, networks, the tensors of every translator, optimisers,
schedulers, precision scaler, EMA, task state, data position, every RNG) and back.
"""
from __future__ import annotations

import json

import torch
import yaml

from img2img import atomic
from img2img._version import __version__
from img2img.config import dump_pipeline
from img2img.engine import checkpoint as ckpt_io
from img2img.engine.provenance import rng_state, set_rng_state
from img2img.engine.translators import plain_state
from img2img.errors import Img2ImgError


class TrainingState:
    """Checkpoint writing and restoring for the `Trainer` (which provides the attributes used here)."""

    def state(self) -> dict:
        task = self.task
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
            "nets": {k: {n: t.detach() for n, t in plain_state(v).items()} for k, v in task.nets.items()},
            "translators": self.sources,
            "optimizers": {k: o.state_dict() for k, o in task.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in task.schedulers.items()},
            "amp": task.amp.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "extra": task.extra_state(),
            "rng": rng_state(),
            **(self.carried or self.carry_state()),
            "best": self.best,
            "skipped_steps": self.skipped_steps,
        }

    def carry_state(self, row_logged: bool = False) -> dict:
        """The log window and the health monitor's state: what the next log row is made from.

        A row logged at a run's last step between two log steps is made early; the checkpoint of that
        step keeps the state from before it (``carried``), so a resumed run logs the same rows as an
        uninterrupted one and drops the early row.
        """
        import copy

        return {
            "window": {"sums": {k: v.cpu() for k, v in self.window.items()}, "count": self.window_count,
                       "seconds": self.window_time, "row_logged": row_logged},
            "health": copy.deepcopy(self.health.state_dict()),  # training health: its window, so resume diagnoses alike
        }

    def restore(self, ckpt: dict) -> None:
        task = self.task
        if ckpt.get("resumable") is False:
            source = ckpt.get("source") or {}
            raise Img2ImgError(f"{ckpt.get('path')} holds translators only ({source.get('kind', 'imported')}); "
                               "it has no optimiser state to continue. Start a new training instead")
        unknown = sorted(set(ckpt["nets"]) - set(task.nets))
        if unknown:
            raise Img2ImgError(f"{ckpt.get('path')} holds networks this {self.pipeline.task} task does not build "
                               f"({', '.join(unknown)}); it was written by another version of the task's plugin")
        for key, state in ckpt["nets"].items():
            _load_plain(task.nets[key], state)
        for key, state in ckpt["optimizers"].items():
            task.optimizers[key].load_state_dict(state)
        schedulers = ckpt.get("schedulers")
        for key, scheduler in task.schedulers.items():
            if isinstance(schedulers, dict) and key in schedulers:
                scheduler.load_state_dict(schedulers[key])
            else:  # img2img 0.1 set the rate from the epoch; the optimiser state already holds it
                scheduler.last_epoch = int(ckpt["epoch"])
        task.amp.load_state_dict(ckpt.get("amp") or {})
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        task.load_extra_state(ckpt.get("extra") or {})
        self.step, self.epoch, self.step_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.dist.world:  # same images consumed, counted in this job's steps
            self.step_in_epoch = self.step_in_epoch * saved_world // self.dist.world
        window = ckpt.get("window") or {}
        self.window = {k: v.to(self.device) for k, v in (window.get("sums") or {}).items()}
        self.window_count = window.get("count", 0)
        self.window_time = window.get("seconds", 0.0)
        self.resumed_mid_window = bool(window.get("row_logged")) and self.window_count > 0
        self.best = ckpt.get("best")
        self.skipped_steps = int(ckpt.get("skipped_steps") or 0)
        self.health.load_state_dict(ckpt.get("health"))  # training health
        set_rng_state(ckpt["rng"])
        if self.dist.enabled:  # every rank draws its own dropout noise
            torch.manual_seed(self.pipeline.seed + self.dist.rank + 7919 * self.step)

    def save_checkpoint(self, *, periodic: bool) -> None:
        """Write last.pt (and step-N.pt when periodic) atomically; a NaN since the last one stops instead."""
        if not self.dist.main:
            return
        self.check_finite()
        if self.saved_step is None:  # the first save of this process: clear what a killed one left
            atomic.remove_partial_files(self.run.checkpoints)
        state = self.state()
        with self.stopper.deferred():
            ckpt_io.atomic_save(state, self.run.last, then=self.after_failed_write())
            if periodic:
                ckpt_io.atomic_save(state, self.run.checkpoints / f"step-{self.step}.pt", then=self.after_failed_write())
                self._prune_checkpoints()
        self.saved_step = self.step

    def after_failed_write(self) -> str:
        """What to do once a failed checkpoint write is fixed: continue from last.pt if there is one, else
        start again (the run folder exists, so `train` needs --overwrite)."""
        if self.run.last.is_file():
            return f"then continue with --resume {self.run.root}"
        return (f"then start again with --overwrite (this run stopped before its first checkpoint, so there is "
                f"nothing to --resume; the run folder {self.run.root} exists)")

    def _prune_checkpoints(self) -> None:
        keep = self.train.keep_checkpoints
        found = sorted(self.run.checkpoints.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        for old in found[: max(0, len(found) - keep)]:
            old.unlink(missing_ok=True)

    def check_finite(self) -> None:
        bad = int(self.bad_step)
        if bad < 0:
            return
        fix = "Lower train.lr, use train.precision=fp32, or set train.on_nan=skip to skip such steps"
        if self.run.last.is_file():
            raise Img2ImgError(f"a loss became NaN or inf at step {bad}; training stopped and the last good "
                               f"checkpoint ({self.run.last}) is kept. {fix}, then continue with --resume "
                               f"{self.run.root}.")
        raise Img2ImgError(f"a loss became NaN or inf at step {bad}, before the first checkpoint, so there is "
                           f"nothing to continue. {fix}, then start again with --overwrite.")

    def write_run_files(self) -> None:
        root = self.run.root
        atomic.write_text(root / "pipeline.yaml", yaml.safe_dump(dump_pipeline(self.pipeline), sort_keys=False))
        atomic.write_text(root / "plugins.json", json.dumps(self.origins, indent=2) + "\n")
        described = self.data.describe_transforms()
        atomic.write_text(root / "transforms.json", json.dumps(described, indent=2, default=str) + "\n")


@torch.no_grad()
def _load_plain(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a checkpoint's tensors into a (possibly wrapped) network, matching names without wrappers."""
    own = plain_state(net)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise Img2ImgError(f"the checkpoint's weights do not fit the network the pipeline builds (missing: "
                           f"{', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(unexpected[:3]) or 'none'})")
    for name, tensor in own.items():
        tensor.copy_(state[name])
