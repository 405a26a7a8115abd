"""Image-quality metrics: paired (PSNR, SSIM, MAE) and distribution (FID, KID) scores of two folders.

Paired metrics compare each prediction with the target of the same relative path (extension ignored).
Distribution metrics compare the two folders as sets through a registered feature extractor
(``inception_v3`` by default: torchvision's ImageNet Inception v3, 2048-d pool features, so scores
are comparable between img2img evaluations but not to papers that used the TensorFlow FID network;
see docs/evaluation.md). The computation is `img2img.evaluation.distribution`, shared with the
validation during training.

Values are on the [0, 1] data range. The PSNR of identical images is ``float("inf")``; :func:`to_json`
writes it as the string ``"inf"`` because JSON has no infinity.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from img2img import atomic
from img2img.errors import Img2ImgError, did_you_mean

PAIRED = ("psnr", "ssim", "mae")
DISTRIBUTION = ("fid", "kid")

INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"  # also in img2img.default_plugins.extractors.INCEPTION
INCEPTION_URL = f"https://download.pytorch.org/models/{INCEPTION_FILE}"

_MIN_SSIM_SIDE = 6  # torchmetrics' 11-tap Gaussian window pads by 5 pixels with reflection


# --------------------------------------------------------------------------------------------
# paired scores


def paired_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean PSNR, SSIM and MAE of a batch ``[B, C, H, W]`` in [0, 1]; used for validation during training.

    PSNR is averaged per image, so one identical pair makes it ``inf``.
    """
    per_image = _paired_per_image(pred, target)
    return {name: float(values.mean()) for name, values in per_image.items()}


def _paired_per_image(
    pred: torch.Tensor, target: torch.Tensor, metrics: Sequence[str] = PAIRED
) -> dict[str, torch.Tensor]:
    """Per-image scores in float64, so a perfect match gives exactly SSIM 1 and MAE 0."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred = pred.detach().to(torch.float64)
    target = target.detach().to(torch.float64)
    out: dict[str, torch.Tensor] = {}
    if "psnr" in metrics:
        out["psnr"] = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    if "ssim" in metrics:
        if min(pred.shape[-2:]) < _MIN_SSIM_SIDE:
            raise ValueError(f"SSIM needs images of at least {_MIN_SSIM_SIDE}x{_MIN_SSIM_SIDE} pixels")
        out["ssim"] = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
    if "mae" in metrics:
        out["mae"] = (pred - target).abs().flatten(1).mean(dim=1)
    return {name: out[name] for name in metrics if name in out}


# --------------------------------------------------------------------------------------------
# folder evaluation


def evaluate_folders(
    pred_dir: Path,
    target_dir: Path,
    metrics: Sequence[str] = ("psnr", "ssim"),
    *,
    extractor: str | dict = "inception_v3",
    feature_extractor: nn.Module | None = None,
    feature_weights: Path | None = None,
    resize_protocol: str = "torch",
    channels: int = 3,
    batch_size: int = 16,
    device: str = "cpu",
    kid_subset_size: int | None = None,
) -> dict[str, Any]:
    """Score the images in ``pred_dir`` against those in ``target_dir``.

    Returns ``{"summary": {metric: value, "count": n, ...}, "per_image": [{"name": ..., metric: ...}],
    "warnings": [...]}``; ``per_image`` holds the paired metrics only. FID/KID use the registered
    extractor `extractor` (a name or ``{name, **params}``; `feature_weights` is its ``weights`` file),
    or `feature_extractor`, any module mapping ``[B, 3, H, W]`` in [-1, 1] to ``[B, D]`` with an
    ``input_size``. `resize_protocol` is ``torch`` or ``clean`` (see `img2img.evaluation.distribution`);
    ``device`` is where features are computed (paired metrics are cheap and stay on the CPU).
    """
    from img2img.evaluation.distribution import PROTOCOLS

    pred_dir, target_dir = Path(pred_dir), Path(target_dir)
    names = _check_metric_names(metrics)
    for folder, role in ((pred_dir, "prediction"), (target_dir, "target")):
        if not folder.is_dir():
            raise Img2ImgError(f"{role} folder {folder} does not exist or is not a folder")
    if batch_size < 1:
        raise Img2ImgError(f"batch size must be at least 1, got {batch_size}")
    if channels not in (1, 3, 4):
        raise Img2ImgError(f"channels {channels}: compare 1 (grey), 3 (RGB) or 4 (RGBA) channels")
    if resize_protocol not in PROTOCOLS:
        raise Img2ImgError(f"unknown resize protocol {resize_protocol!r}; use one of {', '.join(PROTOCOLS)}")
    paired = [m for m in names if m in PAIRED]
    distribution = [m for m in names if m in DISTRIBUTION]

    net = None
    if distribution:  # find the weights before reading any image: a missing file is the likely failure
        net = feature_extractor if feature_extractor is not None else _extractor(extractor, feature_weights)

    from img2img.data import list_images

    pred_files = list_images(pred_dir)  # raises, naming the folder, when it holds no image
    target_files = list_images(target_dir)
    summary: dict[str, Any] = {}
    per_image: list[dict[str, Any]] = []
    warnings: list[str] = []

    if paired:
        pairs = match_pairs(pred_dir, pred_files, target_dir, target_files)
        per_image = _score_pairs(pairs, paired, channels)
        for name in paired:
            summary[name] = float(np.mean([row[name] for row in per_image]))
    summary["count"] = len(pred_files)

    if distribution:
        assert net is not None
        summary.update(_distribution_scores(pred_files, target_files, distribution, net, channels, batch_size,
                                            device, kid_subset_size, resize_protocol, warnings))
        summary["extractor"] = _extractor_label(extractor) if feature_extractor is None else type(net).__name__
        summary["count_target"] = len(target_files)
    return {"summary": summary, "per_image": per_image, "warnings": warnings}


def _extractor_label(ref: str | dict) -> str:
    if isinstance(ref, str):
        return ref
    params = ", ".join(f"{k}={v}" for k, v in ref.items() if k != "name")
    return f"{ref['name']} ({params})" if params else str(ref["name"])


def _check_metric_names(metrics: Sequence[str] | str) -> list[str]:
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    known = PAIRED + DISTRIBUTION
    names: list[str] = []
    for raw in metrics:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in known:
            hint = did_you_mean(name, known)
            hint = f"; {hint}" if hint else ""
            raise Img2ImgError(f"unknown metric {raw!r}{hint} (known metrics: {', '.join(known)})")
        if name not in names:
            names.append(name)
    if not names:
        raise Img2ImgError(f"no metric given; choose from {', '.join(known)}")
    return names


def match_pairs(
    pred_dir: Path, pred_files: list[Path], target_dir: Path, target_files: list[Path]
) -> list[tuple[str, Path, Path]]:
    """``(name, prediction, target)`` paired by relative path without extension, then by unique file stem.

    The matching rule is the one paired training uses (:func:`img2img.data.match_pairs`); only the advice
    in its error is changed, since the fix here is different.
    """
    from img2img.data import folders as data

    try:
        labels = ("the prediction folder", "the target folder")
        pairs = data.match_pairs(pred_files, pred_dir, target_files, target_dir, labels)
    except Img2ImgError as err:
        lines = [line for line in str(err).splitlines() if "unpaired task" not in line]
        lines.append("Give both folders the same file names, or use only fid/kid: they compare the folders as sets.")
        raise Img2ImgError("\n".join(lines)) from None
    return [(pred.relative_to(pred_dir).with_suffix("").as_posix(), pred, target) for pred, target in pairs]


def _score_pairs(pairs: list[tuple[str, Path, Path]], metrics: list[str], channels: int) -> list[dict[str, Any]]:
    """Score pair by pair: images may differ in size from one pair to the next."""
    from img2img.data import read_image

    rows = []
    for name, pred_path, target_path in pairs:
        pred = read_image(pred_path, channels)
        target = read_image(target_path, channels)
        if pred.shape != target.shape:
            raise Img2ImgError(
                f"{pred_path} is {_size(pred)} but its target {target_path} is {_size(target)}; "
                "paired metrics need images of the same size"
            )
        try:
            scores = _paired_per_image(_to_tensor(pred)[None], _to_tensor(target)[None], metrics)
        except ValueError as err:
            raise Img2ImgError(f"{pred_path}: {err}") from None
        rows.append({"name": name, **{key: float(value[0]) for key, value in scores.items()}})
    return rows


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


# --------------------------------------------------------------------------------------------
# distribution scores (computed in img2img.evaluation.distribution, shared with training validation)


def inception_extractor(weights: Path | None = None) -> nn.Module:
    """The ``inception_v3`` feature extractor from a local state_dict (default: the hub cache); never downloads."""
    return _extractor("inception_v3", weights)


def _extractor(name: str | dict, weights: Path | None) -> nn.Module:
    """Build the extractor, adding the `evaluate` options to a missing-weights message."""
    from img2img.evaluation.distribution import build_extractor

    try:
        return build_extractor(name, weights=weights)
    except Img2ImgError as err:
        from img2img.registry import get_registry, split_ref

        registry, (plain, _) = get_registry(), split_ref(name)
        if not registry.has("feature_extractor", plain) or not hasattr(
                registry.get("feature_extractor", plain).factory, "weights"):
            raise
        raise Img2ImgError(f"{err}\nWith `img2img evaluate`, --feature-weights PATH names the file; "
                           "--extractor random_conv needs no weights (for comparing runs, not papers).") from None


def _distribution_scores(
    pred_files: list[Path],
    target_files: list[Path],
    metrics: list[str],
    extractor: nn.Module,
    channels: int,
    batch_size: int,
    device: str,
    kid_subset_size: int | None,
    resize_protocol: str,
    warnings: list[str],
) -> dict[str, Any]:
    from img2img.evaluation import distribution as dist

    n = min(len(pred_files), len(target_files))
    if n < 2:
        raise Img2ImgError(f"FID/KID need at least 2 images in each folder; the smaller one has {n}")
    if "kid" in metrics and kid_subset_size is not None and not 2 <= kid_subset_size <= n:
        raise Img2ImgError(f"KID subset size must be between 2 and the number of images ({n}), got {kid_subset_size}")
    extractor = extractor.to(device)
    size = dist.input_size(extractor)

    def images(files: list[Path]) -> Iterator[torch.Tensor]:
        from img2img.data import read_image, to_tensor

        for path in files:
            image = to_tensor(read_image(path, channels))
            yield dist.clean_resize(dist.as_rgb(image[None])[0], size) if resize_protocol == "clean" else image

    fake = dist.features(dist.batched(images(pred_files), batch_size), extractor, device)
    real = dist.features(dist.batched(images(target_files), batch_size), extractor, device)
    if "fid" in metrics:
        note = dist.fid_warning(len(real), len(fake), real.shape[1])
        if note:
            warnings.append(note)
    out: dict[str, Any] = dist.scores(real, fake, metrics, kid_subset_size=kid_subset_size)
    out.update(features=int(real.shape[1]), resize_protocol=resize_protocol)
    return out


# --------------------------------------------------------------------------------------------
# output


def to_jsonable(result: Any) -> Any:
    """Replace infinities by the strings "inf"/"-inf" and NaN by null, which JSON can hold."""
    if isinstance(result, dict):
        return {key: to_jsonable(value) for key, value in result.items()}
    if isinstance(result, (list, tuple)):
        return [to_jsonable(value) for value in result]
    if isinstance(result, float) and not math.isfinite(result):
        return None if math.isnan(result) else ("inf" if result > 0 else "-inf")
    return result


def to_json(result: dict[str, Any], indent: int | None = 2) -> str:
    """Strict JSON of an evaluation result; an infinite PSNR becomes the string "inf"."""
    return json.dumps(to_jsonable(result), indent=indent, allow_nan=False)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def render_table(result: dict[str, Any]):
    """A rich table of the summary: one row per metric, then the image counts."""
    from rich.table import Table

    summary = result["summary"]
    table = Table(title="Evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    labels = {"count": "images", "count_target": "target images", "kid_subset_size": "KID subset size",
              "extractor": "feature extractor", "features": "features per image", "resize_protocol": "resize protocol"}
    for key, value in summary.items():
        if key not in labels:
            table.add_row(key, format_value(value))
    for key, label in labels.items():
        if key in summary:
            table.add_row(label, str(summary[key]), style="dim")
    return table


def write_csv(result: dict[str, Any], path: Path) -> Path:
    """One row per image (paired metrics), then a row named "(summary)" with every summary value."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    per_image = result.get("per_image", [])
    summary = result["summary"]
    columns = ["name"]
    for key in [*(k for row in per_image for k in row), *summary]:
        if key not in columns:
            columns.append(key)
    with atomic.atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in per_image:
            writer.writerow(row)
        writer.writerow({"name": "(summary)", **summary})
    return path
