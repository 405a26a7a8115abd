"""Built-in losses: pairwise ``l1``, ``mse``, ``feature_matching`` and the adversarial ``lsgan``,
``vanilla``, ``hinge``, ``wgan_gp``.

Adversarial losses take raw discriminator logits of any shape, or a list of them (one per scale of a
multi-scale discriminator), and build their targets with the logits' dtype and device, so they work
unchanged under autocast and on any accelerator.
"""
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from img2img.hookspecs import hookimpl
from img2img.losses import AdversarialLoss, feature_scales, scales_of

Scales = Literal["mean", "sum"]
"""How a multi-scale discriminator's per-scale losses combine (``sum``: pix2pixHD's GANLoss)."""


class L1Loss(nn.Module):
    """Mean absolute error: the cycle, identity and pix2pix reconstruction term."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(prediction, target)


class MSELoss(nn.Module):
    """Mean squared error."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction, target)


class FeatureMatchingLoss(nn.Module):
    """pix2pixHD's discriminator feature matching (Wang et al. 2018): L1 between the discriminator's
    features of the translated and of the real image, layer by layer.

    ``forward(fake_features, real_features)`` takes what a discriminator returns as features with
    ``features=True`` (a list per scale of per-layer tensors). Each layer weighs ``4 / L`` (L layers
    in its scale: pix2pixHD's ``4 / (n_layers + 1)``), each scale ``1 / S``; the real features are
    detached, so only the generator learns from it.
    """

    def forward(self, fake_features, real_features) -> torch.Tensor:
        fake, real = feature_scales(fake_features), feature_scales(real_features)
        if [len(s) for s in fake] != [len(s) for s in real]:
            raise ValueError("feature_matching: the translated and the real image gave different numbers of "
                             "scales or layers of discriminator features")
        total = None
        for fake_layers, real_layers in zip(fake, real):
            layer_weight = 4.0 / len(fake_layers)
            for f, r in zip(fake_layers, real_layers):
                term = (1.0 / len(fake)) * layer_weight * F.l1_loss(f, r.detach())
                total = term if total is None else total + term
        return total


class LSGANLoss(AdversarialLoss):
    """Least squares GAN (Mao et al. 2017), the CycleGAN default.

    ``d_loss`` is halved, as the reference does, to slow D relative to G.
    """

    def __init__(self, real_label: float = 1.0, fake_label: float = 0.0, scales: str = "mean"):
        super().__init__()
        self.real_label = real_label
        self.fake_label = fake_label
        self.scale_reduction = scales

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real = F.mse_loss(real_logits, torch.full_like(real_logits, self.real_label))
        fake = F.mse_loss(fake_logits, torch.full_like(fake_logits, self.fake_label))
        return 0.5 * (real + fake)

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(fake_logits, torch.full_like(fake_logits, self.real_label))


class VanillaGANLoss(AdversarialLoss):
    """The original GAN's cross-entropy (Goodfellow et al. 2014), non-saturating for G; pix2pix's choice.

    ``d_loss`` is halved, as the reference does.
    """

    def __init__(self, real_label: float = 1.0, fake_label: float = 0.0, scales: str = "mean"):
        super().__init__()
        self.real_label = real_label
        self.fake_label = fake_label
        self.scale_reduction = scales

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, self.real_label))
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, self.fake_label))
        return 0.5 * (real + fake)

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, self.real_label))


class HingeGANLoss(AdversarialLoss):
    """Hinge loss (Lim & Ye 2017; SAGAN): D stops pushing logits once they pass the +-1 margin."""

    def __init__(self, scales: str = "mean"):
        super().__init__()
        self.scale_reduction = scales

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()


class WGANGPLoss(AdversarialLoss):
    """Wasserstein loss with gradient penalty (Gulrajani et al. 2017).

    `penalty` pushes the norm of D's input gradient towards 1 at random points between real and
    fake samples, which keeps D approximately 1-Lipschitz without weight clipping.
    """

    def __init__(self, gp_weight: float = 10.0, scales: str = "mean"):
        super().__init__()
        self.gp_weight = gp_weight
        self.scale_reduction = scales

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return fake_logits.mean() - real_logits.mean()

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()

    def penalty(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        real = real.detach()
        fake = fake.detach().to(real.dtype)
        alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), dtype=real.dtype, device=real.device)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        scales = scales_of(discriminator(mixed))
        total = scales[0].sum()
        for logits in scales[1:]:
            total = total + logits.sum()
        (grad,) = torch.autograd.grad(total, mixed, create_graph=True)
        # the epsilon keeps the square root differentiable where a gradient is exactly zero
        norm = (grad.flatten(1).float().square().sum(dim=1) + 1e-12).sqrt()
        return self.gp_weight * ((norm - 1.0) ** 2).mean()


def lsgan(*, real_label: float = 1.0, fake_label: float = 0.0, scales: Scales = "mean") -> AdversarialLoss:
    """Least squares GAN loss (CycleGAN default, pix2pixHD's with scales: sum).

    ``scales``: how the losses of a multi-scale discriminator's scales combine.
    """
    return LSGANLoss(real_label, fake_label, scales)


def vanilla(*, real_label: float = 1.0, fake_label: float = 0.0, scales: Scales = "mean") -> AdversarialLoss:
    """Binary cross-entropy GAN loss on logits (original GAN, pix2pix paper).

    ``scales``: how the losses of a multi-scale discriminator's scales combine.
    """
    return VanillaGANLoss(real_label, fake_label, scales)


def hinge(*, scales: Scales = "mean") -> AdversarialLoss:
    """Hinge GAN loss (SAGAN, BigGAN).

    ``scales``: how the losses of a multi-scale discriminator's scales combine.
    """
    return HingeGANLoss(scales)


def wgan_gp(*, gp_weight: Annotated[float, Field(ge=0)] = 10.0, scales: Scales = "mean") -> AdversarialLoss:
    """Wasserstein GAN loss with gradient penalty on the discriminator.

    ``scales``: how the losses of a multi-scale discriminator's scales combine.
    """
    return WGANGPLoss(gp_weight, scales)


def feature_matching() -> nn.Module:
    """Discriminator feature matching (pix2pixHD): L1 between features of real and translated images.

    Needs a discriminator that exposes its features (``forward(x, features=True)``); each layer
    weighs 4 / (its scale's number of layers), each scale 1 / (number of scales).
    """
    return FeatureMatchingLoss()


def l1() -> nn.Module:
    """Mean absolute error (cycle, identity and pix2pix reconstruction)."""
    return L1Loss()


def mse() -> nn.Module:
    """Mean squared error."""
    return MSELoss()


@hookimpl
def register_losses(register):
    for factory in (lsgan, vanilla, hinge, wgan_gp, l1, mse, feature_matching):
        register(factory.__name__, factory)
