"""Image-quality metrics: paired (PSNR, SSIM, MAE) and distribution (FID, KID) scores of two folders.

Paired metrics compare each prediction with the target of the same relative path (extension ignored).
Distribution metrics compare the two folders as sets through a registered feature extractor
(``inception_v3`` by default: torchvision's ImageNet Inception v3, comparable between img2img
evaluations; ``pytorch_fid``: the TensorFlow FID network papers report, see docs/evaluation.md),
or the prediction folder with reference statistics (pytorch-fid's ``.npz``). The computation is
`img2img.evaluation.distribution`, shared with the validation during training; folder features, FID/KID
of folders and ``--save-stats`` statistics are in `img2img.evaluation.folder_stats`.

Values are on the [0, 1] data range. The PSNR of identical images is ``float("inf")``; :func:`to_json`
writes it as the string ``"inf"`` because JSON has no infinity.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from img2img import atomic
from img2img.errors import Img2ImgError, did_you_mean
from img2img.evaluation.folder_stats import _distribution_scores, _extractor, _reference_notes

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
    target_dir: Path | None,
    metrics: Sequence[str] = ("psnr", "ssim"),
    *,
    extractor: str | dict = "inception_v3",
    feature_extractor: nn.Module | None = None,
    feature_weights: Path | None = None,
    protocol: str | None = None,
    resize_protocol: str | None = None,
    ref_stats: Path | None = None,
    channels: int = 3,
    batch_size: int = 16,
    device: str = "cpu",
    kid_subset_size: int | None = None,
) -> dict[str, Any]:
    """Score the images in ``pred_dir`` against those in ``target_dir`` (or, for FID, against the
    reference statistics file `ref_stats`, pytorch-fid's ``.npz``).

    Returns ``{"summary": {metric: value, "count": n, ...}, "per_image": [{"name": ..., metric: ...}],
    "warnings": [...]}``; ``per_image`` holds the paired metrics only. FID/KID use the registered
    extractor `extractor` (a name or ``{name, **params}``; `feature_weights` is its ``weights`` file),
    or `feature_extractor`, any module mapping ``[B, 3, H, W]`` in [-1, 1] to ``[B, D]`` with an
    ``input_size``. `protocol` (`resize_protocol` is its older name) is one of
    `img2img.evaluation.distribution.PROTOCOLS`, by default the extractor's own; the summary records
    it with the extractor, its weights digest and both image counts. ``device`` is where features
    are computed (paired metrics are cheap and stay on the CPU).
    """
    from img2img.evaluation import distribution as dist

    pred_dir = Path(pred_dir)
    target_dir = Path(target_dir) if target_dir is not None else None
    names = _check_metric_names(metrics)
    protocol = protocol or resize_protocol
    if protocol is not None:
        dist.check_protocol(protocol)
    if (target_dir is None) == (ref_stats is None):
        raise Img2ImgError("give either a target folder or --ref-stats FILE.npz (reference statistics), not "
                           + ("both" if target_dir is not None else "neither"))
    if ref_stats is not None:
        cannot = [m for m in names if m != "fid"]
        if cannot:
            raise Img2ImgError(f"--ref-stats holds the mean and covariance of the reference features, which FID "
                               f"needs and {', '.join(cannot)} cannot use ({'KID needs the features themselves' if 'kid' in cannot else 'paired metrics need the images'}); "
                               "use --metrics fid, or give the reference folder instead")
    for folder, role in ((pred_dir, "prediction"), (target_dir, "target")):
        if folder is not None and not folder.is_dir():
            raise Img2ImgError(f"{role} folder {folder} does not exist or is not a folder")
    if batch_size < 1:
        raise Img2ImgError(f"batch size must be at least 1, got {batch_size}")
    if channels not in (1, 3, 4):
        raise Img2ImgError(f"channels {channels}: compare 1 (grey), 3 (RGB) or 4 (RGBA) channels")
    paired = [m for m in names if m in PAIRED]
    distribution = [m for m in names if m in DISTRIBUTION]

    reference = dist.load_stats(ref_stats) if ref_stats is not None else None
    net = None
    if distribution:  # find the weights before reading any image: a missing file is the likely failure
        net = feature_extractor if feature_extractor is not None else _extractor(extractor, feature_weights)

    from img2img.data import list_images

    pred_files = list_images(pred_dir)  # raises, naming the folder, when it holds no image
    target_files = list_images(target_dir) if target_dir is not None else []
    summary: dict[str, Any] = {}
    per_image: list[dict[str, Any]] = []
    warnings: list[str] = []

    if paired:
        assert target_dir is not None
        pairs = match_pairs(pred_dir, pred_files, target_dir, target_files)
        per_image = _score_pairs(pairs, paired, channels)
        for name in paired:
            summary[name] = float(np.mean([row[name] for row in per_image]))
    summary["count"] = len(pred_files)

    if distribution:
        assert net is not None
        label = dist.extractor_label(extractor) if feature_extractor is None else type(net).__name__
        info = dist.setup(net, label, protocol or dist.default_protocol(net))
        summary.update(_distribution_scores(pred_files, target_files, distribution, net, channels, batch_size,
                                            device, kid_subset_size, info["protocol"], warnings, reference,
                                            ref_stats))
        summary.update(info, features=summary.get("features", info["features"]))
        if reference is not None:
            summary["count_target"] = reference[2].get("count")
            summary["ref_stats"] = str(ref_stats)
            warnings.extend(_reference_notes(ref_stats, reference[2], info))
        else:
            summary["count_target"] = len(target_files)
    return {"summary": summary, "per_image": per_image, "warnings": warnings}


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
              "extractor": "feature extractor", "weights": "weights (sha256)", "protocol": "protocol",
              "features": "features per image", "ref_stats": "reference statistics"}
    for key, value in summary.items():
        if key not in labels:
            table.add_row(key, format_value(value))
    for key, label in labels.items():
        if key in summary:
            table.add_row(label, "unknown" if summary[key] is None else str(summary[key]), style="dim")
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
