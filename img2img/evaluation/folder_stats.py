"""FID/KID of image folders: the feature extractor `img2img evaluate` builds, the features of a folder's
images, the scores of two folders (or of one against reference statistics) and pytorch-fid's ``.npz``
statistics of a folder (``--save-stats``). The computation is `img2img.evaluation.distribution`, shared
with the validation during training; `img2img.evaluation.metrics.evaluate_folders` scores through here.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from img2img.errors import Img2ImgError


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
