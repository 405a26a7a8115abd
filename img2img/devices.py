"""Choosing a torch device from a user's word for it: auto, cpu, cuda, cuda:N, mps."""
from __future__ import annotations

import torch

from img2img.errors import Img2ImgError


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def select_device(device: str, *, option: str = "--device", local_rank: int = 0) -> torch.device:
    """``auto`` = cuda (this process's local rank) > mps > cpu; an explicit device must exist.

    `option` names where the value came from (``--device``, ``train.device``) in error messages.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise Img2ImgError(f"{option} {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise Img2ImgError(f"{option} {device}: no CUDA device is available here; use cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise Img2ImgError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type == "mps" and not mps_available():
        raise Img2ImgError(f"{option} {device}: MPS is not available here; use cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise Img2ImgError(f"{option} {device}: use auto, cpu, cuda, cuda:N or mps")
    return dev
