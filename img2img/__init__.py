"""img2img: plugin-based image-to-image translation (CycleGAN, pix2pix) from YAML pipelines."""
from __future__ import annotations

import os

# OpenMP threads that spin while waiting turn a busy machine into a 10-50x slowdown (each parallel
# region waits for a descheduled thread); sleeping costs a few percent at most. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# onnxruntime (1.32 on Linux) writes a device id and an event store to ~/.cache/Microsoft/DeveloperTools/
# .onnxruntime/ as it loads, for its telemetry; this switch (read when it loads) turns that off. Set
# ORT_DISABLE_TELEMETRY=0 to leave it on. See docs/deploy.md.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from img2img import _moved  # noqa: E402
from img2img._version import __version__  # noqa: E402
from img2img.errors import Img2ImgError, PipelineError  # noqa: E402
from img2img.hookspecs import hookimpl  # noqa: E402

_moved.install()

__all__ = ["hookimpl", "AdversarialLoss", "Img2ImgError", "PipelineError", "Translator", "__version__"]


def __getattr__(name: str):
    if name == "AdversarialLoss":  # imported lazily: it needs torch, which `img2img --help` does not
        from img2img.losses import AdversarialLoss

        return AdversarialLoss
    if name == "Translator":  # imported lazily: it pulls in the data and onnx stack
        from img2img.inference.translator import Translator

        return Translator
    raise AttributeError(name)
