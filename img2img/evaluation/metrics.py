"""Image-quality metrics: paired (PSNR, SSIM, MAE) and distribution (FID, KID) scores of two folders.

Paired metrics compare each prediction with the target of the same relative path (extension ignored).
Distribution metrics compare the two folders as sets through a feature extractor: torchvision's
Inception v3 (2048-d pool features) by default, or any ``nn.Module`` passed from Python. Scores use the
torchvision ImageNet Inception weights, so they are comparable between img2img evaluations but not to
papers that used the TensorFlow FID network.

Values are on the [0, 1] data range. The PSNR of identical images is ``float("inf")``; :func:`to_json`
writes it as the string ``"inf"`` because JSON has no infinity.
"""
from __future__ import annotations

import csv
import difflib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from img2img.errors import Img2ImgError

PAIRED = ("psnr", "ssim", "mae")
DISTRIBUTION = ("fid", "kid")

INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
INCEPTION_URL = f"https://download.pytorch.org/models/{INCEPTION_FILE}"

_MIN_SSIM_SIDE = 6  # torchmetrics' 11-tap Gaussian window pads by 5 pixels with reflection
_KID_SUBSETS = 100
_KID_SEED = 0


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
    feature_extractor: nn.Module | None = None,
    feature_weights: Path | None = None,
    channels: int = 3,
    batch_size: int = 16,
    device: str = "cpu",
    kid_subset_size: int | None = None,
) -> dict[str, Any]:
    """Score the images in ``pred_dir`` against those in ``target_dir``.

    Returns ``{"summary": {metric: value, "count": n, ...}, "per_image": [{"name": ..., metric: ...}]}``;
    ``per_image`` holds the paired metrics only. ``feature_extractor`` maps ``[B, 3, H, W]`` in [0, 1] to
    ``[B, D]`` and replaces Inception for FID/KID; ``device`` is where features are computed (paired
    metrics are cheap and stay on the CPU).
    """
    pred_dir, target_dir = Path(pred_dir), Path(target_dir)
    names = _check_metric_names(metrics)
    for folder, role in ((pred_dir, "prediction"), (target_dir, "target")):
        if not folder.is_dir():
            raise Img2ImgError(f"{role} folder {folder} does not exist or is not a folder")
    if batch_size < 1:
        raise Img2ImgError(f"batch size must be at least 1, got {batch_size}")
    paired = [m for m in names if m in PAIRED]
    distribution = [m for m in names if m in DISTRIBUTION]

    extractor = None
    if distribution:  # find the weights before reading any image: a missing file is the likely failure
        extractor = feature_extractor if feature_extractor is not None else inception_extractor(feature_weights)

    from img2img.data import list_images

    pred_files = list_images(pred_dir)  # raises, naming the folder, when it holds no image
    target_files = list_images(target_dir)
    summary: dict[str, Any] = {}
    per_image: list[dict[str, Any]] = []

    if paired:
        pairs = match_pairs(pred_dir, pred_files, target_dir, target_files)
        per_image = _score_pairs(pairs, paired, channels)
        for name in paired:
            summary[name] = float(np.mean([row[name] for row in per_image]))
    summary["count"] = len(pred_files)

    if distribution:
        assert extractor is not None
        summary.update(
            _distribution_scores(
                pred_files, target_files, distribution, extractor, channels, batch_size, device, kid_subset_size
            )
        )
        summary["count_target"] = len(target_files)
    return {"summary": summary, "per_image": per_image}


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
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
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
# distribution scores


def inception_extractor(weights: Path | None = None) -> nn.Module:
    """torchvision Inception v3 pool features (2048-d) from a local state_dict; never downloads."""
    path = Path(weights) if weights is not None else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        given = f"--feature-weights {path} does not exist" if weights is not None else f"{path} does not exist"
        raise Img2ImgError(
            f"FID/KID need Inception v3 weights, and {given}.\n"
            f"On a machine with internet, download {INCEPTION_URL}\n"
            f"and put it at {Path(torch.hub.get_dir()) / 'checkpoints' / INCEPTION_FILE} "
            "(the torch hub cache, under $TORCH_HOME),\n"
            "or pass its path with --feature-weights. img2img never downloads weights."
        )
    from torchvision.models import inception_v3

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
        net.load_state_dict(state)
    except Exception as err:  # a wrong or truncated file: name it, whatever torch says
        raise Img2ImgError(
            f"{path} is not a torchvision Inception v3 state_dict ({type(err).__name__}: {err}). "
            f"Get the right file from {INCEPTION_URL}"
        ) from None
    return InceptionFeatures(net)


class InceptionFeatures(nn.Module):
    """Resize to 299, normalise as torchvision's ImageNet weights expect, return the 2048-d pool features."""

    num_features = 2048

    def __init__(self, net: nn.Module):
        super().__init__()
        net.fc = nn.Identity()  # the logits layer is dropped; its input is the pool3 feature vector
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # batch norm and dropout stay in inference mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)


class _GivenFeatures(nn.Module):
    """Hands precomputed features to torchmetrics: each folder passes the extractor once for FID and KID."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _distribution_scores(
    pred_files: list[Path],
    target_files: list[Path],
    metrics: list[str],
    extractor: nn.Module,
    channels: int,
    batch_size: int,
    device: str,
    kid_subset_size: int | None,
) -> dict[str, float]:
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(pred_files), len(target_files))
    if n < 2:
        raise Img2ImgError(f"FID/KID need at least 2 images in each folder; the smaller one has {n}")
    subset = min(50, n) if kid_subset_size is None else kid_subset_size
    if "kid" in metrics and not 2 <= subset <= n:
        raise Img2ImgError(f"KID subset size must be between 2 and the number of images ({n}), got {subset}")

    was_training = extractor.training
    extractor = extractor.to(device).eval()
    try:
        fake = _features(pred_files, extractor, channels, batch_size, device)
        real = _features(target_files, extractor, channels, batch_size, device)
    finally:
        extractor.train(was_training)
    if fake.shape[1] != real.shape[1]:
        raise Img2ImgError(f"the feature extractor gave {fake.shape[1]} and {real.shape[1]} features")
    given = _GivenFeatures(real.shape[1])

    out: dict[str, float] = {}
    if "fid" in metrics:
        fid = FrechetInceptionDistance(feature=given)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        out["fid"] = max(float(fid.compute()), 0.0)  # round-off can leave a tiny negative for equal sets
    if "kid" in metrics:
        import warnings

        with warnings.catch_warnings():  # torchmetrics warns that KID keeps features in memory: it is how KID works
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            # one subset is all there is when it takes every image
            subsets = 1 if subset == len(pred_files) == len(target_files) else _KID_SUBSETS
            kid = KernelInceptionDistance(feature=given, subsets=subsets, subset_size=subset)
        kid.update(real, real=True)
        kid.update(fake, real=False)
        with torch.random.fork_rng(devices=[]):  # reproducible subsets, caller's RNG untouched
            torch.manual_seed(_KID_SEED)
            mean, std = kid.compute()
        out["kid"] = float(mean)
        out["kid_std"] = float(std)
        out["kid_subset_size"] = subset
    return out


@torch.no_grad()
def _features(files: list[Path], extractor: nn.Module, channels: int, batch_size: int, device: str) -> torch.Tensor:
    """Features in float64 (torchmetrics' KID keeps the extractor's dtype; float32 loses digits there)."""
    chunks = []
    for batch in _batches(files, channels, batch_size):
        batch = batch.to(device)
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        feats = extractor(batch)
        if feats.dim() != 2 or feats.shape[0] != batch.shape[0]:
            raise Img2ImgError(f"the feature extractor must return [batch, features], got {tuple(feats.shape)}")
        chunks.append(feats.detach().to("cpu", torch.float64))
    return torch.cat(chunks)


def _batches(files: list[Path], channels: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Stack consecutive images of one size; a size change starts a new batch."""
    from img2img.data import read_image

    batch: list[torch.Tensor] = []
    for path in files:
        image = _to_tensor(read_image(path, channels))
        if batch and (len(batch) == batch_size or batch[0].shape != image.shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.stack(batch)


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
    counts = ("count", "count_target", "kid_subset_size")
    for key, value in summary.items():
        if key not in counts:
            table.add_row(key, format_value(value))
    for key in counts:
        if key in summary:
            label = {"count": "images", "count_target": "target images", "kid_subset_size": "KID subset size"}[key]
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
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in per_image:
            writer.writerow(row)
        writer.writerow({"name": "(summary)", **summary})
    return path
