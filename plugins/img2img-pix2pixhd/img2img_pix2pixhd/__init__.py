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

from img2img import hookimpl
from img2img.plugins import lazy_exports

__version__ = "0.2.0"

__all__ = ["GlobalGenerator", "LocalEnhancer", "MultiscaleDiscriminator", "VGGLoss", "pix2pixhd_global",
           "pix2pixhd_local", "multiscale", "vgg19_perceptual", "__version__"]

_LAZY = {"GlobalGenerator": "networks", "LocalEnhancer": "networks", "MultiscaleDiscriminator": "networks",
         "VGGLoss": "vgg", "pix2pixhd_global": "components", "pix2pixhd_local": "components",
         "multiscale": "components", "vgg19_perceptual": "components"}


__getattr__ = lazy_exports("img2img_pix2pixhd", _LAZY)  # the networks load torch: imported when used


@hookimpl
def register_generators(register):
    from img2img_pix2pixhd.components import pix2pixhd_global, pix2pixhd_local

    register("pix2pixhd_global", pix2pixhd_global)
    register("pix2pixhd_local", pix2pixhd_local)


@hookimpl
def register_discriminators(register):
    from img2img_pix2pixhd.components import multiscale

    register("multiscale", multiscale)


@hookimpl
def register_losses(register):
    from img2img_pix2pixhd.components import vgg19_perceptual

    register("vgg19_perceptual", vgg19_perceptual)


@hookimpl
def register_pipelines(register):
    folder = Path(__file__).resolve().parent / "pipelines"
    register("demo-pix2pixhd", folder / "demo-pix2pixhd.yaml")
    register("cityscapes-pix2pixhd", folder / "cityscapes-pix2pixhd.yaml")
