"""FID and KID of two image sets through a feature extractor: the one implementation behind
``img2img evaluate`` and validation during training.

Features are computed on the given device in batches and kept on the CPU in float64; FID and KID
are then plain float64 numpy, so they agree with a direct scipy computation to round-off.

- FID (Heusel et al. 2017): ``|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^1/2)``, the trace of the
  square root taken as the sum of the square roots of the eigenvalues of ``S_r^1/2 S_f S_r^1/2``
  (symmetric, so ``eigh`` is exact where a general ``sqrtm`` is not).
- KID (Binkowski et al. 2018) as torch-fidelity and clean-fid compute it: the unbiased MMD^2
  estimate with the cubic polynomial kernel ``(x.y / D + 1)^3``, averaged over `subsets` random
  subsets of `subset_size` (default min(1000, both set sizes)) drawn without replacement from each
  set, the std over the subsets beside it. The subsets are torch-fidelity's: from
  ``numpy.random.RandomState(seed)`` (seed 2020, its default), the translated set's subset first,
  then the reference set's, so ``calculate_metrics(input1=PRED, input2=TARGET, kid=True)`` draws the
  same ones. When both sets are no larger than the subset size every subset is both whole sets, so
  one is computed (std 0).

Protocols (how an image reaches the network; clean-fid's names, Parmar et al. 2022):

- ``torch``: at its own size; the extractor resizes it on the device (its own resize:
  ``inception_v3`` and ``random_conv`` antialiased bilinear, ``pytorch_fid`` pytorch-fid's).
- ``legacy_pytorch``: pytorch-fid's. Bilinear to the extractor's input size without antialiasing
  (``F.interpolate``, ``align_corners=False``), inputs scaled as ``x / 127.5 - 1``.
- ``legacy_tensorflow``: the TensorFlow 1 FID code's, which clean-fid's and torch-fidelity's
  TensorFlow-compatible modes copy: TF1's ``resize_bilinear`` (source pixel ``dst * in / out``, no
  half-pixel offset), inputs scaled as ``(x - 128) / 128`` as in the TensorFlow graph.
- ``clean``: clean-fid's. Each 8-bit channel resized as a float image with PIL bicubic
  (antialiased), clipped to [0, 255], scaled as ``(x - 128) / 128``.

Each protocol but ``torch`` rounds images to 8 bits first, as the files the peers read hold them.
An extractor names the protocol its numbers belong to as ``default_protocol`` (``pytorch_fid``:
``legacy_pytorch``); without one it is ``torch``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from img2img.errors import Img2ImgError

PROTOCOLS = ("torch", "legacy_pytorch", "legacy_tensorflow", "clean")
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020  # torch-fidelity's default rng_seed
STATS_KEYS = ("extractor", "weights", "protocol", "features", "count")


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


def default_protocol(extractor: nn.Module) -> str:
    """The protocol an extractor's numbers belong to: its ``default_protocol``, else ``torch``."""
    protocol = getattr(extractor, "default_protocol", "torch")
    return protocol if protocol in PROTOCOLS else "torch"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise Img2ImgError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)} "
                           "(docs/evaluation.md, 'Protocols')")
    return protocol


def to_levels(image: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` in [-1, 1] -> float32 in [0, 255] on the 256 levels of an 8-bit file."""
    return ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()


def resize_levels(levels: torch.Tensor, protocol: str, size: int) -> torch.Tensor:
    """``[C, H, W]`` float values in [0, 255] resized to size x size as `protocol` does it."""
    if protocol == "clean":
        from PIL import Image

        channels = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
                    for c in levels.numpy()]
        return torch.from_numpy(np.clip(np.stack(channels), 0, 255).astype(np.float32))
    if protocol == "legacy_pytorch":
        out = F.interpolate(levels[None].float(), size=(size, size), mode="bilinear", align_corners=False)
        return out[0].clamp(0, 255)
    if protocol == "legacy_tensorflow":
        return tf1_bilinear(levels[None].float(), size)[0]
    raise Img2ImgError(f"protocol {protocol!r} does not resize before the extractor")


def tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1's ``resize_bilinear(align_corners=False)`` of ``[N, C, H, W]``: output pixel i
    samples the input at ``i * in / out`` (no half-pixel offset), the last row and column repeated."""
    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.arange(size, dtype=torch.float32) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo.float()

    y_lo, y_hi, dy = axis(x.shape[2])
    x_lo, x_hi, dx = axis(x.shape[3])
    top = x[:, :, y_lo][..., x_lo] + (x[:, :, y_lo][..., x_hi] - x[:, :, y_lo][..., x_lo]) * dx
    bottom = x[:, :, y_hi][..., x_lo] + (x[:, :, y_hi][..., x_hi] - x[:, :, y_hi][..., x_lo]) * dx
    return top + (bottom - top) * dy[:, None]


def prepare(image: torch.Tensor, protocol: str, size: int) -> torch.Tensor:
    """One ``[C, H, W]`` image in [-1, 1] as `protocol` hands it to an extractor of input `size`."""
    if protocol == "torch":
        return image
    levels = resize_levels(to_levels(as_rgb(image[None])[0]), protocol, size)
    return levels / 127.5 - 1 if protocol == "legacy_pytorch" else (levels - 128) / 128


def clean_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """clean-fid's resize of one ``[C, H, W]`` image in [-1, 1], returned on the same scale."""
    return resize_levels(to_levels(image), "clean", size) / 127.5 - 1


def extractor_label(ref: str | Mapping[str, Any]) -> str:
    """``pytorch_fid (dims=64)``: the name and parameters (the weights path aside: its digest is recorded)."""
    if isinstance(ref, str):
        return ref
    params = ", ".join(f"{k}={v}" for k, v in ref.items() if k not in ("name", "weights"))
    return f"{ref['name']} ({params})" if params else str(ref["name"])


def setup(extractor: nn.Module, label: str, protocol: str) -> dict[str, Any]:
    """What every FID/KID value records: extractor, weights digest, protocol and feature size."""
    digest = getattr(extractor, "weights_digest", None)
    if digest is None:
        digest = "unknown" if hasattr(getattr(extractor, "weights", None), "file") else "none"
    return {"extractor": label, "weights": str(digest), "protocol": protocol,
            "features": int(getattr(extractor, "num_features", 0)) or None}


def setup_text(info: Mapping[str, Any]) -> str:
    """``pytorch_fid, weights 6726825d, protocol legacy_pytorch, 50 vs 1000 images`` for one line."""
    parts = [str(info.get("extractor")), f"weights {info.get('weights')}", f"protocol {info.get('protocol')}"]
    if info.get("count") is not None and info.get("count_ref") is not None:
        parts.append(f"{info['count']} vs {info['count_ref']} images")
    return ", ".join(parts)


def setup_differences(a: Mapping[str, Any], b: Mapping[str, Any],
                      keys: tuple[str, ...] = ("extractor", "weights", "protocol", "features")) -> list[str]:
    """``["protocol clean vs legacy_pytorch", ...]``: what makes two FID/KID values incomparable."""
    return [f"{k} {a.get(k)} vs {b.get(k)}" for k in keys
            if a.get(k) is not None and b.get(k) is not None and str(a.get(k)) != str(b.get(k))]


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


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, N - 1 normalised, as numpy.cov) of ``[N, D]`` features."""
    feats = np.asarray(feats, np.float64)
    return feats.mean(0), np.atleast_2d(np.cov(feats, rowvar=False))


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two ``[N, D]`` feature sets (N >= 2 each)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    _check_features(real, fake, 2)
    return fid_from_stats(*statistics(real), *statistics(fake))


def fid_from_stats(mu_r: np.ndarray, s_r: np.ndarray, mu_f: np.ndarray, s_f: np.ndarray) -> float:
    """FID of two (mean, covariance) pairs; see the module docstring."""
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
        return mmd2(fake, real), 0.0, size  # every subset would be both whole sets
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(max(1, subsets)):
        f = fake[rng.choice(n_fake, size, replace=False)]
        r = real[rng.choice(n_real, size, replace=False)]
        values.append(mmd2(f, r))
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


# --------------------------------------------------------------------------------------------
# reference statistics files (pytorch-fid's .npz: mu, sigma)


def save_stats(path: Path, feats: np.ndarray, info: Mapping[str, Any]) -> Path:
    """Write pytorch-fid's ``.npz`` (``mu``, ``sigma``) of `feats`, plus how they were computed
    (``img2img_extractor``, ``img2img_weights``, ``img2img_protocol``, ``img2img_features``,
    ``img2img_count``) as plain strings that pytorch-fid ignores. Atomic: all or nothing."""
    from img2img import atomic

    path = Path(path)
    if path.suffix != ".npz":
        raise Img2ImgError(f"--save-stats {path}: the file name must end in .npz (pytorch-fid reads a path as "
                           "statistics only by that suffix)")
    mu, sigma = statistics(feats)
    meta = {f"img2img_{k}": np.array(str(info[k])) for k in STATS_KEYS if info.get(k) is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_write(path, "wb") as fh:
        np.savez_compressed(fh, mu=mu, sigma=sigma, **meta)
    return path


def load_stats(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(mu, sigma, info)`` from a pytorch-fid ``.npz``; `info` holds what img2img recorded (empty
    for a file written elsewhere, ``count`` an int)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise Img2ImgError(f"--ref-stats {path} does not exist; write one with `img2img evaluate FOLDER "
                           "--save-stats FILE.npz` (or pytorch-fid's --save-stats)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("mu", "sigma") if k not in f.files]
            if missing:
                raise Img2ImgError(f"--ref-stats {path} has no {' or '.join(missing)} array (it holds "
                                   f"{', '.join(f.files) or 'nothing'}); a pytorch-fid statistics file holds mu "
                                   "and sigma")
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
            info: dict[str, Any] = {k: str(f[f"img2img_{k}"]) for k in STATS_KEYS if f"img2img_{k}" in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise Img2ImgError(f"--ref-stats {path} is not a numpy .npz file ({type(exc).__name__}: {str(exc)[:120]})"
                           ) from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise Img2ImgError(f"--ref-stats {path}: mu must be [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    for key in ("count", "features"):
        if key in info:
            info[key] = int(info[key]) if info[key].isdigit() else None
    return mu, sigma, info
