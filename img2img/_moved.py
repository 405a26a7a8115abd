"""Old import paths of modules that moved into the package's folders; they keep working.

``import img2img.train`` gives the module `img2img.engine.train` itself (the same object), so code
written against the flat layout of img2img 0.1, monkeypatching included, keeps working.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "img2img.train": "img2img.engine.train",
    "img2img.checkpoint": "img2img.engine.checkpoint",
    "img2img.validation": "img2img.engine.validation",
    "img2img.translate": "img2img.inference.translator",
    "img2img.tiling": "img2img.inference.tiling",
    "img2img.export": "img2img.inference.export",
    "img2img.metrics": "img2img.evaluation.metrics",
    "img2img.report": "img2img.evaluation.report",
    "img2img.synth": "img2img.datasets.synth",
    "img2img.transforms": "img2img.data.transforms",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and hands back the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
