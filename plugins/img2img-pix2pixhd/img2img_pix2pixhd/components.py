"""pix2pixHD's components as img2img factories: their keyword arguments are their YAML parameters."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, FilePath
from torch import nn

from img2img_pix2pixhd.networks import GlobalGenerator, LocalEnhancer, MultiscaleDiscriminator, Norm, init_weights
from img2img_pix2pixhd.vgg import VGGLoss

__all__ = ["Blocks", "Depth", "Width", "multiscale", "pix2pixhd_global", "pix2pixhd_local", "vgg19_perceptual"]

Width = Annotated[int, Field(ge=1, le=1024)]
Depth = Annotated[int, Field(ge=0, le=8)]
"""A number of stride-2 stages."""
Blocks = Annotated[int, Field(ge=0, le=64)]
"""A number of residual blocks."""


def pix2pixhd_global(in_channels: int, out_channels: int, *, ngf: Width = 64, n_downsampling: Depth = 4,
                     n_blocks: Blocks = 9, norm: Norm = "instance") -> nn.Module:
    """pix2pixHD's global generator G1: residual blocks between n_downsampling stride-2 stages.

    Height and width are padded to a multiple of 2**n_downsampling (16 by default).
    """
    return init_weights(GlobalGenerator(in_channels, out_channels, ngf=ngf, n_downsampling=n_downsampling,
                                        n_blocks=n_blocks, norm=norm))


def pix2pixhd_local(in_channels: int, out_channels: int, *, ngf: Width = 32,
                    n_downsample_global: Depth = 4, n_blocks_global: Blocks = 9,
                    n_local_enhancers: Annotated[int, Field(ge=1, le=3)] = 1, n_blocks_local: Blocks = 3,
                    norm: Norm = "instance") -> nn.Module:
    """pix2pixHD's coarse-to-fine generator: G1 at half resolution inside local enhancer(s) G2.

    G1 has ngf * 2**n_local_enhancers channels; sizes are multiples of 2**(n_downsample_global +
    n_local_enhancers) (32 by default).
    """
    return init_weights(LocalEnhancer(in_channels, out_channels, ngf=ngf, n_downsample_global=n_downsample_global,
                                      n_blocks_global=n_blocks_global, n_local_enhancers=n_local_enhancers,
                                      n_blocks_local=n_blocks_local, norm=norm))


def multiscale(in_channels: int, *, ndf: Width = 64, n_layers: Annotated[int, Field(ge=1, le=6)] = 3,
               num_d: Annotated[int, Field(ge=1, le=5)] = 3, norm: Norm = "instance") -> nn.Module:
    """pix2pixHD's multi-scale discriminator: num_d PatchGANs on the image halved 0..num_d-1 times.

    Returns a list of logits maps (one per scale) and exposes its features for feature_matching.
    """
    return init_weights(MultiscaleDiscriminator(in_channels, ndf=ndf, n_layers=n_layers, num_d=num_d, norm=norm))


def vgg19_perceptual(*, weights: FilePath) -> nn.Module:
    """pix2pixHD's VGG loss: weighted L1 between VGG-19 relu1_1..relu5_1 features.

    ``weights`` is the path of torchvision's VGG-19 state dict (.pth or .safetensors); it is never
    downloaded.
    """
    return VGGLoss(Path(weights))
