"""img2img-cut: the ``cut`` task (CUT and FastCUT, Park et al. 2020) and the ``patchnce`` loss.

Installed, it is found through the entry-point group ``img2img`` like any third-party plugin::

    pip install img2img-cut
    img2img train demo-cut                 # its pipelines ship with it: demo-cut, horse2zebra-cut
"""
from pathlib import Path

from img2img import hookimpl
from img2img.plugins import lazy_exports

__version__ = "0.2.0"

__all__ = ["ANTIALIAS_NCE_LAYERS", "CUT", "CUTPipeline", "PatchNCELoss", "ProjectionHeads", "RESNET_NCE_LAYERS", "patchnce",
           "sample_patch_ids", "__version__"]


_LAZY = {"PatchNCELoss": "patchnce", "ProjectionHeads": "patchnce", "patchnce": "patchnce",
         "sample_patch_ids": "patchnce", "ANTIALIAS_NCE_LAYERS": "task", "CUT": "task", "CUTPipeline": "task",
         "RESNET_NCE_LAYERS": "task"}


__getattr__ = lazy_exports("img2img_cut", _LAZY)  # the networks load torch: imported when used


@hookimpl
def register_tasks(register):
    from img2img_cut.task import CUT

    register("cut", CUT)


@hookimpl
def register_losses(register):
    from img2img_cut.patchnce import patchnce

    register("patchnce", patchnce)


@hookimpl
def register_pipelines(register):
    folder = Path(__file__).resolve().parent / "pipelines"
    register("horse2zebra-cut", folder / "horse2zebra-cut.yaml")
    register("demo-cut", folder / "demo-cut.yaml")
