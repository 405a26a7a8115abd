"""Generators with the module structure and attribute names of the reference repositories, for tests.

The CycleGAN/pix2pix repository (``ResnetGenerator`` with ``ResnetBlock.conv_block``; the recursive
``UnetGenerator`` of ``UnetSkipConnectionBlock.model``) and CUT (its ``ResnetGenerator`` with
``Downsample``/``Upsample`` blur layers holding a ``filt`` buffer) are rebuilt here layer for layer,
so their ``state_dict()`` has exactly the keys those repositories' ``latest_net_G*.pth`` files have.
Nothing here is img2img code: the import is tested against an independent implementation.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def norm_layer_for(norm: str):
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm == "none":  # no normalisation: identity layers, and convolutions without biases
        return lambda channels: nn.Identity()
    raise ValueError(norm)


def _uses_bias(norm_layer) -> bool:
    return getattr(norm_layer, "func", None) == nn.InstanceNorm2d


class ResnetBlock(nn.Module):
    def __init__(self, dim, norm_layer, use_dropout, use_bias):
        super().__init__()
        block = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias), norm_layer(dim),
                 nn.ReLU(True)]
        if use_dropout:
            block += [nn.Dropout(0.5)]
        block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x):
        return x + self.conv_block(x)


def _binomial(size: int) -> torch.Tensor:
    a = {3: np.array([1.0, 2.0, 1.0]), 4: np.array([1.0, 3.0, 3.0, 1.0])}[size]
    filt = torch.Tensor(a[:, None] * a[None, :])
    return filt / torch.sum(filt)


class Downsample(nn.Module):
    """CUT's anti-aliased downsampling (reflect pad, 3x3 binomial blur, stride 2)."""

    def __init__(self, channels, filt_size=3, stride=2):
        super().__init__()
        self.stride = stride
        pad = [int(1.0 * (filt_size - 1) / 2), int(np.ceil(1.0 * (filt_size - 1) / 2))] * 2
        self.register_buffer("filt", _binomial(filt_size)[None, None, :, :].repeat((channels, 1, 1, 1)))
        self.pad = nn.ReflectionPad2d(pad)

    def forward(self, inp):
        return F.conv2d(self.pad(inp), self.filt, stride=self.stride, groups=inp.shape[1])


class Upsample(nn.Module):
    """CUT's anti-aliased upsampling (replicate pad, transposed 4x4 binomial blur, stride 2)."""

    def __init__(self, channels, filt_size=4, stride=2):
        super().__init__()
        self.filt_odd = np.mod(filt_size, 2) == 1
        self.pad_size = int((filt_size - 1) / 2)
        self.stride = stride
        self.register_buffer("filt", (_binomial(filt_size) * stride**2)[None, None, :, :].repeat((channels, 1, 1, 1)))
        self.pad = nn.ReplicationPad2d([1, 1, 1, 1])

    def forward(self, inp):
        out = F.conv_transpose2d(self.pad(inp), self.filt, stride=self.stride, padding=1 + self.pad_size,
                                 groups=inp.shape[1])[:, :, 1:, 1:]
        return out if self.filt_odd else out[:, :, :-1, :-1]


class ResnetGenerator(nn.Module):
    """The reference's ResNet generator; ``antialias=True`` is CUT's (no_antialias=False, no_antialias_up=False)."""

    def __init__(self, input_nc, output_nc, ngf=64, norm="instance", use_dropout=False, n_blocks=9, antialias=False):
        super().__init__()
        norm_layer = norm_layer_for(norm)
        use_bias = _uses_bias(norm_layer)
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
                 norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            if antialias:
                model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=1, padding=1, bias=use_bias),
                          norm_layer(ngf * mult * 2), nn.ReLU(True), Downsample(ngf * mult * 2)]
            else:
                model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                          norm_layer(ngf * mult * 2), nn.ReLU(True)]
        for _ in range(n_blocks):
            model += [ResnetBlock(ngf * 4, norm_layer, use_dropout, use_bias)]
        for i in range(2):
            mult = 2 ** (2 - i)
            if antialias:
                model += [Upsample(ngf * mult),
                          nn.Conv2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=1, padding=1, bias=use_bias),
                          norm_layer(int(ngf * mult / 2)), nn.ReLU(True)]
            else:
                model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2, padding=1,
                                             output_padding=1, bias=use_bias),
                          norm_layer(int(ngf * mult / 2)), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x, layers=(), encode_only=False):
        """CUT's forward: with `layers` and `encode_only`, the outputs of those layers of `model` (PatchNCE)."""
        if not layers:
            return self.model(x)
        feats = []
        for layer_id, layer in enumerate(self.model):
            x = layer(x)
            if layer_id in layers:
                feats.append(x)
            if layer_id == layers[-1] and encode_only:
                return feats
        return x, feats


class UnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm_layer=None, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = _uses_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model += [nn.Dropout(0.5)]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """The reference's recursive U-Net (``num_downs`` 7 is unet_128, 8 is unet_256)."""

    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm="batch", use_dropout=False):
        super().__init__()
        norm_layer = norm_layer_for(norm)
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer,
                                            use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm_layer=norm_layer)

    def forward(self, x):
        return self.model(x)


def randomise(net: nn.Module, seed: int, gain: float = 1.5) -> nn.Module:
    """Weights and batch-norm statistics far from their initial values, so every layer matters.

    Convolution weights have variance `gain` / fan-in: 1.5 makes every layer count, well below 1
    gives the smoother function of a trained generator."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith(("filt", "num_batches_tracked")):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 1.5 + 0.25)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2)
            elif tensor.dim() == 1:  # norm weights and biases, conv biases
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (gain / fan_in) ** 0.5)
    return net


def stale_instance_norm_buffers(net: nn.Module, state: dict, prefix: str = "") -> dict:
    """What PyTorch 0.4 wrote for affine-free instance norm: running_mean, running_var, num_batches_tracked."""
    out = dict(state)
    for name, module in net.named_modules():
        if isinstance(module, nn.InstanceNorm2d):
            c = module.num_features
            out[f"{prefix}{name}.running_mean"] = torch.zeros(c)
            out[f"{prefix}{name}.running_var"] = torch.ones(c)
            out[f"{prefix}{name}.num_batches_tracked"] = torch.tensor(0)
    return out
