"""Base class for adversarial losses: D and G see the logits differently (hinge, WGAN)."""
from __future__ import annotations

import torch
from torch import nn


class AdversarialLoss(nn.Module):
    """A GAN objective. Subclasses implement `d_loss` and `g_loss` on discriminator logits.

    `penalty` is an optional regulariser on the discriminator (WGAN-GP's gradient penalty); the
    tasks add it to the discriminator loss when it returns a tensor.
    """

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, fake_logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover - convenience
        return self.g_loss(fake_logits)
