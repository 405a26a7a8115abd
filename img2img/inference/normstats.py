"""Which statistics batch-norm layers normalise with at test time (``--norm-stats``).

``running`` (the default) is eval mode: the averages learnt in training, deterministic, what an
ONNX deployment computes. ``batch`` reproduces the reference repository's ``test.py`` without
``--eval``: its networks stay in train mode, so batch norm uses the statistics of the batch being
translated, and the reference tests with one image per batch. Here each image is normalised with its
own statistics (an instance norm with the batch norm's scale and shift), so the result is the
reference's whatever ``--batch-size`` is, tiles can share one image's statistics like instance
norm's (``--tile-norm global``), and the ONNX graph computes exactly that.

The reference's ``test.py`` also leaves dropout active, which draws a new random mask for every
image: that noise cannot be reproduced and is not (dropout stays off in both modes).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from img2img.errors import Img2ImgError

NORM_STATS = ("running", "batch")


def check_norm_stats(mode: str) -> None:
    if mode not in NORM_STATS:
        raise Img2ImgError(f"--norm-stats {mode!r}: use running (eval mode, the default) or batch (each image's own "
                           "statistics, as the reference's test.py)")


def count_batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _as_image_statistics(bn: nn.modules.batchnorm._BatchNorm) -> nn.InstanceNorm2d:
    norm = nn.InstanceNorm2d(bn.num_features, eps=bn.eps, affine=bn.affine, track_running_stats=False)
    if bn.affine:
        norm.weight = nn.Parameter(bn.weight.detach().clone(), requires_grad=False)
        norm.bias = nn.Parameter(bn.bias.detach().clone(), requires_grad=False)
    return norm


def _replace(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, _as_image_statistics(child))
        else:
            _replace(child)


def with_norm_stats(generator: nn.Module, mode: str) -> nn.Module:
    """`generator` itself for ``running``; for ``batch`` an eval-mode copy whose batch norms use each image's
    own statistics (dropout stays off)."""
    check_norm_stats(mode)
    if mode == "running" or count_batch_norms(generator) == 0:
        return generator
    converted = copy.deepcopy(generator)
    _replace(converted)
    return converted.eval()


def norm_stats_note(generator: nn.Module, mode: str) -> str | None:
    """A note for the user when ``--norm-stats batch`` has nothing to act on."""
    if mode == "batch" and count_batch_norms(generator) == 0:
        return "--norm-stats batch changes nothing: this generator has no batch-norm layers"
    return None


def apply_norm_stats(loaded: Any, mode: str | None) -> list[str]:
    """Switch a `LoadedGenerator`'s module to `mode` (None: running) in place; returns notes for the user."""
    mode = mode or "running"
    check_norm_stats(mode)
    note = norm_stats_note(loaded.module, mode)
    loaded.module = with_norm_stats(loaded.module, mode)
    return [note] if note else []


def check_onnx_norm_stats(metadata: dict[str, str], mode: str | None, path: Path) -> None:
    """An exported graph computes the statistics it was exported with; asking for others is an error."""
    if mode is None:
        return
    check_norm_stats(mode)
    exported = metadata.get("norm_stats", "running")
    if mode != exported:
        raise Img2ImgError(f"{path} was exported with --norm-stats {exported}; the statistics are part of the "
                           f"graph. Export again with `img2img export RUN --norm-stats {mode}`, or leave out "
                           "--norm-stats.")
