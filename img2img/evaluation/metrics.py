"""Image-quality metrics: paired (PSNR, SSIM, MAE) and distribution (FID, KID) scores of two folders.

Paired metrics compare each prediction with the target of the same relative path (extension ignored).
Distribution metrics compare the two folders as sets through a registered feature extractor
(``inception_v3`` by default: torchvision's ImageNet Inception v3, comparable between img2img
evaluations; ``pytorch_fid``: the TensorFlow FID network papers report, see docs/evaluation.md),
or the prediction folder with reference statistics (pytorch-fid's ``.npz``). The computation is `img2img.evaluation.distribution`, shared with the
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


def folder_features(folder: Path, *, extractor: str | dict = "inception_v3", feature_weights: Path | None = None,
                    protocol: str | None = None, channels: int = 3, batch_size: int = 16,
                    device: str = "cpu") -> tuple[np.ndarray, dict[str, Any]]:
    """``[N, D]`` features of a folder's images and how they were computed (`dist.setup` + count)."""
    from img2img.data import list_images
    from img2img.evaluation import distribution as dist

    if protocol is not None:
        dist.check_protocol(protocol)
    folder = Path(folder)
    if not folder.is_dir():
        raise Img2ImgError(f"folder {folder} does not exist or is not a folder")
    net = _extractor(extractor, feature_weights).to(device)
    files = list_images(folder)
    if len(files) < 2:
        raise Img2ImgError(f"{folder} holds {len(files)} image; statistics need at least 2")
    info = dist.setup(net, dist.extractor_label(extractor), protocol or dist.default_protocol(net))
    feats = dist.features(dist.batched(_protocol_images(files, channels, info["protocol"], dist.input_size(net)),
                                       batch_size), net, device)
    return feats, {**info, "features": int(feats.shape[1]), "count": len(files)}


def save_folder_stats(folder: Path, out: Path, **options: Any) -> dict[str, Any]:
    """Write pytorch-fid's ``.npz`` (``mu``, ``sigma``) of a folder, recording how it was computed;
    returns that record with ``path``. `options` are `folder_features`'."""
    from img2img.evaluation import distribution as dist

    out, folder = Path(out), Path(folder)
    if out.resolve().is_relative_to(folder.resolve()):
        raise Img2ImgError(f"--save-stats {out} is inside the folder {folder}; img2img never writes into an input "
                           "folder. Write the statistics elsewhere")
    if out.suffix != ".npz":
        raise Img2ImgError(f"--save-stats {out}: the file name must end in .npz (pytorch-fid reads a path as "
                           "statistics only by that suffix)")
    feats, info = folder_features(folder, **options)
    dist.save_stats(out, feats, info)
    return {**info, "path": str(out)}


def _reference_notes(path: Path, recorded: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """Why FID against a statistics file may not be comparable: it says nothing, or something else."""
    from img2img.evaluation import distribution as dist

    if not recorded:
        return [f"{path} does not say how its statistics were computed (pytorch-fid's files hold only mu and "
                f"sigma): the FID is comparable only if they came from the same network and weights "
                f"({info['extractor']}, weights {info['weights']}) with the {info['protocol']} protocol"]
    differences = dist.setup_differences(recorded, info)
    if differences:
        return [f"{path} was computed with another setup ({'; '.join(differences)}): this FID is not comparable "
                "to one against the images themselves; recompute the statistics with the same --extractor and "
                "--protocol"]
    return []


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


def _protocol_images(files: list[Path], channels: int, protocol: str, size: int) -> Iterator[torch.Tensor]:
    from img2img.data import read_image, to_tensor
    from img2img.evaluation import distribution as dist

    for path in files:
        yield dist.prepare(to_tensor(read_image(path, channels)), protocol, size)


def _distribution_scores(
    pred_files: list[Path],
    target_files: list[Path],
    metrics: list[str],
    extractor: nn.Module,
    channels: int,
    batch_size: int,
    device: str,
    kid_subset_size: int | None,
    protocol: str,
    warnings: list[str],
    reference: tuple[np.ndarray, np.ndarray, dict[str, Any]] | None = None,
    ref_path: Path | None = None,
) -> dict[str, Any]:
    from img2img.evaluation import distribution as dist

    n = min(len(pred_files), len(target_files)) if reference is None else len(pred_files)
    if n < 2:
        raise Img2ImgError(f"FID/KID need at least 2 images in each folder; the smaller one has {n}")
    if "kid" in metrics and kid_subset_size is not None and not 2 <= kid_subset_size <= n:
        raise Img2ImgError(f"KID subset size must be between 2 and the number of images ({n}), got {kid_subset_size}")
    extractor = extractor.to(device)
    size = dist.input_size(extractor)

    fake = dist.features(dist.batched(_protocol_images(pred_files, channels, protocol, size), batch_size), extractor,
                         device)
    if reference is not None:
        mu_r, sigma_r, recorded = reference
        if len(mu_r) != fake.shape[1]:
            raise Img2ImgError(f"--ref-stats {ref_path} holds {len(mu_r)}-dimensional statistics but the extractor "
                               f"gives {fake.shape[1]} features; compute both with the same extractor (and dims)")
        note = dist.fid_warning(recorded.get("count") or len(mu_r) + 1, len(fake), len(mu_r))
        if note:
            warnings.append(note)
        return {"fid": dist.fid_from_stats(mu_r, sigma_r, *dist.statistics(fake)), "features": int(fake.shape[1])}
    real = dist.features(dist.batched(_protocol_images(target_files, channels, protocol, size), batch_size),
                         extractor, device)
    if "fid" in metrics:
        note = dist.fid_warning(len(real), len(fake), real.shape[1])
        if note:
            warnings.append(note)
    out: dict[str, Any] = dist.scores(real, fake, metrics, kid_subset_size=kid_subset_size)
    out.update(features=int(real.shape[1]))
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
