"""StarGAN's networks, as the official code (yunjey/stargan, model.py) builds them.

Two changes make them work at any image size: instance norm keeps no running statistics (each image
is normalised by its own, in training and translation alike), and the domain classifier averages a
3x3 convolution's map over the image instead of a convolution as large as the final feature map.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.InstanceNorm2d(channels, affine=True), nn.ReLU(True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x):
        return x + self.main(x)


class StarGANGenerator(nn.Module):
    """7x7 conv, two stride-2 downsamplings, `repeat_num` residual blocks, two transposed-conv
    upsamplings, 7x7 conv and tanh. Its input is the image with the domain code as extra channels."""

    size_multiple = 4

    def __init__(self, in_channels: int, out_channels: int, conv_dim: int = 64, repeat_num: int = 6):
        super().__init__()
        layers = [nn.Conv2d(in_channels, conv_dim, 7, 1, 3, bias=False), nn.InstanceNorm2d(conv_dim, affine=True),
                  nn.ReLU(True)]
        width = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.InstanceNorm2d(width * 2, affine=True),
                       nn.ReLU(True)]
            width *= 2
        layers += [ResidualBlock(width) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.InstanceNorm2d(width // 2, affine=True), nn.ReLU(True)]
            width //= 2
        layers += [nn.Conv2d(width, out_channels, 7, 1, 3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x)


class StarGANDiscriminator(nn.Module):
    """PatchGAN of `repeat_num` stride-2 4x4 convs (LeakyReLU 0.01) with two heads: real/fake logits
    per patch (``src``) and the domain's class logits (``cls``, [N, num_domains]).

    ``forward`` returns ``(src, cls)``; ``src(x)`` the patch logits alone (for gradient penalties
    and health signals, which judge real/fake only)."""

    def __init__(self, in_channels: int, num_domains: int, conv_dim: int = 64, repeat_num: int = 6):
        super().__init__()
        layers = [nn.Conv2d(in_channels, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
        width = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            width *= 2
        self.main = nn.Sequential(*layers)
        self.conv_src = nn.Conv2d(width, 1, 3, 1, 1, bias=False)
        self.conv_cls = nn.Conv2d(width, num_domains, 3, 1, 1, bias=False)

    def forward(self, x):
        h = self.main(x)
        return self.conv_src(h), self.conv_cls(h).mean(dim=(2, 3))

    def src(self, x):
        return self.conv_src(self.main(x))


class DomainConditioned(nn.Module):
    """The translator of one direction: the generator with the target domain's one-hot code baked in
    (a buffer, not saved: it follows from the direction), so an exported graph takes the image alone."""

    def __init__(self, generator: nn.Module, target: int, num_domains: int):
        super().__init__()
        self.generator = generator
        code = torch.zeros(1, num_domains, 1, 1)
        code[0, target] = 1.0
        self.register_buffer("code", code, persistent=False)
        self.size_multiple = int(getattr(generator, "size_multiple", 1) or 1)

    def forward(self, x):
        code = self.code.to(x.dtype).expand(x.shape[0], -1, x.shape[2], x.shape[3])
        return self.generator(torch.cat([x, code], dim=1))


def condition(images: torch.Tensor, labels: torch.Tensor, num_domains: int) -> torch.Tensor:
    """``images`` with the one-hot code of each image's `labels` as extra channels (the official
    generator input: ``cat([x, c.view(N, C, 1, 1).repeat(1, 1, H, W)], 1)``)."""
    code = torch.nn.functional.one_hot(labels, num_domains).to(images.dtype)
    return torch.cat([images, code[:, :, None, None].expand(-1, -1, *images.shape[2:])], dim=1)


def stargan_generator(in_channels: int, out_channels: int, *, conv_dim: Annotated[int, Field(ge=1)] = 64,
                      repeat_num: Annotated[int, Field(ge=0)] = 6) -> nn.Module:
    """StarGAN's generator (in_channels = image channels + number of domains)."""
    return StarGANGenerator(in_channels, out_channels, conv_dim, repeat_num)


def stargan_discriminator(in_channels: int, *, num_domains: Annotated[int, Field(ge=2)] = 2,
                          conv_dim: Annotated[int, Field(ge=1)] = 64,
                          repeat_num: Annotated[int, Field(ge=1)] = 6) -> nn.Module:
    """StarGAN's discriminator with its auxiliary domain classifier; the stargan task sets
    `num_domains` to the pipeline's number of domains."""
    return StarGANDiscriminator(in_channels, num_domains, conv_dim, repeat_num)
