"""FID and KID of two image sets through a feature extractor: the one implementation behind
``img2img evaluate`` and validation during training.

Features are computed on the given device in batches and kept on the CPU in float64; FID and KID
are then plain float64 numpy, so they agree with a direct scipy computation to round-off.

- FID (Heusel et al. 2017): ``|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^1/2)``, the trace of the
  square root taken as the sum of the square roots of the eigenvalues of ``S_r^1/2 S_f S_r^1/2``
  (symmetric, so ``eigh`` is exact where a general ``sqrtm`` is not).
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel ``(x.y / D + 1)^3``, averaged
  over `subsets` random subsets of `subset_size` from each set (drawn without replacement by
  ``numpy.random.default_rng(seed).choice``, real set first, then the fake set; a set no larger
  than the subset size is used whole). Its spread is the population std over the subsets.

Resize protocols: ``torch`` hands the images to the extractor at their own size and it resizes
them on the device (antialiased bilinear); ``clean`` is clean-fid's (Parmar et al. 2022): each
8-bit image is resized to the extractor's input size with PIL bicubic, channel by channel in
float, before it reaches the extractor.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from img2img.errors import Img2ImgError

PROTOCOLS = ("torch", "clean")
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 0


# --------------------------------------------------------------------------------------------
# extractors and images


def build_extractor(ref: str | Mapping[str, Any], *, weights: Any = None) -> nn.Module:
    """A registered feature extractor from a name or ``{name, **params}``; `weights` sets its file."""
    from img2img.registry import get_registry, split_ref

    name, params = split_ref(ref)
    registry = get_registry()
    component = registry.get("feature_extractor", name)  # unknown name: Img2ImgError with a suggestion
    if weights is not None:
        if "weights" not in component.params.model_fields:
            raise Img2ImgError(f"the feature extractor '{name}' reads no weights file, so a weights path does "
                               "not apply to it (drop --feature-weights)")
        params["weights"] = weights
    net = registry.build("feature_extractor", {"name": name, **params})
    input_size(net, name)
    return net


def input_size(extractor: nn.Module, name: str | None = None) -> int:
    size = getattr(extractor, "input_size", None)
    if not isinstance(size, int) or size < 1:
        label = f"'{name}'" if name else type(extractor).__name__
        raise Img2ImgError(f"feature extractor {label} has no integer `input_size` attribute (the square size it "
                           "resizes to); see register_feature_extractors in img2img/hookspecs.py")
    return size


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` in [-1, 1] with 1, 3 or 4 channels -> 3 (grey repeated, RGBA over white)."""
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] == 4:
        alpha = (images[:, 3:4] + 1) / 2
        return images[:, :3] * alpha + (1 - alpha)
    return images


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 256 levels an 8-bit file holds (what translate writes)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def clean_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """clean-fid's resize of one ``[C, H, W]`` image in [-1, 1]: to 8 bits, then PIL bicubic to
    size x size on each channel as a float image, clipped to [0, 255]; returned in [-1, 1]."""
    from PIL import Image

    levels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().numpy()
    channels = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
                for c in levels]
    out = np.clip(np.stack(channels), 0, 255)
    return torch.from_numpy(out.astype(np.float32)) / 127.5 - 1


def batched(images: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Stack consecutive ``[C, H, W]`` images of one size; a size change starts a new batch."""
    batch: list[torch.Tensor] = []
    for image in images:
        if batch and (len(batch) == batch_size or batch[0].shape != image.shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.stack(batch)


def features(batches: Iterable[torch.Tensor], extractor: nn.Module, device: torch.device | str) -> np.ndarray:
    """``[N, D]`` float64 features of ``[B, C, H, W]`` batches in [-1, 1], computed on `device` in fp32."""
    device = torch.device(device)
    chunks = []
    was_training = extractor.training
    extractor.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for batch in batches:
                batch = as_rgb(batch.to(device, torch.float32))
                out = extractor(batch)
                if out.dim() != 2 or out.shape[0] != batch.shape[0]:
                    raise Img2ImgError(f"the feature extractor must return [batch, features], got {tuple(out.shape)}")
                chunks.append(out.detach().to("cpu", torch.float64).numpy())
    finally:
        extractor.train(was_training)
    if not chunks:
        raise Img2ImgError("no images to compute features of")
    return np.concatenate(chunks)


# --------------------------------------------------------------------------------------------
# the two distances


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two ``[N, D]`` feature sets (N >= 2 each)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    _check_features(real, fake, 2)
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r = np.atleast_2d(np.cov(real, rowvar=False))
    s_f = np.atleast_2d(np.cov(fake, rowvar=False))
    w, v = np.linalg.eigh(s_r)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root @ s_f @ root
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu_r - mu_f
    value = float(diff @ diff + np.trace(s_r) + np.trace(s_f) - 2 * tr_covmean)
    return max(value, 0.0)  # round-off can leave a tiny negative for equal sets


def mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two feature sets with the cubic polynomial kernel ``(x.y / D + 1)^3``."""
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                 - 2 * k_xy.mean())


def kid(real: np.ndarray, fake: np.ndarray, *, subsets: int = KID_SUBSETS, subset_size: int | None = None,
        seed: int = KID_SEED) -> tuple[float, float, int]:
    """KID as (mean, std over subsets, subset size); see the module docstring for the sampling."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    _check_features(real, fake, 2)
    n_real, n_fake = len(real), len(fake)
    size = min(KID_SUBSET_SIZE, n_real, n_fake) if subset_size is None else int(subset_size)
    if not 2 <= size <= min(n_real, n_fake):
        raise Img2ImgError(f"KID subset size must be between 2 and the number of images ({min(n_real, n_fake)}), "
                           f"got {size}")
    if size == n_real == n_fake:
        subsets = 1  # every subset would be both whole sets
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(max(1, subsets)):
        r = real if size == n_real else real[rng.choice(n_real, size, replace=False)]
        f = fake if size == n_fake else fake[rng.choice(n_fake, size, replace=False)]
        values.append(mmd2(r, f))
    return float(np.mean(values)), float(np.std(values)), size


def _check_features(real: np.ndarray, fake: np.ndarray, minimum: int) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise Img2ImgError(f"feature sets must be [N, D] with the same D; got {real.shape} and {fake.shape}")
    n = min(len(real), len(fake))
    if n < minimum:
        raise Img2ImgError(f"FID/KID need at least {minimum} images in each set; the smaller one has {n}")


def fid_warning(n_real: int, n_fake: int, dims: int) -> str | None:
    """A note when a set is too small for a stable FID (its covariance has rank < D), else None."""
    n = min(n_real, n_fake)
    if n > dims:
        return None
    return (f"FID on {n} images with {dims}-dimensional features is not stable: the covariance needs more than "
            f"{dims} images per set, and below that FID is biased upwards and depends on the set size. "
            "Compare KID instead (--metrics kid; train.val_metric: kid), which is unbiased at any size.")


def scores(real: np.ndarray, fake: np.ndarray, metrics: Iterable[str], *,
           kid_subset_size: int | None = None, kid_subsets: int = KID_SUBSETS) -> dict[str, float]:
    """``fid``, ``kid`` (+ ``kid_std``, ``kid_subset_size``) as asked, from two feature sets."""
    out: dict[str, float] = {}
    metrics = list(metrics)
    if "fid" in metrics:
        out["fid"] = fid(real, fake)
    if "kid" in metrics:
        mean, std, size = kid(real, fake, subsets=kid_subsets, subset_size=kid_subset_size)
        out.update(kid=mean, kid_std=std, kid_subset_size=size)
    return out
