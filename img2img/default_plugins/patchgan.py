"""Discriminators: the 70x70 PatchGAN (``patchgan``) and the 1x1 PixelGAN (``pixel``) of pix2pix.

Both return a map of raw logits, one per receptive field, rather than one value per image: a
PatchGAN judges local texture and leaves global structure to the L1 / cycle losses. ``patchgan``
also exposes its features (``forward(x, features=True)``) for the ``feature_matching`` loss.
"""
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from img2img.default_plugins.layers import Gain, Init, Norm, Width, init_weights, norm_layer, uses_bias
from img2img.hookspecs import hookimpl


class NLayerDiscriminator(nn.Sequential):
    """The reference's ``NLayerDiscriminator``: 4x4 convs (padding 1), in-place LeakyReLU(0.2).

    ``n_layers`` stride-2 convs (channels doubling up to 8x ndf), one stride-1 conv, then a
    1-channel conv. With ``n_layers=3`` each logit sees a 70x70 patch.
    """

    def __init__(self, in_channels: int, *, ndf: int = 64, n_layers: int = 3, norm: Norm = "instance"):
        bias = uses_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                       norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor, features: bool = False):
        """The logit map; with ``features=True`` also the activation after each LeakyReLU (n_layers + 1
        of them), for feature-matching losses: ``(logits, [f0, f1, ...])``."""
        if not features:
            return super().forward(x)
        found = []
        for layer in self:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                found.append(x)
        return x, found


class PixelDiscriminator(nn.Sequential):
    """The reference's ``PixelDiscriminator``: 1x1 convs, so each logit judges one pixel's colour."""

    def __init__(self, in_channels: int, *, ndf: int = 64, norm: Norm = "instance"):
        bias = uses_bias(norm)
        super().__init__(
            nn.Conv2d(in_channels, ndf, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 1, bias=bias), norm_layer(norm, ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, 1, bias=bias),
        )


def patchgan(in_channels: int, *, ndf: Width = 64, n_layers: Annotated[int, Field(ge=1)] = 3,
             norm: Norm = "instance", init: Init = "normal", init_gain: Gain = 0.02) -> nn.Module:
    """PatchGAN discriminator: a logit per 70x70 patch with n_layers=3 (CycleGAN, pix2pix).

    Height and width must be at least ``3 * 2**n_layers`` (24 px for 3 layers) for a non-empty
    logit map; ``init_gain`` is unused by ``kaiming``.
    """
    return init_weights(NLayerDiscriminator(in_channels, ndf=ndf, n_layers=n_layers, norm=norm), init, init_gain)


def pixel(in_channels: int, *, ndf: Width = 64, norm: Norm = "instance", init: Init = "normal",
          init_gain: Gain = 0.02) -> nn.Module:
    """PixelGAN discriminator: a logit per pixel (1x1 convs); judges colour, not structure.

    ``init_gain`` is unused by ``kaiming``.
    """
    return init_weights(PixelDiscriminator(in_channels, ndf=ndf, norm=norm), init, init_gain)


@hookimpl
def register_discriminators(register):
    register("patchgan", patchgan)
    register("pixel", pixel)
