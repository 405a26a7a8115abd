"""Padding to a generator's size multiple, and to the smallest size it runs on.

A generator that downsamples k times needs heights and widths divisible by 2**k. `pad_to_multiple`
pads (reflection, continued by replication where the padding is longer than the image, as it is
for a 20 px image and a U-Net's 256) and the caller crops back, so any size comes out at its own
size; `SizeAdapter` is that as a module, the form the ONNX graph carries. It also pads up to the
smallest size the generator runs on (`minimum_size`: a resnet's instance norm and reflection padding
fail on a 1 x 1 image even padded to its multiple of 4), so images of one pixel translate too.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SizeAdapter", "minimum_size", "pad_to_multiple", "padded_size", "safe_size"]


def padded_size(size: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= size.

    Only non-negative operands: ONNX integer division truncates, so ``-(-a // b)`` would export wrong.
    """
    return (size + multiple - 1) // multiple * multiple


def _pad_index(size, target, device: torch.device) -> torch.Tensor:
    """Source rows for a padded axis: 0..size-1, then mirrored (reflect), then the last mirrored row.

    Written with shape arithmetic only, so the exported ONNX graph keeps dynamic height and width.
    """
    last = size - 1
    index = torch.arange(target, device=device)
    return (last - (last - index).abs()).clamp(min=0)


def pad_to_multiple(x: torch.Tensor, multiple: int, minimum: int = 1) -> torch.Tensor:
    """Pad NCHW at the bottom and right to multiples of `multiple`, and to at least `minimum` on each side
    (reflect, then replicate)."""
    if multiple <= 1 and minimum <= 1:
        return x
    h, w = x.shape[-2], x.shape[-1]
    hp, wp = padded_size(h, multiple), padded_size(w, multiple)
    if minimum > 1:  # torch.sym_max keeps the exported graph's height and width dynamic
        hp, wp = torch.sym_max(hp, minimum), torch.sym_max(wp, minimum)
    x = x.index_select(2, _pad_index(h, hp, x.device))
    return x.index_select(3, _pad_index(w, wp, x.device))


def safe_size(multiple: int) -> int:
    """A side every generator with this size multiple is assumed to run on without probing: two
    multiples (the bottleneck is then at least 2 x 2), and at least 16 px."""
    return max(2 * multiple, 16)


def minimum_size(generator: nn.Module, multiple: int, like: torch.Tensor) -> int:
    """The smallest square side, a multiple of `multiple`, that `generator` runs on.

    Instance norm needs more than one value per channel and reflection padding needs a pad smaller
    than the side, so a 1 x 1 image padded to a resnet's multiple of 4 still fails inside it; the side
    is found by running the generator on blank images of growing size (in eval mode, so no batch-norm
    statistics change). `like` gives the channels, device and dtype.
    """
    multiple = max(1, int(multiple))
    side = multiple
    training = generator.training
    generator.eval()
    try:
        while True:
            blank = torch.zeros(1, like.shape[1], side, side, device=like.device, dtype=like.dtype)
            try:
                with torch.no_grad():
                    generator(blank)
                return side
            except (RuntimeError, ValueError):
                if side >= safe_size(multiple):
                    raise  # not a size problem: the generator fails on an ordinary size too
                side *= 2
    finally:
        generator.train(training)


class SizeAdapter(nn.Module):
    """Pad to the generator's multiple (and minimum size), run it, crop back: any height and width in,
    the same out, down to 1 x 1.

    `min_size` is the smallest side the generator runs on; left out, it is found (`minimum_size`) the
    first time an image smaller than `safe_size` fails in the generator. An exported graph carries it
    as a constant.
    """

    def __init__(self, generator: nn.Module, multiple: int, min_size: int | None = None):
        super().__init__()
        self.generator = generator
        self.multiple = int(multiple)
        self.min_size = min_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2], image.shape[-1]
        small = min(padded_size(h, self.multiple), padded_size(w, self.multiple)) < safe_size(self.multiple)
        if self.min_size is not None or not small:
            return self.generator(pad_to_multiple(image, self.multiple, self.min_size or 1))[:, :, :h, :w]
        try:  # most generators run on any multiple: no probe unless this one does not
            return self.generator(pad_to_multiple(image, self.multiple))[:, :, :h, :w]
        except (RuntimeError, ValueError):
            self.min_size = minimum_size(self.generator, self.multiple, image)
        return self.generator(pad_to_multiple(image, self.multiple, self.min_size))[:, :, :h, :w]
