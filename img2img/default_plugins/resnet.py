"""ResNet generators (Johnson et al. 2016), the CycleGAN default: ``resnet_6blocks``, ``resnet_9blocks``.

Same layers as the reference repository's ``ResnetGenerator``: reflection-padded 7x7 stem, two
stride-2 downsamplings, residual blocks at 4x ngf channels, two 2x upsamplings, 7x7 head and tanh.
ReLUs work in place, as the reference's do: a training step writes one activation less per layer.
`ResnetGenerator.features` runs them out of place after a layer it returns, so a feature is what
its layer produced.

``antialias: true`` is the generator of CUT (Park et al. 2020) with its defaults
(``no_antialias=False``, ``no_antialias_up=False``), layer for layer: each downsampling is a
stride-1 conv, norm, ReLU and a fixed binomial blur with stride 2 (`BlurDownsample`), each
upsampling a fixed blur upsampling (`BlurUpsample`) followed by a 3x3 conv, norm and ReLU.
"""
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from img2img.default_plugins.layers import (
    DropoutP,
    Gain,
    Init,
    Norm,
    Padding,
    UpsampleMode,
    Width,
    init_weights,
    norm_layer,
    uses_bias,
)
from img2img.hookspecs import hookimpl

N_DOWNSAMPLING = 2


def _pad_conv3x3(in_ch: int, out_ch: int, padding: Padding, bias: bool) -> list[nn.Module]:
    """A size-preserving 3x3 convolution with reflection or zero padding."""
    if padding == "reflect":
        return [nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3, bias=bias)]
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)]


def binomial_filter(size: int) -> torch.Tensor:
    """The normalised 2-D binomial kernel ([1, 2, 1] x [1, 2, 1] / 16 for size 3)."""
    row = torch.tensor([float(math.comb(size - 1, k)) for k in range(size)])
    kernel = row[:, None] * row[None, :]
    return kernel / kernel.sum()


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 downsampling: reflection pad 1, then a fixed 3x3 binomial blur with stride 2
    per channel (Zhang 2019, as CUT's ``Downsample``); ``filt`` is a saved, untrained buffer."""

    def __init__(self, channels: int, filt_size: int = 3):
        super().__init__()
        self.channels = channels
        self.pad = nn.ReflectionPad2d([(filt_size - 1) // 2, filt_size // 2, (filt_size - 1) // 2, filt_size // 2])
        self.register_buffer("filt", binomial_filter(filt_size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.filt, stride=2, groups=self.channels)


class BlurUpsample(nn.Module):
    """Anti-aliased 2x upsampling: replication pad 1, a transposed 4x4 binomial blur with stride 2 per
    channel, trimmed to exactly twice the size (as CUT's ``Upsample``); ``filt`` is a saved buffer."""

    def __init__(self, channels: int, filt_size: int = 4):
        super().__init__()
        self.channels = channels
        self.odd = filt_size % 2 == 1
        self.pad_size = (filt_size - 1) // 2
        self.pad = nn.ReplicationPad2d(1)
        self.register_buffer("filt", (binomial_filter(filt_size) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose2d(self.pad(x), self.filt, stride=2, padding=1 + self.pad_size, groups=self.channels)
        y = y[:, :, 1:, 1:]
        return y if self.odd else y[:, :, :-1, :-1]


class ResnetBlock(nn.Module):
    """``x + conv-norm-relu-(dropout)-conv-norm(x)``."""

    def __init__(self, channels: int, norm: Norm, dropout: float, padding: Padding):
        super().__init__()
        bias = uses_bias(norm)
        layers = [*_pad_conv3x3(channels, channels, padding, bias), norm_layer(norm, channels), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [*_pad_conv3x3(channels, channels, padding, bias), norm_layer(norm, channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Encoder, residual blocks and decoder in one flat ``nn.Sequential`` (`model`).

    Indices of `model`, as used by `features`: 0 reflection pad of the input; 1 stem 7x7 conv;
    2 norm; 3 ReLU; 4 first stride-2 conv; 5 norm; 6 ReLU; 7 second stride-2 conv; 8 norm; 9 ReLU;
    10 .. 9+n_blocks the residual blocks (the CUT paper's layers 0, 4, 8, 12, 16 are 0, 4, 7, 10, 14).
    With `antialias` the indices are CUT's own: 4 first stride-1 conv; 5 norm; 6 ReLU; 7 blur
    downsampling; 8 second conv; 9 norm; 10 ReLU; 11 blur downsampling; 12 .. 11+n_blocks the
    residual blocks (the paper's layers are then 0, 4, 8, 12, 16 literally). `nce_layers` holds those
    five for either layout. Later indices are the decoder and are not valid feature layers.
    """

    size_multiple: int = 2**N_DOWNSAMPLING

    def __init__(self, in_channels: int, out_channels: int, *, n_blocks: int, ngf: int = 64,
                 norm: Norm = "instance", dropout: float = 0.0, padding: Padding = "reflect",
                 upsample: UpsampleMode = "transposed", antialias: bool = False):
        super().__init__()
        bias = uses_bias(norm)
        self.antialias = bool(antialias)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias),
                                   norm_layer(norm, ngf), nn.ReLU(inplace=True)]
        for i in range(N_DOWNSAMPLING):
            ch = ngf * 2**i
            if antialias:  # CUT: stride-1 conv, norm, ReLU, then blur and subsample
                layers += [nn.Conv2d(ch, ch * 2, 3, stride=1, padding=1, bias=bias), norm_layer(norm, ch * 2),
                           nn.ReLU(inplace=True), BlurDownsample(ch * 2)]
            else:
                layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=bias), norm_layer(norm, ch * 2),
                           nn.ReLU(inplace=True)]
        ch = ngf * 2**N_DOWNSAMPLING
        self.nce_layers = [0, 4, 8, 12, 16] if antialias else [0, 4, 7, 10, 14]
        layers += [ResnetBlock(ch, norm, dropout, padding) for _ in range(n_blocks)]
        self.encoder_layers = len(layers)
        for _ in range(N_DOWNSAMPLING):
            if antialias and upsample == "transposed":  # CUT: blur upsampling, then a 3x3 conv
                layers += [BlurUpsample(ch), nn.Conv2d(ch, ch // 2, 3, padding=1, bias=bias)]
            elif upsample == "transposed":
                layers.append(nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=bias))
            else:  # nearest-neighbour resize then conv: no checkerboard artifacts (Odena et al. 2016)
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), *_pad_conv3x3(ch, ch // 2, padding, bias)]
            layers += [norm_layer(norm, ch // 2), nn.ReLU(inplace=True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def features(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of `model[i]` for each ``i`` in `layers`, in that order; the decoder is not run."""
        wanted = set(layers)
        bad = sorted(i for i in wanted if not 0 <= i < self.encoder_layers)
        if bad:
            raise ValueError(f"feature layers {bad} are not encoder layers; valid: 0..{self.encoder_layers - 1}")
        found: dict[int, torch.Tensor] = {}
        h = x
        for i in range(max(wanted, default=-1) + 1):
            layer = self.model[i]
            if isinstance(layer, nn.ReLU) and any(h is kept for kept in found.values()):
                h = torch.relu(h)  # the in-place ReLU would overwrite a feature already kept
            else:
                h = layer(h)
            if i in wanted:
                found[i] = h
        return [found[i] for i in layers]


def _resnet(in_channels: int, out_channels: int, n_blocks: int, ngf: int, norm: Norm, dropout: float,
            padding: Padding, upsample: UpsampleMode, init: Init, init_gain: float,
            antialias: bool) -> ResnetGenerator:
    net = ResnetGenerator(in_channels, out_channels, n_blocks=n_blocks, ngf=ngf, norm=norm, dropout=dropout,
                          padding=padding, upsample=upsample, antialias=antialias)
    return init_weights(net, init, init_gain)


def resnet_9blocks(in_channels: int, out_channels: int, *, ngf: Width = 64, norm: Norm = "instance",
                   dropout: DropoutP = 0.0, padding: Padding = "reflect", upsample: UpsampleMode = "transposed",
                   init: Init = "normal", init_gain: Gain = 0.02, antialias: bool = False) -> nn.Module:
    """ResNet generator with 9 residual blocks (CycleGAN default, for 256 px images).

    ``padding`` applies inside the residual blocks and resize-convs, as the reference's
    ``padding_type``; ``init_gain`` is unused by ``kaiming``. ``antialias`` blurs before subsampling and
    after upsampling as CUT's generator does (with ``upsample: resize-conv`` only the downsampling).
    """
    return _resnet(in_channels, out_channels, 9, ngf, norm, dropout, padding, upsample, init, init_gain,
                   antialias)


def resnet_6blocks(in_channels: int, out_channels: int, *, ngf: Width = 64, norm: Norm = "instance",
                   dropout: DropoutP = 0.0, padding: Padding = "reflect", upsample: UpsampleMode = "transposed",
                   init: Init = "normal", init_gain: Gain = 0.02, antialias: bool = False) -> nn.Module:
    """ResNet generator with 6 residual blocks (lighter, for 128 px images).

    ``padding`` applies inside the residual blocks and resize-convs, as the reference's
    ``padding_type``; ``init_gain`` is unused by ``kaiming``. ``antialias`` blurs before subsampling and
    after upsampling as CUT's generator does (with ``upsample: resize-conv`` only the downsampling).
    """
    return _resnet(in_channels, out_channels, 6, ngf, norm, dropout, padding, upsample, init, init_gain,
                   antialias)


@hookimpl
def register_generators(register):
    register("resnet_9blocks", resnet_9blocks)
    register("resnet_6blocks", resnet_6blocks)
