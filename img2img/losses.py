"""The discriminator side of the plugin contract: adversarial losses, multi-scale logits, features.

A discriminator returns raw logits: one tensor, or a list of tensors (one per scale, as pix2pixHD's
multi-scale discriminator). It may also expose its intermediate features for feature-matching
losses: its ``forward`` then takes a keyword ``features`` and, called with ``features=True``, returns
``(logits, features)`` where ``features`` is a list per scale of lists of per-layer activations
(a single-scale discriminator may give one flat list of tensors). `exposes_features` probes that.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Union

import torch
from torch import nn

Logits = Union[torch.Tensor, Sequence[torch.Tensor]]
"""What a discriminator returns: a logits tensor, or a list of them (one per scale)."""


def scales_of(logits: Logits) -> list[torch.Tensor]:
    """A discriminator's output as a list of logits tensors, one per scale."""
    if torch.is_tensor(logits):
        return [logits]
    if isinstance(logits, (list, tuple)) and logits and all(torch.is_tensor(t) for t in logits):
        return list(logits)
    raise TypeError("a discriminator returns a logits tensor or a non-empty list of logits tensors (one per "
                    f"scale), not {type(logits).__name__}")


def feature_scales(features: Sequence) -> list[list[torch.Tensor]]:
    """A discriminator's features as a list per scale of per-layer tensors (a flat list is one scale,
    a tensor one layer)."""
    if torch.is_tensor(features):
        return [[features]]
    if isinstance(features, (list, tuple)) and features and all(torch.is_tensor(t) for t in features):
        return [list(features)]
    if (isinstance(features, (list, tuple)) and features
            and all(isinstance(s, (list, tuple)) and s and all(torch.is_tensor(t) for t in s) for s in features)):
        return [list(s) for s in features]
    raise TypeError("discriminator features are a list per scale of non-empty lists of tensors (one per layer), "
                    "or one list of tensors for a single scale")


def exposes_features(discriminator: nn.Module) -> bool:
    """Whether `discriminator` (possibly wrapped by DDP or torch.compile) takes ``features=True``."""
    from img2img.tasks.base import unwrap

    try:
        parameters = inspect.signature(unwrap(discriminator).forward).parameters
    except (TypeError, ValueError):
        return False
    return "features" in parameters


def _per_scale(method):
    """Let `d_loss` / `g_loss`, written for one logits tensor, take lists of them (one per scale).

    A tensor goes straight through (the single-scale result is exactly what it always was); lists
    are judged scale by scale and reduced by the loss's ``scale_reduction`` (``mean`` or ``sum``).
    """
    @functools.wraps(method)
    def per_scale(self, *logits):
        if all(torch.is_tensor(x) for x in logits):
            return method(self, *logits)
        scales = [scales_of(x) for x in logits]
        if len({len(s) for s in scales}) != 1:
            raise ValueError(f"{type(self).__name__}.{method.__name__}: real and fake logits have different numbers "
                             f"of scales ({', '.join(str(len(s)) for s in scales)})")
        total = None
        for per_scale_logits in zip(*scales):
            term = method(self, *per_scale_logits)
            total = term if total is None else total + term
        return total if getattr(self, "scale_reduction", "mean") == "sum" else total / len(scales[0])

    per_scale.handles_scales = True
    return per_scale


class AdversarialLoss(nn.Module):
    """A GAN objective. Subclasses implement `d_loss` and `g_loss` on one discriminator logits tensor.

    Both also accept lists of logits (a multi-scale discriminator): the base class applies them to
    each scale and takes the mean, or the sum with ``scale_reduction = "sum"`` (pix2pixHD's GANLoss).
    `penalty` is an optional regulariser on the discriminator (WGAN-GP's gradient penalty); the
    tasks add it to the discriminator loss when it returns a tensor.
    """

    scale_reduction: str = "mean"
    """How the per-scale losses of a multi-scale discriminator combine: ``"mean"`` or ``"sum"``."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("d_loss", "g_loss"):
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "handles_scales", False):
                setattr(cls, name, _per_scale(method))

    def d_loss(self, real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, fake_logits: Logits) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, fake_logits: Logits) -> torch.Tensor:  # pragma: no cover - convenience
        return self.g_loss(fake_logits)
