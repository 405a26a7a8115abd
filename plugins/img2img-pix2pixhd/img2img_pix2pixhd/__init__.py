"""img2img-pix2pixhd: pix2pixHD (Wang et al. 2018) as components of img2img's built-in pix2pix task.

- generators ``pix2pixhd_global`` (G1) and ``pix2pixhd_local`` (G1 inside the local enhancer G2);
- discriminator ``multiscale``: PatchGANs at several scales that expose their features, for the
  built-in ``feature_matching`` loss (``losses.feature_matching`` of the pix2pix task);
- loss ``vgg19_perceptual``: pix2pixHD's VGG loss, with VGG-19 weights from a file you name;
- pipelines ``demo-pix2pixhd`` (synthesised data, minutes on a CPU) and ``cityscapes-pix2pixhd``.

Installed, it is found through the entry-point group ``img2img`` like any third-party plugin::

    pip install img2img-pix2pixhd
    img2img train demo-pix2pixhd
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, FilePath
from torch import nn

from img2img import hookimpl

from img2img_pix2pixhd.networks import GlobalGenerator, LocalEnhancer, MultiscaleDiscriminator, Norm, init_weights
from img2img_pix2pixhd.vgg import VGGLoss

__version__ = "0.2.0"

__all__ = ["GlobalGenerator", "LocalEnhancer", "MultiscaleDiscriminator", "VGGLoss", "pix2pixhd_global",
           "pix2pixhd_local", "multiscale", "vgg19_perceptual", "__version__"]

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


@hookimpl
def register_generators(register):
    register("pix2pixhd_global", pix2pixhd_global)
    register("pix2pixhd_local", pix2pixhd_local)


@hookimpl
def register_discriminators(register):
    register("multiscale", multiscale)


@hookimpl
def register_losses(register):
    register("vgg19_perceptual", vgg19_perceptual)


@hookimpl
def register_pipelines(register):
    folder = Path(__file__).resolve().parent / "pipelines"
    register("demo-pix2pixhd", folder / "demo-pix2pixhd.yaml")
    register("cityscapes-pix2pixhd", folder / "cityscapes-pix2pixhd.yaml")
