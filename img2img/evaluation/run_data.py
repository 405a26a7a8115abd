"""A run folder as the report reads it: metrics rows grouped into series, samples, checkpoints,
the step best.pt holds, and timing figures. Tolerates a run that is still going or crashed
mid-write (a partial last line of ``metrics.jsonl``).
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from img2img.engine.run import read_metrics
from img2img.evaluation.plots import Series

_NOT_PLOTTED = {"step", "epoch", "val_best"}
_COUNTERS = {"skipped_steps"}  # running totals the trainer logs; shown as numbers, not as loss curves
_STEP_FILE = re.compile(r"^step-(\d+)\.(png|pt)$")


# --------------------------------------------------------------------------------------------
# reading the run folder


@dataclass
class Best:
    """The validation step best.pt holds (the last row marked val_best) and the metric that chose it."""

    step: int
    key: str | None  # "val_kid"; None when the pipeline does not say
    value: float | None


@dataclass
class Run:
    path: Path
    pipeline: dict[str, Any]
    pipeline_text: str
    pipeline_problem: str | None
    rows: list[dict[str, Any]]
    skipped_lines: int
    losses: dict[str, Series]
    lrs: dict[str, Series]
    vals: dict[str, Series]
    seconds: Series
    throughput: Series
    counters: dict[str, Series]
    samples: list[tuple[int, Path]]
    checkpoints: list[Path]
    spreads: dict[str, Series] = field(default_factory=dict)  # "val_kid" -> its val_kid_std
    val_seconds: Series = field(default_factory=Series)
    best: Best | None = None
    val_setups: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.pipeline.get("name") or self.path.name)


def load_run(run_dir: Path) -> Run:
    pipeline, text, problem = _read_pipeline(run_dir / "pipeline.yaml")
    rows, skipped = read_metrics(run_dir / "metrics.jsonl")
    groups = split_series(rows)
    vals = groups["val"]
    return Run(
        path=run_dir, pipeline=pipeline, pipeline_text=text, pipeline_problem=problem, rows=rows,
        skipped_lines=skipped, losses=groups["loss"], lrs=groups["lr"], vals=vals,
        seconds=groups["time"].get("seconds_per_step", Series()),
        throughput=groups["time"].get("images_per_s", Series()),
        counters=groups["counter"],
        samples=_step_files(run_dir / "samples", ".png"),
        checkpoints=_checkpoints(run_dir / "checkpoints"),
        spreads={key[: -len("_std")]: s for key, s in groups["spread"].items()},
        val_seconds=groups["time"].get("val_seconds", Series()),
        best=best_checkpoint(rows, pipeline, vals),
        val_setups=val_setups(rows),
    )


def split_series(rows: list[dict[str, Any]]) -> dict[str, dict[str, Series]]:
    """Group the numeric keys into losses, learning rates, validation metrics (and their spreads),
    timing and counters. A step logged twice (a resumed run repeats the steps after its last
    checkpoint) keeps its last value."""
    by_key: dict[str, dict[int, float]] = {}
    for row in rows:
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and _is_number(value):
                by_key.setdefault(key, {})[step] = float(value)
    groups: dict[str, dict[str, Series]] = {"loss": {}, "lr": {}, "val": {}, "spread": {}, "time": {}, "counter": {}}
    for key in by_key:
        if key in _NOT_PLOTTED or key.startswith("health/"):  # training health has its own panel
            continue
        if key.endswith(("_per_step", "_per_s")) or key == "val_seconds":
            group = "time"
        elif key == "lr" or key.startswith("lr_"):
            group = "lr"
        elif key.startswith("val_"):
            group = "spread" if key.endswith("_std") and key[: -len("_std")] in by_key else "val"
        elif key in _COUNTERS:
            group = "counter"
        else:
            group = "loss"
        series = Series()
        for step in sorted(by_key[key]):
            value = by_key[key][step]
            if math.isfinite(value):
                series.steps.append(step)
                series.values.append(value)
            else:
                series.hidden += 1
        groups[group][key] = series
    return groups


def best_checkpoint(rows: list[dict[str, Any]], pipeline: dict[str, Any], vals: dict[str, Series]) -> Best | None:
    marked = {int(row["step"]): bool(row.get("val_best")) for row in rows if any(k.startswith("val_") for k in row)}
    steps = [step for step, best in sorted(marked.items()) if best]
    if not steps:
        return None
    metric = dig(pipeline, "train", "val_metric")
    key = f"val_{metric}" if isinstance(metric, str) and f"val_{metric}" in vals else None
    return Best(step=steps[-1], key=key, value=vals[key].at(steps[-1]) if key else None)


def val_setups(rows: list[dict[str, Any]]) -> list[tuple[int, int, dict[str, Any]]]:
    """``(first step, last step, setup)`` for each stretch of kid/fid rows with one ``val_setup``
    (extractor, weights digest, protocol, counts; img2img/engine/validation.py)."""
    spans: list[tuple[int, int, dict[str, Any]]] = []
    for row in rows:
        setup = row.get("val_setup")
        if not isinstance(setup, dict):
            continue
        step = int(row["step"])
        if spans and spans[-1][2] == setup:
            spans[-1] = (spans[-1][0], step, setup)
        else:
            spans.append((step, step, setup))
    return spans


def setup_warning(spans: list[tuple[int, int, dict[str, Any]]]) -> str | None:
    """A warning when the rows' kid/fid values were computed in different ways (not comparable)."""
    from img2img.evaluation.distribution import setup_differences

    differences: list[str] = []
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        for diff in setup_differences(a, b, ("extractor", "weights", "protocol", "features", "count", "count_ref")):
            differences.append(f"{diff} (step {end} -> {start})")
    if not differences:
        return None
    return ("the validation rows were computed with different setups, so their values are not comparable "
            "across the change: " + "; ".join(differences))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_pipeline(path: Path) -> tuple[dict[str, Any], str, str | None]:
    if not path.is_file():
        return {}, "", f"{path.name} is missing"
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return {}, text, f"{path.name} is not valid YAML: {err}"
    if not isinstance(data, dict):
        return {}, text, f"{path.name} does not hold a mapping"
    return data, text, None


def _step_files(folder: Path, suffix: str) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_FILE.match(path.name)
        if match and path.suffix == suffix and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _checkpoints(folder: Path) -> list[Path]:
    """``step-N.pt`` in step order, then the named ones (``best.pt``, ``last.pt``)."""
    if not folder.is_dir():
        return []
    numbered = [path for _, path in _step_files(folder, ".pt")]
    named = sorted(p for p in folder.glob("*.pt") if p.is_file() and p not in numbered)
    return numbered + named


# --------------------------------------------------------------------------------------------
# numbers


def timing_summary(run: Run) -> dict[str, Any]:
    steps = [int(row["step"]) for row in run.rows]
    out: dict[str, Any] = {"total steps": max(steps) if steps else 0}
    epochs = [row["epoch"] for row in run.rows if _is_number(row.get("epoch"))]
    if epochs:
        out["epoch"] = int(max(epochs)) if float(max(epochs)).is_integer() else round(max(epochs), 3)
    secs = run.seconds
    if secs.values:
        median = statistics.median(secs.values)
        out["median s/step"] = median
        batch = dig(run.pipeline, "train", "batch_size")
        if run.throughput.values:  # logged by the trainer, which knows the number of processes
            out["images/s"] = statistics.median(run.throughput.values)
        elif _is_number(batch) and median > 0:
            out["images/s"] = batch / median
        # each logged value stands for the steps since the previous log
        total, previous = 0.0, 0
        for step, value in zip(secs.steps, secs.values):
            total += max(step - previous, 0) * value
            previous = step
        out["estimated training time"] = _duration(total)
    if run.val_seconds.values:
        out["validation time"] = _duration(sum(run.val_seconds.values))
    for key, series in run.counters.items():
        if series.values:
            out[key.replace("_", " ")] = int(series.values[-1]) if series.values[-1].is_integer() else series.values[-1]
    return out


def dig(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def size_text(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} GiB"


def inline(value: Any) -> str:
    """``{name: resnet_9blocks, ngf: 64}`` as ``resnet_9blocks (ngf=64)``."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(next(iter(value.values())), dict):  # an albumentations stage
            stage, params = next(iter(value.items()))
            return f"{stage}({inline(params)})"
        params = ", ".join(f"{k}={inline(v)}" for k, v in value.items() if k != "name")
        if "name" in value:
            return f"{value['name']} ({params})" if params else str(value["name"])
        return params
    if isinstance(value, list):
        return "[" + ", ".join(inline(v) for v in value) + "]"
    return str(value)
