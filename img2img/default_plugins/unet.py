"""U-Net generators with skip connections (Ronneberger et al. 2015), the pix2pix default.

``unet_256`` downsamples 8 times (256 px to 1x1 at the bottleneck), ``unet_128`` 7 times. The
layers are those of the reference repository's recursive ``UnetGenerator``, unrolled into a list
of down blocks and a list of up blocks so that `UnetGenerator.features` can stop at the encoder:

- down block 0: 4x4 stride-2 conv; blocks 1 .. n-2: conv, norm; block n-1 (innermost): conv only.
  Each but the innermost ends with LeakyReLU(0.2), and that activation is also the skip tensor,
  exactly what the reference concatenates (its in-place LeakyReLU rewrites the skip input).
- up blocks mirror them: ReLU, 2x upsampling, norm (dropout in the ``ngf*8`` blocks between the
  innermost and the 4th level, as pix2pix), the outermost ending in tanh instead of a norm.
"""
from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from img2img.default_plugins.layers import (
    DropoutP,
    Gain,
    Init,
    Norm,
    UpsampleMode,
    Width,
    init_weights,
    norm_layer,
    uses_bias,
)
from img2img.hookspecs import hookimpl


def _up(in_ch: int, out_ch: int, upsample: UpsampleMode, bias: bool) -> list[nn.Module]:
    """Double the height and width: 4x4 transposed conv, or nearest resize then 3x3 conv."""
    if upsample == "transposed":
        return [nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=bias)]
    return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)]


class UnetGenerator(nn.Module):
    """U-Net: `down[i]` halves the size, `up[i]` doubles it and sees the skip from `down[i-1]`."""

    def __init__(self, in_channels: int, out_channels: int, *, num_downs: int, ngf: int = 64,
                 norm: Norm = "batch", dropout: float = 0.5, upsample: UpsampleMode = "transposed"):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"a U-Net needs at least 5 downsamplings, got {num_downs}")
        self.size_multiple: int = 2**num_downs
        bias = uses_bias(norm)
        # (outer, inner) channels per level, outermost first, as the reference nests its blocks.
        widths = [(out_channels, ngf), (ngf, ngf * 2), (ngf * 2, ngf * 4), (ngf * 4, ngf * 8)]
        widths += [(ngf * 8, ngf * 8)] * (num_downs - 4)
        innermost = num_downs - 1
        down, up = [], []
        for level, (outer, inner) in enumerate(widths):
            source = in_channels if level == 0 else outer
            conv = nn.Conv2d(source, inner, 4, stride=2, padding=1, bias=bias)
            if level == 0:
                down.append(nn.Sequential(conv, nn.LeakyReLU(0.2)))
                up.append(nn.Sequential(nn.ReLU(), *_up(inner * 2, outer, upsample, True), nn.Tanh()))
            elif level == innermost:
                down.append(nn.Sequential(conv))
                up.append(nn.Sequential(nn.ReLU(), *_up(inner, outer, upsample, bias), norm_layer(norm, outer)))
            else:
                down.append(nn.Sequential(conv, norm_layer(norm, inner), nn.LeakyReLU(0.2)))
                block = [nn.ReLU(), *_up(inner * 2, outer, upsample, bias), norm_layer(norm, outer)]
                if dropout > 0 and 4 <= level:
                    block.append(nn.Dropout(dropout))
                up.append(nn.Sequential(*block))
        self.down = nn.ModuleList(down)
        self.up = nn.ModuleList(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[-1](skips.pop())
        for level in range(len(self.up) - 2, -1, -1):
            x = self.up[level](torch.cat([skips[level], x], dim=1))
        return x

    def features(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of `down[i]` for each ``i`` in `layers` (0 = first), in that order."""
        wanted = set(layers)
        bad = sorted(i for i in wanted if not 0 <= i < len(self.down))
        if bad:
            raise ValueError(f"feature layers {bad} are not down blocks; valid: 0..{len(self.down) - 1}")
        found: dict[int, torch.Tensor] = {}
        for i in range(max(wanted, default=-1) + 1):
            x = self.down[i](x)
            if i in wanted:
                found[i] = x
        return [found[i] for i in layers]


def unet_256(in_channels: int, out_channels: int, *, ngf: Width = 64, norm: Norm = "batch",
             dropout: DropoutP = 0.5, upsample: UpsampleMode = "transposed", init: Init = "normal",
             init_gain: Gain = 0.02) -> nn.Module:
    """U-Net with 8 downsamplings (pix2pix default); height and width must be multiples of 256.

    ``dropout`` is the probability in the three innermost-but-one decoder blocks (0 turns it off);
    ``init_gain`` is unused by ``kaiming``.
    """
    net = UnetGenerator(in_channels, out_channels, num_downs=8, ngf=ngf, norm=norm, dropout=dropout,
                        upsample=upsample)
    return init_weights(net, init, init_gain)


def unet_128(in_channels: int, out_channels: int, *, ngf: Width = 64, norm: Norm = "batch",
             dropout: DropoutP = 0.5, upsample: UpsampleMode = "transposed", init: Init = "normal",
             init_gain: Gain = 0.02) -> nn.Module:
    """U-Net with 7 downsamplings; height and width must be multiples of 128.

    ``dropout`` is the probability in the two innermost-but-one decoder blocks (0 turns it off);
    ``init_gain`` is unused by ``kaiming``.
    """
    net = UnetGenerator(in_channels, out_channels, num_downs=7, ngf=ngf, norm=norm, dropout=dropout,
                        upsample=upsample)
    return init_weights(net, init, init_gain)


def unet(in_channels: int, out_channels: int, *, num_downs: Annotated[int, Field(ge=5, le=10)] = 6,
         ngf: Width = 64, norm: Norm = "batch", dropout: DropoutP = 0.5, upsample: UpsampleMode = "transposed",
         init: Init = "normal", init_gain: Gain = 0.02) -> nn.Module:
    """U-Net with `num_downs` downsamplings; height and width must be multiples of 2**num_downs.

    ``unet_128`` and ``unet_256`` are this with 7 and 8; fewer suit small images (5 for 32 px).
    """
    net = UnetGenerator(in_channels, out_channels, num_downs=num_downs, ngf=ngf, norm=norm, dropout=dropout,
                        upsample=upsample)
    return init_weights(net, init, init_gain)


@hookimpl
def register_generators(register):
    register("unet_256", unet_256)
    register("unet_128", unet_128)
    register("unet", unet)
