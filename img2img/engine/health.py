"""Training health: signals of the three GAN failure modes, measured while training.

On log rows the monitor adds ``health/*`` values to the row (so they land in ``metrics.jsonl`` and
TensorBoard) and hands them to `img2img.engine.diagnosis`, which turns a condition that lasts into
one warning with a remedy:

- ``health/diversity_<dir>``: how different the translations of the fixed sample batch are from
  each other, over how different its inputs (or real targets, the less diverse) are. Near 0: the
  generator gives the same output whatever the input (mode collapse).
- ``health/d_separation_<dir>``: the fraction of (real, translated) patch pairs the discriminator
  ranks the right way round (0.5: it cannot tell, 1: it always can), and ``health/d_gap_<dir>``, its
  mean logit on real minus on translated images. Near 1 for long: the discriminator wins. A
  multi-scale discriminator (a list of logits) gives the mean of these over its scales.
- ``health/grad_<dir>``: the gradient norm at the translator's first layer after the step.
- ``health/trend_<term>`` and ``health/swing_<term>`` of each adversarial loss term.

The extra forward runs with gradients off, the networks in the mode training uses, and leaves no
trace: running statistics are restored and random numbers drawn from a forked generator, so a run
trains exactly the same with health on or off.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from torch import nn

from img2img.engine.diagnosis import PREFIX, RECORD_FILE, Diagnoser, Finding, Names
from img2img.errors import Img2ImgError, first_line
from img2img.losses import scales_of
from img2img.tasks.base import Task, unwrap

DIVERSITY_SIZE = 32  # images are compared at (at most) this many pixels a side: layout and colour, not noise


class UnhealthyTraining(Img2ImgError):
    """``train.health: stop`` ended the run after a checkpoint; the message says what was seen."""


def translator_of(task: Task, direction: str) -> nn.Module:
    """The module that translates in `direction`, without its distributed wrapper (only rank 0 probes)."""
    return unwrap(task.translator(direction))


def domains(direction: str) -> tuple[str, str]:
    """``"a2b"`` -> ``("a", "b")``: the batch keys of the source and the target images."""
    source, _, target = direction.partition("2")
    return source, target


def net_name(task: Task, module: nn.Module, default: str) -> str:
    for key, net in task.nets.items():
        if unwrap(net) is module:
            return key
    return default


def names_of(task: Task) -> dict[str, Names]:
    """What each direction's translator, discriminator and adversarial loss terms are called."""
    out = {}
    for d in task.directions:
        gen = net_name(task, translator_of(task, d), f"the {d} translator")
        disc = task.discriminator_key(d)
        g_term, d_term = task.adversarial_terms.get(d, (gen, disc))
        out[d] = Names(direction=d, generator=gen, discriminator=disc, g_term=g_term, d_term=d_term)
    return out


# ---------------------------------------------------------------------------------------------
# the measurements


@contextlib.contextmanager
def leaving_no_trace(task: Task) -> Iterator[None]:
    """No gradients, random numbers from a fork, running statistics (batch norm) put back after."""
    saved = [(b, b.detach().clone()) for net in task.nets.values() for b in unwrap(net).buffers()]
    devices = [task.device] if task.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def mean_pairwise_distance(images: torch.Tensor) -> torch.Tensor | None:
    """Mean L1 distance per value between every two images, at most DIVERSITY_SIZE pixels a side."""
    n = images.shape[0]
    if n < 2:
        return None
    x = images.float()
    h, w = x.shape[-2:]
    if max(h, w) > DIVERSITY_SIZE:
        x = F.adaptive_avg_pool2d(x, (min(h, DIVERSITY_SIZE), min(w, DIVERSITY_SIZE)))
    flat = x.reshape(n, -1)
    distances = torch.cdist(flat, flat, p=1) / flat.shape[1]
    return distances.sum() / (n * (n - 1))


def separation(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The fraction of (real, fake) logit pairs ordered real > fake (ties count half): the area
    under the ROC curve of the discriminator's patch logits."""
    real, fake = real.detach().float().flatten(), fake.detach().float().flatten()
    values, inverse, counts = torch.unique(torch.cat([real, fake]), return_inverse=True, return_counts=True)
    ranks = (counts.cumsum(0) - (counts - 1) / 2.0)[inverse]  # 1-based, ties get their average rank
    n_real, n_fake = real.numel(), fake.numel()
    return (ranks[:n_real].sum() - n_real * (n_real + 1) / 2.0) / (n_real * n_fake)


def probe(task: Task, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """The signals of one extra forward pass of each translator (and discriminator) on `batch`."""
    batch = task.to_device(batch)
    values: dict[str, torch.Tensor] = {}
    with leaving_no_trace(task):
        translators = {d: translator_of(task, d) for d in task.directions}
        with task.amp.autocast():
            for d, gen in translators.items():
                src, tgt = domains(d)
                if src not in batch:
                    continue
                source = batch[src]
                output = gen(source)
                spread = mean_pairwise_distance(output)
                references = [r for r in (mean_pairwise_distance(source),
                                           mean_pairwise_distance(batch[tgt]) if tgt in batch else None)
                              if r is not None]
                if spread is not None and references:
                    reference = torch.stack(references).min()
                    values[f"{PREFIX}diversity_{d}"] = torch.where(reference > 1e-6, spread / reference.clamp_min(1e-6),
                                                                    torch.full_like(spread, float("nan")))
                if task.discriminator_key(d) is not None and tgt in batch:
                    real, fake = scales_of(task.judge(d, source, batch[tgt])), scales_of(task.judge(d, source, output))
                    values[f"{PREFIX}d_separation_{d}"] = torch.stack(
                        [separation(r.float(), f.float()) for r, f in zip(real, fake)]).mean()
                    values[f"{PREFIX}d_gap_{d}"] = torch.stack(
                        [r.float().mean() - f.float().mean() for r, f in zip(real, fake)]).mean()
        extra = task.health_signals(batch, translators)
    names = list(values)
    out = dict(zip(names, torch.stack([v.float() for v in values.values()]).tolist())) if names else {}
    out.update({k if k.startswith(PREFIX) else PREFIX + k: float(v) for k, v in extra.items()})
    return {k: v for k, v in out.items() if math.isfinite(v)}


def gradient_norms(task: Task) -> dict[str, float]:
    """The gradient norm of each translator's first trained parameter, as the last step left it."""
    norms = {}
    for d in task.directions:
        first = next((p for p in translator_of(task, d).parameters() if p.requires_grad), None)
        if first is not None and first.grad is not None:
            norms[f"{PREFIX}grad_{d}"] = first.grad.detach().float().norm()
    if not norms:
        return {}
    values = torch.stack(list(norms.values())).tolist()
    return {k: v for k, v in zip(norms, values) if math.isfinite(v)}


# ---------------------------------------------------------------------------------------------
# the monitor the training loop holds


class HealthMonitor:
    """Measures on log rows, diagnoses on rank 0, prints and records each finding once."""

    def __init__(self, task: Task, pipeline, *, run_dir: Path, console: Console, main: bool = True) -> None:
        train = pipeline.train
        self.task, self.run_dir, self.console, self.main = task, Path(run_dir), console, main
        self.mode: str = train.health
        self.thresholds = train.health_thresholds
        self.diagnoser = Diagnoser(self.thresholds, names_of(task), settings=_settings(pipeline))
        self.last_probe: int | None = None
        self.probe_error: str | None = None
        self.stopping: Finding | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def records(self) -> Path:
        return self.run_dir / RECORD_FILE

    def start(self, step: int, *, inclusive: bool = True) -> None:
        """On resume, forget records written after the checkpoint (or at it, when not `inclusive`):
        they will be written again."""
        if self.main and self.enabled and self.records.exists():
            kept = [line for line in self.records.read_text(encoding="utf-8").splitlines()
                    if _step_of(line) is not None and (_step_of(line) < step or inclusive and _step_of(line) == step)]
            tmp = self.records.with_name(f".{RECORD_FILE}.tmp")  # a kill leaves the old file or the new one
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.records)

    def observe(self, row: dict[str, Any], batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The ``health/*`` values for this log row; findings are printed and recorded."""
        if not self.enabled:
            return {}
        step = int(row["step"])
        signals = gradient_norms(self.task)
        if self.probe_error is None and (self.last_probe is None or step - self.last_probe >= self.thresholds.every):
            try:
                signals.update(probe(self.task, batch))
            except Exception as exc:  # a monitor never ends a training: say so once, measure the rest
                self.probe_error = f"{type(exc).__name__}: {first_line(exc)}"
                if self.main:
                    self.console.print(
                        f"[yellow]training health[/]: the measurement on the sample batch failed at step {step} "
                        f"({escape(self.probe_error)}); diversity and separation are not measured in this run. "
                        "If the task is a plugin's, its judge() or health_signals() may not fit its networks.",
                        highlight=False, soft_wrap=True)
            self.last_probe = step
        if not self.main:
            return signals
        derived, events = self.diagnoser.observe({**row, **signals})
        signals.update(derived)
        for event in events:
            self._announce(event)
            if event.kind == "warning" and self.mode == "stop" and self.stopping is None:
                self.stopping = event
        return signals

    def _announce(self, event: Finding) -> None:
        style = "bold yellow" if event.kind == "warning" else "green"
        self.console.print(f"[{style}]training health[/]: {escape(event.message)}", highlight=False, soft_wrap=True)
        with open(self.records, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event.to_dict()) + "\n")

    def stop_error(self, checkpoint: Path, run_root: Path, step: int) -> UnhealthyTraining:
        seen = f"{self.stopping.message} " if self.stopping is not None else "rank 0 found the run unhealthy. "
        return UnhealthyTraining(
            f"training health: {seen}Stopped after step {step} (train.health: stop); the checkpoint {checkpoint} "
            f"is complete. Change what the warning suggests and continue with: img2img train --resume {run_root} "
            "--set KEY=VALUE (a warning already given does not stop the resumed run again).")

    def state_dict(self) -> dict:
        return {"diagnoser": self.diagnoser.state_dict(), "last_probe": self.last_probe}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.diagnoser.load_state_dict(state.get("diagnoser") or {})
            self.last_probe = state.get("last_probe")


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _settings(pipeline) -> dict[str, Any]:
    """The pipeline values the remedies quote (so "a lower train.lr_d" can say what it is now)."""
    train = pipeline.train
    losses = getattr(pipeline, "losses", None)
    fields = type(losses).model_fields if losses is not None else {}
    specs = {k: getattr(losses, k) for k in fields}
    disc = getattr(getattr(pipeline, "model", None), "discriminator", None)
    return {
        "task": pipeline.task,
        "lr": train.lr,
        "lr_d": train.lr_d if train.lr_d is not None else train.lr,
        "adversarial": getattr(specs.get("adversarial"), "name", None),
        "d_norm": disc.params.get("norm") if disc is not None else None,
        "pool_size": train.pool_size,
        "content_weights": {k: getattr(v, "weight", None) for k, v in specs.items() if k != "adversarial"},
    }
