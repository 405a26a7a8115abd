"""Tiled translation of large images. Padding to a generator's size multiple is in `padding`; its
names stay importable from here (the public names of this module, and of `img2img.tiling`, since 0.1).

Large images are translated in overlapping tiles blended with weights that ramp smoothly (raised
cosine) across each overlap and are 1 elsewhere, normalised by their sum, so no seam shows. Instance
norm makes each tile normalise by its own statistics, which changes its colours: `InstanceNormStats`
records the statistics of a downscaled whole image and substitutes them while the tiles run. That
helps where the content changes across the image (a photo) and hurts where the downscaling loses the
detail that the statistics are made of (noise, fine textures); `choose_tile_norm` measures which of the
two errs less on the image at hand.
"""
from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from img2img.errors import Img2ImgError
from img2img.inference.padding import SizeAdapter, minimum_size, pad_to_multiple, padded_size, safe_size

TILE_NORMS = ("auto", "global", "local")
"""Instance-norm statistics of tiles: chosen per image, the downscaled whole image's, or each tile's own."""
AUTO_TILE = 512
AUTO_OVERLAP = 64
DEFAULT_OVERLAP = 32

__all__ = [
    "AUTO_OVERLAP",
    "AUTO_TILE",
    "DEFAULT_OVERLAP",
    "InstanceNormStats",
    "SizeAdapter",
    "blend_weights",
    "check_tiling",
    "choose_tile_norm",
    "effective_tile",
    "minimum_size",
    "pad_to_multiple",
    "padded_size",
    "ramp",
    "safe_size",
    "tile_plan",
    "tile_spans",
    "translate_tiled",
    "uses_instance_statistics",
]


# ---------------------------------------------------------------------------------------------
# Tiles and blending weights


def effective_tile(tile: int, multiple: int) -> int:
    """The tile size actually used: rounded down to the generator's multiple (at least one multiple)."""
    return max(multiple, tile // multiple * multiple)


def tile_spans(size: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """(start, end) of the tiles along one axis.

    Starts are multiples of `multiple` (or of the largest halving of it that still lets neighbours
    share `overlap` pixels), so tiles see the pixel phase the whole image does and strided layers
    agree in the overlaps. The fewest tiles that keep every overlap >= `overlap` are spread evenly
    (wider overlaps blend more softly at no extra cost). The last tile ends at the edge and may be a
    little longer than `tile` (it is padded like any input).
    """
    if size <= tile:
        return [(0, size)]
    align = max(1, multiple)
    while align > 1 and align > tile - overlap:
        align //= 2
    stride = max(align, (tile - overlap) // align * align)
    count = -(-(size - tile) // stride) + 1  # the fewest tiles whose overlaps are all >= overlap
    starts = sorted({round(i * (size - tile) / (count - 1)) // align * align for i in range(count)})
    last = starts[-1]
    return [(s, s + tile) if s != last else (s, size) for s in starts]


def ramp(length: int, before: int, after: int) -> np.ndarray:
    """1-D weights of one tile: a raised-cosine rise over `before`, a fall over `after`, 1 between.

    Two neighbours that share k pixels, one falling over them and the other rising, sum to 1 there.
    """
    w = np.ones(length, dtype=np.float64)
    if before > 0:
        t = (np.arange(before) + 0.5) / before
        w[:before] *= 0.5 - 0.5 * np.cos(np.pi * t)
    if after > 0:
        t = (np.arange(after) + 0.5) / after
        w[length - after:] *= 0.5 + 0.5 * np.cos(np.pi * t)
    return w


def _axis_weights(spans: list[tuple[int, int]]) -> list[np.ndarray]:
    out = []
    for i, (start, end) in enumerate(spans):
        before = spans[i - 1][1] - start if i > 0 else 0
        after = end - spans[i + 1][0] if i + 1 < len(spans) else 0
        out.append(ramp(end - start, max(0, before), max(0, after)))
    return out


def blend_weights(height: int, width: int, tile: int, overlap: int, multiple: int = 1
                  ) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    """((top, bottom, left, right), weights) of every tile, raster order; weights are separable."""
    rows, cols = tile_spans(height, tile, overlap, multiple), tile_spans(width, tile, overlap, multiple)
    wy, wx = _axis_weights(rows), _axis_weights(cols)
    for (top, bottom), ry in zip(rows, wy):
        for (left, right), rx in zip(cols, wx):
            yield (top, bottom, left, right), np.outer(ry, rx).astype(np.float32)


def translate_tiled(image: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], *, tile: int,
                    overlap: int, multiple: int = 1, batch_size: int = 1) -> torch.Tensor:
    """Translate a 1xCxHxW image in overlapping tiles and blend them; returns 1xC'xHxW (CPU float32).

    `run` maps an NxCxhxw batch to NxC'xhxw at the same size (padding to the multiple is its job).
    Tiles of equal shape are run `batch_size` at a time.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected a 1xCxHxW image, got {tuple(image.shape)}")
    if not 0 <= overlap < tile:
        raise Img2ImgError(f"the tile overlap ({overlap} px) must be smaller than the tile ({tile} px)")
    h, w = image.shape[-2:]
    tiles = list(blend_weights(h, w, tile, overlap, multiple))
    out: torch.Tensor | None = None
    total = torch.zeros(1, 1, h, w)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, ((top, bottom, left, right), _) in enumerate(tiles):
        by_shape.setdefault((bottom - top, right - left), []).append(i)
    for indices in by_shape.values():
        for k in range(0, len(indices), batch_size):
            chunk = indices[k:k + batch_size]
            batch = torch.cat([image[:, :, t:b, l:r] for (t, b, l, r), _ in (tiles[i] for i in chunk)])
            result = run(batch).float().cpu()
            if out is None:
                out = torch.zeros(1, result.shape[1], h, w)
            for j, i in enumerate(chunk):
                (t, b, l, r), weight = tiles[i]
                wt = torch.from_numpy(weight)
                out[0, :, t:b, l:r] += result[j] * wt
                total[0, 0, t:b, l:r] += wt
    assert out is not None
    return out / total


# ---------------------------------------------------------------------------------------------
# Global instance-norm statistics for tiles


def uses_instance_statistics(module: nn.Module) -> bool:
    """An InstanceNorm that normalises by the statistics of its input (not running ones)."""
    return isinstance(module, nn.modules.instancenorm._InstanceNorm) and not (
        module.track_running_stats and not module.training and module.running_mean is not None)


class InstanceNormStats:
    """Per-channel mean and variance each instance-norm layer saw on a (downscaled) whole image.

    ``with stats.applied(generator): ...`` makes those layers normalise by these statistics instead
    of their input's, so every tile is normalised as the whole image would be.
    """

    def __init__(self, stats: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]):
        self.stats = stats

    def __len__(self) -> int:
        return len(self.stats)

    @classmethod
    def capture(cls, generator: nn.Module, image: torch.Tensor, *, size: int, multiple: int,
                run: Callable[[torch.Tensor], torch.Tensor] | None = None) -> InstanceNormStats:
        """Run `generator` once on `image` (1xCxHxW) resized so its longer side is about `size`.

        `run` calls the generator (device, autocast); by default it is called on the padded image.
        """
        layers = [m for m in generator.modules() if uses_instance_statistics(m)]
        if not layers:
            return cls({})
        h, w = image.shape[-2:]
        scale = min(1.0, size / max(h, w))
        if scale < 1.0:
            small = (max(1, round(h * scale)), max(1, round(w * scale)))
            image = F.interpolate(image, size=small, mode="bilinear", align_corners=False, antialias=True)
        image = pad_to_multiple(image, multiple)
        found: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in layers}

        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            dims = tuple(range(2, x.ndim))
            found[module].append((x.mean(dims), x.var(dims, unbiased=False)))

        handles = [m.register_forward_pre_hook(record) for m in layers]
        try:
            with torch.inference_mode():
                (run or generator)(image)
        finally:
            for handle in handles:
                handle.remove()
        return cls({m: s for m, s in found.items() if s})

    @contextlib.contextmanager
    def applied(self, generator: nn.Module) -> Iterator[None]:
        """Swap each recorded layer's forward for one that uses the recorded statistics; restored after."""
        patched = []
        for module, calls in self.stats.items():
            if "forward" in module.__dict__:
                raise RuntimeError(f"{type(module).__name__} already has an instance-level forward")
            module.forward = types.MethodType(_fixed_statistics_forward(calls), module)
            patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward


def _fixed_statistics_forward(calls: list[tuple[torch.Tensor, torch.Tensor]]):
    """A forward replaying the recorded (mean, var) of each call, in call order (shared layers)."""
    counter = [0]

    def forward(self: nn.modules.instancenorm._InstanceNorm, x: torch.Tensor) -> torch.Tensor:
        mean, var = calls[counter[0] % len(calls)]
        counter[0] += 1
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        mean = mean.to(x.device).reshape(shape)
        inv = torch.rsqrt(var.to(x.device) + self.eps).reshape(shape)
        y = (x.float() - mean) * inv
        if self.affine:
            y = y * self.weight.float().reshape(shape) + self.bias.float().reshape(shape)
        return y.to(x.dtype)

    return forward


def check_tiling(tile: int | None, overlap: int | None, max_pixels: int | None, tile_norm: str) -> None:
    """Reject options that cannot work, before any model is loaded."""
    if tile is not None and tile < 16:
        raise Img2ImgError(f"--tile {tile}: tiles must be at least 16 px")
    if overlap is not None and overlap < 0:
        raise Img2ImgError(f"--overlap {overlap}: must be >= 0")
    if tile is not None and overlap is not None and overlap >= tile:
        raise Img2ImgError(f"--overlap {overlap} must be smaller than --tile {tile} (try --overlap {tile // 4})")
    if max_pixels is not None and max_pixels < 1:
        raise Img2ImgError(f"--max-pixels {max_pixels}: must be a positive pixel count")
    if tile_norm not in TILE_NORMS:
        raise Img2ImgError(f"--tile-norm {tile_norm!r}: use 'auto' (chosen per image), 'global' (statistics of the "
                           "whole image, downscaled) or 'local' (each tile its own)")


def tile_plan(height: int, width: int, *, tile: int | None, overlap: int | None, max_pixels: int | None,
              multiple: int) -> tuple[int, int] | None:
    """(tile, overlap) when an image of this size is to be tiled, else None.

    An explicit tile applies when the image exceeds it; `max_pixels` tiles anything larger (tile 512,
    overlap 64 unless given).
    """
    if tile is not None and (height > tile or width > tile):
        size = effective_tile(tile, multiple)
        lap = DEFAULT_OVERLAP if overlap is None else overlap
    elif max_pixels is not None and height * width > max_pixels:
        size = effective_tile(tile if tile is not None else AUTO_TILE, multiple)
        lap = AUTO_OVERLAP if overlap is None else overlap
    else:
        return None
    return size, (lap if lap < size else size // 2)


# ---------------------------------------------------------------------------------------------
# Choosing global or local statistics for an image


class _Reached(Exception):
    pass


def _first_norm_input(generator: nn.Module, image: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]
                      ) -> torch.Tensor | None:
    """The input of the first instance-norm layer the generator calls on `image` (the rest is not run)."""
    layers = [m for m in generator.modules() if uses_instance_statistics(m)]
    seen: list[torch.Tensor] = []

    def stop(module: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach().float())
        raise _Reached

    handles = [m.register_forward_pre_hook(stop) for m in layers]
    try:
        with torch.inference_mode():
            run(image)
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen[0] if seen else None


def _deviation(mean: torch.Tensor, var: torch.Tensor, true_mean: torch.Tensor, true_var: torch.Tensor) -> float:
    """How far (mean, var) normalise from the true statistics: mean shift in standard deviations plus
    the log of the scale error, averaged over channels."""
    true_var = true_var.clamp_min(1e-12)
    shift = (mean - true_mean).abs() / true_var.sqrt()
    scale = 0.5 * (var.clamp_min(1e-12) / true_var).log().abs()
    return float((shift + scale).mean())


def choose_tile_norm(generator: nn.Module, image: torch.Tensor, *, tile: int, overlap: int, multiple: int,
                     stats_size: int, run: Callable[[torch.Tensor], torch.Tensor] | None = None) -> str:
    """``"global"`` or ``"local"``: whichever normalises the first instance-norm layer closer to the
    statistics of the whole image at full resolution.

    Those exact statistics are summed over the tiles (the layer's input depends on the pixels alone);
    "global" is judged by the statistics of the image downscaled to `stats_size`, "local" by each
    tile's own, weighted by area. Costs one pass of the first layer over the image.
    """
    run = run or generator
    if not any(uses_instance_statistics(m) for m in generator.modules()):
        return "global"  # nothing to choose: no layer normalises by its input's statistics
    h, w = image.shape[-2:]
    scale = min(1.0, stats_size / max(h, w))
    small = image
    if scale < 1.0:
        small = F.interpolate(image, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                              align_corners=False, antialias=True)
    first = _first_norm_input(generator, pad_to_multiple(small, multiple), run)
    if first is None:
        return "global"
    dims = tuple(range(2, first.ndim))
    downscaled = (first.mean(dims)[0], first.var(dims, unbiased=False)[0])
    count, total, squares, tiles = 0, 0.0, 0.0, []
    for t, b in tile_spans(h, tile, overlap, multiple):
        for left, right in tile_spans(w, tile, overlap, multiple):
            x = _first_norm_input(generator, pad_to_multiple(image[:, :, t:b, left:right], multiple), run)
            x = x[:, :, : x.shape[2] * (b - t) // padded_size(b - t, multiple),
                  : x.shape[3] * (right - left) // padded_size(right - left, multiple)]
            n = x.shape[2] * x.shape[3]
            tiles.append((x.mean(dims)[0], x.var(dims, unbiased=False)[0], n))
            count, total, squares = count + n, total + x.sum(dims)[0], squares + (x * x).sum(dims)[0]
    mean = total / count
    var = squares / count - mean * mean
    local = sum(_deviation(m, v, mean, var) * n for m, v, n in tiles) / count
    return "global" if _deviation(*downscaled, mean, var) <= local else "local"
