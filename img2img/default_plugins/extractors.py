"""Feature extractors for FID and KID: ``inception_v3`` (the FID network) and ``random_conv`` (no weights).

An extractor maps ``[N, 3, H, W]`` images in [-1, 1] to ``[N, D]`` features; it resizes to its
``input_size`` itself, so the caller may also resize beforehand (the clean-fid protocol does, with
PIL) and the internal resize then does nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from img2img.errors import Img2ImgError, first_line
from img2img.evaluation.weights import WeightsFile
from img2img.hookspecs import hookimpl
from img2img.tensorfile import NotATorchFile, load_weights_only

INCEPTION = WeightsFile(
    name="inception_v3",
    file="inception_v3_google-0cc3c7bd.pth",
    url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
    sha256="0cc3c7bd",  # torchvision publishes this prefix of the file's sha256 in its name
)


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize to size x size; a no-op at that size already."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# --------------------------------------------------------------------------------------------
# Inception v3


class InceptionFeatures(nn.Module):
    """torchvision's Inception v3 up to the 2048-d average pool (its logits layer removed).

    The ImageNet weights expect inputs in [-1, 1] (what torchvision's ``transform_input`` produces
    from ImageNet-normalised ones), which is the extractor contract's range already.
    """

    input_size = 299
    num_features = 2048

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net.fc = nn.Identity()
        self.net = net.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # batch norm and dropout always in inference mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(resize_to(images, self.input_size))


def inception_v3(*, weights: Path | None = None) -> nn.Module:
    """Inception v3 pool features (2048-d), torchvision's ImageNet weights: the FID/KID network."""
    from torchvision.models import inception_v3 as build

    path = INCEPTION.locate(weights)
    try:
        state = load_weights_only(Path(path), f"Get the right file with `{INCEPTION.command}`.")
        net = build(weights=None, aux_logits=True, transform_input=False, init_weights=False)
        net.load_state_dict(state)
    except Img2ImgError as exc:  # refused (pickled objects, crafted tensors) or another kind of file
        if isinstance(exc, NotATorchFile):
            raise Img2ImgError(f"{path} is not a torchvision Inception v3 state_dict: it is {exc.kind}. Get the "
                               f"right file with `{INCEPTION.command}`") from None
        raise
    except Exception as exc:  # a wrong or truncated file: name it, in a line of our own words
        raise Img2ImgError(f"{path} is not a torchvision Inception v3 state_dict ({type(exc).__name__}: "
                           f"{first_line(exc)[:200]}). Get the right file with `{INCEPTION.command}`") from None
    return InceptionFeatures(net)


inception_v3.weights = INCEPTION


# --------------------------------------------------------------------------------------------
# fixed random convolutional features

_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fixed_uniform(seed: int, stream: int, count: int) -> np.ndarray:
    """`count` float64 numbers in [-1, 1) from splitmix64: bit-identical on every machine and version.

    torch's and numpy's random generators may change between releases; these numbers cannot.
    """
    with np.errstate(over="ignore"):
        key = _mix(np.array([(seed & 0xFFFFFFFF) << 20 | (stream & 0xFFFFF)], dtype=np.uint64))[0]
        counters = key + (np.arange(1, count + 1, dtype=np.uint64) * _GAMMA)
        bits = _mix(counters) >> np.uint64(11)  # 53 bits
    return bits.astype(np.float64) * (2.0 / 2**53) - 1.0


class RandomConvFeatures(nn.Module):
    """Channel mean and std of the image and of four fixed random conv stages (stride 2, leaky ReLU).

    The weights come from `fixed_uniform` (He-uniform scale), never from a file or torch's RNG, so
    every machine computes the same features. They see colour, contrast and texture at four
    scales: enough to rank checkpoints of one run by how close their outputs' statistics are to
    domain B, not a perceptual model, and not comparable to published FID/KID values.
    """

    def __init__(self, seed: int = 0, input_size: int = 128, width: int = 16) -> None:
        super().__init__()
        self.input_size = input_size
        widths = [3] + [width * 2 ** min(i, 2) for i in range(4)]
        for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
            fan_in = cin * 9
            values = fixed_uniform(seed, i, cout * fan_in) * np.sqrt(6.0 / fan_in)
            weight = torch.from_numpy(values.astype(np.float32)).reshape(cout, cin, 3, 3)
            self.register_buffer(f"w{i}", weight, persistent=False)
        self.stages = len(widths) - 1
        self.num_features = 2 * sum(widths)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_to(images.float(), self.input_size)
        feats = [x.mean((2, 3)), x.std((2, 3), correction=0)]
        for i in range(self.stages):
            x = F.leaky_relu(F.conv2d(x, getattr(self, f"w{i}"), stride=2, padding=1), 0.2)
            feats += [x.mean((2, 3)), x.std((2, 3), correction=0)]
        return torch.cat(feats, 1)


def random_conv(*, seed: int = 0, input_size: Annotated[int, Field(ge=16, le=1024)] = 128,
                width: Annotated[int, Field(ge=1, le=256)] = 16) -> nn.Module:
    """Fixed random conv features, no weights to download: compares checkpoints of one run, not papers."""
    return RandomConvFeatures(seed=seed, input_size=input_size, width=width)


@hookimpl
def register_feature_extractors(register):
    register("inception_v3", inception_v3)
    register("random_conv", random_conv)
