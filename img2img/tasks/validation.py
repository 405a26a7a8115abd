"""The validation part of the task contract: what a task can score, its own scores, the checks.

A task says which metrics it can score (`Task.val_metrics`, the default first), computes the ones
that are its own (`Task.validation_scores`: l1/psnr/ssim against paired targets, cycle_l1 for a
two-direction unpaired task) and names the feature extractor kid/fid use when the pipeline does not
(`Task.val_extractor_default`). The engine (img2img/engine/validation.py) loads ``data.val``,
computes kid/fid itself for any task with an ``a2b`` translator, keeps ``best.pt`` and logs.

Checks come in two parts: `check_pipeline` runs with every pipeline validation (also when a
checkpoint is opened), `check_setup` only before a training and in ``img2img validate``: it looks at
this machine (is the extractor installed, are its weights there), which translate must not need.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from img2img.config.domains import split_direction
from img2img.errors import did_you_mean

DISTRIBUTION_METRICS = ("kid", "fid")
HIGHER_IS_BETTER = frozenset({"psnr", "ssim"})
WEIGHT_FREE_EXTRACTOR = "random_conv"
FID_EXTRACTOR = "inception_v3"
_MIN_SSIM_SIDE = 11  # the 11-tap Gaussian window of SSIM


def default_directions(task_cls: Any, pipeline: Any) -> tuple[str, ...]:
    """a2b for a task of two domains (when it translates a2b); every direction for one of more."""
    directions = tuple(task_cls.directions_for(pipeline)) if pipeline is not None else tuple(task_cls.directions)
    if pipeline is not None and len(task_cls.domains_for(pipeline)) > 2:
        return directions
    return ("a2b",) if "a2b" in directions else ()


def _many_domains(task_cls: Any, pipeline: Any) -> bool:
    return pipeline is not None and len(task_cls.domains_for(pipeline)) > 2


@dataclass
class ValImages:
    """``data.val`` as loaded when a training starts: ``[C, H, W]`` tensors in [-1, 1] on the CPU.

    ``b`` holds ``data.val.b``: for a paired task ``b[i]`` is the target of ``a[i]`` (matched by file
    name), for an unpaired task an independent set of B images (possibly empty).
    """

    a: list[torch.Tensor]
    b: list[torch.Tensor] = field(default_factory=list)
    paired: bool = False
    names_a: list[str] = field(default_factory=list)
    names_b: list[str] = field(default_factory=list)
    domains: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    """Unpaired: the images of every ``data.val.<domain>`` folder by domain (``a`` and ``b`` too)."""


def default_metrics(task_cls: Any, pipeline: Any = None) -> tuple[str, ...]:
    if task_cls.data_kind == "paired":
        return ("l1", "psnr", "ssim", "kid", "fid")
    directions = task_cls.directions_for(pipeline) if pipeline is not None else task_cls.directions
    if "b2a" in directions and "a2b" in directions and not _many_domains(task_cls, pipeline):
        return ("cycle_l1", "kid", "fid")
    if default_directions(task_cls, pipeline):
        return ("kid", "fid")
    return ()


def default_extractor(task_cls: Any, pipeline: Any, metric: str) -> str:
    """inception_v3, except for kid as the default metric of a one-direction unpaired task:
    random_conv, so that such a task validates out of the box, without a download."""
    one_direction = task_cls.data_kind == "unpaired" and "b2a" not in task_cls.directions
    return WEIGHT_FREE_EXTRACTOR if metric == "kid" and one_direction else FID_EXTRACTOR


def effective_metric(task_cls: Any, pipeline: Any) -> str | None:
    offered = task_cls.val_metrics(pipeline)
    return pipeline.train.val_metric or (offered[0] if offered else None)


def extractor_ref(task_cls: Any, pipeline: Any, metric: str) -> dict[str, Any]:
    """``{name, **params}`` of the extractor kid/fid use: train.val_extractor or the task's default."""
    spec = pipeline.train.val_extractor
    return spec.ref() if spec is not None else {"name": task_cls.val_extractor_default(pipeline, metric)}


def check_pipeline(task_cls: Any, pipeline: Any) -> list[tuple[str, str]]:
    """Pipeline-only checks: the metric is one the task offers; a paired task has its targets."""
    problems: list[tuple[str, str]] = []
    offered = task_cls.val_metrics(pipeline)
    metric = pipeline.train.val_metric
    task = getattr(pipeline, "task", task_cls.name)
    if metric is not None and metric not in offered:
        hint = did_you_mean(metric, offered)
        hint = f"{hint} " if hint else ""
        problems.append(("train.val_metric", f"'{metric}' is not a metric the {task} task can score; {hint}"
                                             f"use one of {', '.join(offered) or 'none'}"))
    val = pipeline.data.val
    if val is not None and not offered:
        problems.append(("data.val", f"the {task} task scores no validation; remove data.val"))
    metric = metric if metric in offered else (offered[0] if offered else None)
    if val is not None and val.pairs is None and metric in DISTRIBUTION_METRICS and _many_domains(task_cls, pipeline):
        for source in dict.fromkeys(split_direction(d)[0] for d in task_cls.val_directions(pipeline)):
            if val.folder(source) is None:
                problems.append((f"data.val.{source}", f"required for {metric} validation of {task}: it translates "
                                                       f"data.val.{source} into every other domain"))
    if (val is not None and task_cls.data_kind == "paired" and val.b is None and val.pairs is None
            and metric not in DISTRIBUTION_METRICS):
        problems.append(("data.val.b", f"required for {metric} validation of {task}: the targets of data.val.a, "
                                       "matched by file name (or give data.val.pairs, side-by-side AB images)"))
    return problems


def check_setup(task_cls: Any, pipeline: Any, registry: Any = None) -> list[tuple[str, str]]:
    """Checks before a training: settings that would do nothing, the extractor and its weights."""
    from pydantic import ValidationError

    from img2img.registry import get_registry, unknown_message

    train, task = pipeline.train, pipeline.task
    if pipeline.data.val is None:
        unused = [k for k in ("val_every", "val_metric", "val_extractor", "val_protocol")
                  if getattr(train, k, None) is not None]
        return [(f"train.{k}", "set, but there is no data.val to validate on; add data.val.a (and data.val.b) or "
                               f"data.val.pairs, or remove train.{k}") for k in unused]
    metric = effective_metric(task_cls, pipeline)
    if metric not in DISTRIBUTION_METRICS:
        if getattr(train, "val_protocol", None) is not None:
            return [("train.val_protocol", f"only kid and fid resize images for a feature extractor, and "
                                           f"train.val_metric is {metric}; remove train.val_protocol")]
        if train.val_extractor is not None:
            which = "" if train.val_metric else f" (the default of {task})"
            return [("train.val_extractor", f"only kid and fid use a feature extractor, and train.val_metric is "
                                            f"{metric}{which}; set train.val_metric to kid or fid, or remove "
                                            "train.val_extractor")]
        return []
    if not task_cls.val_directions(pipeline):
        return [("train.val_metric", f"{metric} scores data.val.a translated a2b, which the {task} task does not "
                                     "translate")]
    registry = registry or get_registry()
    ref = extractor_ref(task_cls, pipeline, metric)
    name, params = ref["name"], {k: v for k, v in ref.items() if k != "name"}
    path = "train.val_extractor"
    if not registry.has("feature_extractor", name):
        return [(f"{path}.name" if train.val_extractor is not None else path,
                 unknown_message("feature_extractor", name, registry.names("feature_extractor"))
                 + "; install the plugin that provides it")]
    component = registry.get("feature_extractor", name)
    try:
        validated = registry.validate("feature_extractor", name, params)
    except ValidationError as exc:
        return [(".".join((path, *map(str, e["loc"]))), e["msg"]) for e in exc.errors()]
    weights = getattr(component.factory, "weights", None)
    if weights is not None:
        problem = weights.problem(getattr(validated, "weights", None))
        if problem is not None:
            alternative = "" if name == WEIGHT_FREE_EXTRACTOR else (
                f" Or set train.val_extractor: {WEIGHT_FREE_EXTRACTOR} (no weights; it ranks the checkpoints of a "
                "run, but its values are not comparable to published ones).")
            lead = "" if train.val_extractor is not None else \
                f"{metric} uses the {name} extractor (the default; set train.val_extractor to choose another): "
            return [(path, f"{lead}{problem}{alternative}")]
    return []


# ---------------------------------------------------------------------------------------------
# the task's own scores


BATCH = 16


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().cpu() + 1) / 2).clamp(0, 1)


def batches(*lists: list[torch.Tensor], size: int = BATCH):
    """Stack consecutive items of equal shape (zipped lists move together), at most `size` at a time."""
    group: list[tuple[torch.Tensor, ...]] = []
    for items in zip(*lists):
        if group and (len(group) == size or any(g.shape != i.shape for g, i in zip(group[0], items))):
            yield tuple(torch.stack(column) for column in zip(*group))
            group = []
        group.append(items)
    if group:
        yield tuple(torch.stack(column) for column in zip(*group))


def paired_image_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image L1, PSNR (capped at 100 dB) and SSIM of ``[B, C, H, W]`` batches in [0, 1];
    PSNR and SSIM from 11 px up (the SSIM window)."""
    p, t = pred.double(), target.double()
    out = {"l1": (p - t).abs().flatten(1).mean(1)}
    if min(pred.shape[-2:]) >= _MIN_SSIM_SIDE:
        from torchmetrics.functional.image import structural_similarity_index_measure

        mse = ((p - t) ** 2).flatten(1).mean(1)
        out["psnr"] = torch.where(mse == 0, torch.full_like(mse, 100.0), (10 * torch.log10(1.0 / mse)).clamp(max=100.0))
        out["ssim"] = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
    return out


@torch.no_grad()
def default_scores(task: Any, translators: dict[str, nn.Module], val: ValImages) -> dict[str, float]:
    """l1/psnr/ssim of paired tasks, cycle_l1 of two-direction unpaired ones, nothing otherwise;
    each the mean over the images."""
    device = task.device
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def add(values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
            counts[k] = counts.get(k, 0) + v.numel()

    if val.paired:
        for x, target in batches(val.a, val.b):
            add(paired_image_scores(_to_unit(translators["a2b"](x.to(device))), _to_unit(target)))
    elif "a2b" in translators and "b2a" in translators and not _many_domains(type(task), task.pipeline):
        for images, there, back in ((val.a, "a2b", "b2a"), (val.b, "b2a", "a2b")):
            for (x,) in batches(images):
                rec = translators[back](translators[there](x.to(device)))
                add({"cycle_l1": (_to_unit(rec) - _to_unit(x)).flatten(1).abs().mean(1)})
    return {k: v / counts[k] for k, v in sums.items()}
