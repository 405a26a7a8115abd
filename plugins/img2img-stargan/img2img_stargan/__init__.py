"""img2img-stargan: the ``stargan`` task (StarGAN, Choi et al. 2018) and its networks.

One generator translates between any number of domains, told the target domain by a one-hot code
concatenated to the image as channels; one discriminator judges real/fake and classifies the domain.
Installed, it is found through the entry-point group ``img2img`` like any third-party plugin::

    pip install img2img-stargan
    img2img train demo-stargan             # three synthesised domains, no download
    img2img translate photos/ --model runs/demo-stargan -d a2c --out out/
"""
from pathlib import Path

from img2img import hookimpl
from img2img.plugins import lazy_exports

__version__ = "0.2.0"

__all__ = ["DomainConditioned", "StarGAN", "StarGANDiscriminator", "StarGANGenerator", "StarGANPipeline",
           "__version__"]

_LAZY = {"DomainConditioned": "networks", "StarGANDiscriminator": "networks", "StarGANGenerator": "networks",
         "StarGAN": "task", "StarGANPipeline": "task"}


__getattr__ = lazy_exports("img2img_stargan", _LAZY)  # the networks load torch: imported when used


@hookimpl
def register_tasks(register):
    from img2img_stargan.task import StarGAN

    register("stargan", StarGAN)


@hookimpl
def register_generators(register):
    from img2img_stargan.networks import stargan_generator

    register("stargan_generator", stargan_generator)


@hookimpl
def register_discriminators(register):
    from img2img_stargan.networks import stargan_discriminator

    register("stargan_discriminator", stargan_discriminator)


@hookimpl
def register_pipelines(register):
    folder = Path(__file__).resolve().parent / "pipelines"
    register("demo-stargan", folder / "demo-stargan.yaml")
    register("stargan", folder / "stargan.yaml")
