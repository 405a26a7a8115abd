"""Using a trained model: the translator (torch or onnxruntime), size handling and tiling, export.

`Translator` is importable from here (``from img2img.inference import Translator``), e.g. as the
callable class of Ray Data's ``map_batches``; importing this package loads torch but nothing else heavy.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Translator"]


def __getattr__(name: str) -> Any:
    if name == "Translator":  # lazily: submodules such as inference.export stay cheap to import
        from img2img.inference.translator import Translator

        return Translator
    raise AttributeError(f"module 'img2img.inference' has no attribute {name!r}")
