"""pix2pixHD's networks (Wang et al. 2018, NVIDIA/pix2pixHD ``models/networks.py``), written anew.

- ``GlobalGenerator``: 7x7 conv, ``n_downsampling`` stride-2 convs, residual blocks, as many
  transposed convs back up, 7x7 conv and tanh; reflection padding throughout.
- ``LocalEnhancer``: the global generator (without its last layers) at half resolution, refined by
  ``n_local_enhancers`` full-resolution branches whose features are added to the coarser output.
- ``MultiscaleDiscriminator``: ``num_d`` PatchGANs (4x4 convs, padding 2), the i-th judging the
  image average-pooled i times; returns one logits map per scale and, with ``features=True``, the
  activations after every block for the ``feature_matching`` loss.

Initialisation is pix2pixHD's ``weights_init``: convolution weights N(0, 0.02) (biases keep
PyTorch's default), batch-norm weights N(1, 0.02) and biases 0.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Norm = Literal["instance", "batch"]


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """pix2pixHD's ``get_norm_layer``: instance norm without affine parameters, or affine batch norm."""
    return nn.InstanceNorm2d(channels, affine=False) if kind == "instance" else nn.BatchNorm2d(channels, affine=True)


def init_weights(module: nn.Module) -> nn.Module:
    """pix2pixHD's ``weights_init``."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class ResnetBlock(nn.Module):
    """x + (reflect pad, 3x3 conv, norm, ReLU, reflect pad, 3x3 conv, norm)(x)."""

    def __init__(self, dim: int, norm: Norm) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), norm_layer(norm, dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), norm_layer(norm, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def global_layers(in_channels: int, out_channels: int, ngf: int, n_downsampling: int, n_blocks: int,
                  norm: Norm) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), norm_layer(norm, ngf), nn.ReLU(True)]
    for i in range(n_downsampling):
        mult = 2**i
        layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), norm_layer(norm, ngf * mult * 2),
                   nn.ReLU(True)]
    mult = 2**n_downsampling
    layers += [ResnetBlock(ngf * mult, norm) for _ in range(n_blocks)]
    for i in range(n_downsampling):
        mult = 2 ** (n_downsampling - i)
        layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                   norm_layer(norm, ngf * mult // 2), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
    return layers


class GlobalGenerator(nn.Module):
    """pix2pixHD's G1: an encoder-residual-decoder at one resolution."""

    def __init__(self, in_channels: int, out_channels: int, *, ngf: int = 64, n_downsampling: int = 4,
                 n_blocks: int = 9, norm: Norm = "instance") -> None:
        super().__init__()
        self.model = nn.Sequential(*global_layers(in_channels, out_channels, ngf, n_downsampling, n_blocks, norm))
        self.size_multiple = 2**n_downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(nn.Module):
    """pix2pixHD's G = {G1, G2}: the global generator on the input average-pooled
    ``n_local_enhancers`` times, each enhancer adding its own encoding of a finer input to the
    coarser result before its residual blocks and upsampling."""

    def __init__(self, in_channels: int, out_channels: int, *, ngf: int = 32, n_downsample_global: int = 4,
                 n_blocks_global: int = 9, n_local_enhancers: int = 1, n_blocks_local: int = 3,
                 norm: Norm = "instance") -> None:
        super().__init__()
        self.n_local_enhancers = n_local_enhancers
        ngf_global = ngf * 2**n_local_enhancers
        coarse = global_layers(in_channels, out_channels, ngf_global, n_downsample_global, n_blocks_global, norm)
        self.model = nn.Sequential(*coarse[:-3])  # without the last padding, conv and tanh
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for n in range(1, n_local_enhancers + 1):
            width = ngf * 2 ** (n_local_enhancers - n)
            self.down.append(nn.Sequential(
                nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7), norm_layer(norm, width), nn.ReLU(True),
                nn.Conv2d(width, width * 2, 3, stride=2, padding=1), norm_layer(norm, width * 2), nn.ReLU(True)))
            up: list[nn.Module] = [ResnetBlock(width * 2, norm) for _ in range(n_blocks_local)]
            up += [nn.ConvTranspose2d(width * 2, width, 3, stride=2, padding=1, output_padding=1),
                   norm_layer(norm, width), nn.ReLU(True)]
            if n == n_local_enhancers:
                up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
            self.up.append(nn.Sequential(*up))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.size_multiple = 2 ** (n_downsample_global + n_local_enhancers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n, (down, up) in enumerate(zip(self.down, self.up), start=1):
            out = up(down(pyramid[self.n_local_enhancers - n]) + out)
        return out


class NLayerDiscriminator(nn.Module):
    """pix2pixHD's PatchGAN: 4x4 convs with padding 2, widths doubling up to 512, kept as blocks so
    that the activation after each can be returned."""

    def __init__(self, in_channels: int, ndf: int, n_layers: int, norm: Norm) -> None:
        super().__init__()
        blocks = [nn.Sequential(nn.Conv2d(in_channels, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, True))]
        width = ndf
        for n in range(1, n_layers + 1):
            prev, width = width, min(width * 2, 512)
            stride = 2 if n < n_layers else 1
            blocks.append(nn.Sequential(nn.Conv2d(prev, width, 4, stride=stride, padding=2), norm_layer(norm, width),
                                        nn.LeakyReLU(0.2, True)))
        blocks.append(nn.Sequential(nn.Conv2d(width, 1, 4, stride=1, padding=2)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every block: n_layers + 1 activations, then the logits."""
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs; ``scales[i]`` judges the input average-pooled i times."""

    def __init__(self, in_channels: int, *, ndf: int = 64, n_layers: int = 3, num_d: int = 3,
                 norm: Norm = "instance") -> None:
        super().__init__()
        self.scales = nn.ModuleList(NLayerDiscriminator(in_channels, ndf, n_layers, norm) for _ in range(num_d))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor, features: bool = False):
        """A logits map per scale, finest first; with ``features=True`` ``(logits, features)``, the
        features a list per scale of the n_layers + 1 activations before the logits."""
        logits, found = [], []
        for i, scale in enumerate(self.scales):
            if i:
                x = self.downsample(x)
            outputs = scale(x)
            logits.append(outputs[-1])
            found.append(outputs[:-1])
        return (logits, found) if features else logits
