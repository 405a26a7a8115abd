"""img2img-template: the smallest complete img2img plugin, one generator. Copy it to start your own."""
from typing import Annotated

from pydantic import Field
from torch import nn

import img2img


def small_conv(in_channels: int, out_channels: int, *, width: Annotated[int, Field(ge=1)] = 8) -> nn.Module:
    """Small conv encoder-decoder: 3x3 conv blocks around one 2x downsampling, tanh output."""

    def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, padding_mode="reflect"), nn.InstanceNorm2d(cout), nn.ReLU()]

    net = nn.Sequential(*block(in_channels, width), *block(width, 2 * width, stride=2), *block(2 * width, 2 * width),
                        nn.Upsample(scale_factor=2, mode="nearest"), *block(2 * width, width),
                        nn.Conv2d(width, out_channels, 3, 1, 1, padding_mode="reflect"), nn.Tanh())
    net.size_multiple = 2  # height and width must be even; translate and export pad to it
    return net


@img2img.hookimpl
def register_generators(register):
    register("small_conv", small_conv)
