"""Feature extractors for FID and KID: ``pytorch_fid`` (the network published FIDs use),
``inception_v3`` (torchvision's ImageNet network) and ``random_conv`` (no weights).

An extractor maps ``[N, 3, H, W]`` images in [-1, 1] to ``[N, D]`` features; it resizes to its
``input_size`` itself, so the caller may also resize beforehand (the ``clean``, ``legacy_pytorch``
and ``legacy_tensorflow`` protocols do) and the internal resize then does nothing. An extractor
that loads a file carries ``weights_digest`` (the first 8 hex digits of the file's sha256), and one
whose numbers belong to a protocol names it as ``default_protocol``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from img2img.errors import Img2ImgError, first_line
from img2img.evaluation.weights import WeightsFile, sha256_of
from img2img.hookspecs import hookimpl
from img2img.tensorfile import NotATorchFile, load_weights_only

INCEPTION = WeightsFile(
    name="inception_v3",
    file="inception_v3_google-0cc3c7bd.pth",
    url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
    sha256="0cc3c7bd",  # torchvision publishes this prefix of the file's sha256 in its name
)


PYTORCH_FID = WeightsFile(
    name="pytorch_fid",
    file="pt_inception-2015-12-05-6726825d.pth",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d",  # pytorch-fid names the file with this prefix of its sha256; torch.hub checks it
)


def digest(path: Path) -> str:
    """What FID/KID lines record of a weights file: the first 8 hex digits of its sha256."""
    return sha256_of(path)[:8]


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


def _load_net(file: WeightsFile, weights: Path | None, what: str, build) -> tuple[nn.Module, Path]:
    """`build()` with the state_dict of `file` (found as `WeightsFile.locate` finds it), refused in our own
    words when it is another kind of file, pickles objects, or does not fit (never torch's advice)."""
    path = file.locate(weights)
    try:
        state = load_weights_only(Path(path), f"Get the right file with `{file.command}`.")
        net = build()
        net.load_state_dict(state)
    except Img2ImgError as exc:  # refused (pickled objects, crafted tensors) or another kind of file
        if isinstance(exc, NotATorchFile):
            raise Img2ImgError(f"{path} is not {what}: it is {exc.kind}. Get the right file with "
                               f"`{file.command}`") from None
        raise
    except Exception as exc:  # a wrong or truncated file: name it, in a line of our own words
        raise Img2ImgError(f"{path} is not {what} ({type(exc).__name__}: {first_line(exc)[:200]}). "
                           f"Get the right file with `{file.command}`") from None
    return net, Path(path)


def inception_v3(*, weights: Path | None = None) -> nn.Module:
    """Inception v3 pool features (2048-d), torchvision's ImageNet weights: the FID/KID network."""
    from torchvision.models import inception_v3 as build

    net, path = _load_net(INCEPTION, weights, "a torchvision Inception v3 state_dict",
                    lambda: build(weights=None, aux_logits=True, transform_input=False, init_weights=False))
    features = InceptionFeatures(net)
    features.weights_digest = digest(path)
    return features


inception_v3.weights = INCEPTION


# --------------------------------------------------------------------------------------------
# pytorch-fid's FID Inception: the TensorFlow FID network (2015-12-05) as pytorch-fid ported it


def _fid_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3 average pool leaves the padding out of the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _patched_blocks():
    """The Inception blocks of the TensorFlow graph, where they differ from torchvision's."""
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    class FIDInceptionA(InceptionA):
        def forward(self, x):
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)), b3,
                              self.branch_pool(_fid_avg_pool(x))], 1)

    class FIDInceptionC(InceptionC):
        def forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d7 = x
            for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                          self.branch7x7dbl_5):
                d7 = layer(d7)
            return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_fid_avg_pool(x))], 1)

    class FIDInceptionE(InceptionE):
        max_pool = False  # the graph's last block pools by max, the one before by average

        def forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d3 = torch.cat([self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3)], 1)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _fid_avg_pool(x)
            return torch.cat([self.branch1x1(x), b3, d3, self.branch_pool(pooled)], 1)

    class FIDInceptionEMax(FIDInceptionE):
        max_pool = True

    return FIDInceptionA, FIDInceptionC, FIDInceptionE, FIDInceptionEMax


def fid_inception_net() -> nn.Module:
    """torchvision's Inception v3 with 1008 classes and the TensorFlow graph's block variants: the
    module whose ``state_dict`` is ``pt_inception-2015-12-05-6726825d.pth`` (untrained)."""
    from torchvision.models import inception_v3 as build

    block_a, block_c, block_e, block_e_max = _patched_blocks()
    net = build(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = block_a(192, pool_features=32)
    net.Mixed_5c = block_a(256, pool_features=64)
    net.Mixed_5d = block_a(288, pool_features=64)
    net.Mixed_6b = block_c(768, channels_7x7=128)
    net.Mixed_6c = block_c(768, channels_7x7=160)
    net.Mixed_6d = block_c(768, channels_7x7=160)
    net.Mixed_6e = block_c(768, channels_7x7=192)
    net.Mixed_7b = block_e(1280)
    net.Mixed_7c = block_e_max(2048)
    return net


FID_DIMS = (64, 192, 768, 2048)


class PytorchFIDFeatures(nn.Module):
    """pytorch-fid's ``InceptionV3([block])``: the output of block 0-3 (64, 192, 768 or 2048 channels),
    average-pooled to one vector per image.

    Its own resize is pytorch-fid's: bilinear to 299 x 299 without antialiasing. pytorch-fid scales
    [0, 1] inputs to [-1, 1]; the extractor contract's images are in [-1, 1] already.
    """

    input_size = 299
    default_protocol = "legacy_pytorch"

    def __init__(self, net: nn.Module, dims: int = 2048) -> None:
        super().__init__()
        self.num_features = dims
        stages = [
            [net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
             net.Mixed_6e],
            [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))],
        ]
        self.blocks = nn.Sequential(*(nn.Sequential(*stage) for stage in stages[: FID_DIMS.index(dims) + 1]))
        self.eval()

    def train(self, mode: bool = True) -> PytorchFIDFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = self.blocks(x)
        if x.shape[-2:] != (1, 1):
            x = F.adaptive_avg_pool2d(x, output_size=(1, 1))
        return x.flatten(1)


def pytorch_fid(*, weights: Path | None = None, dims: Literal[64, 192, 768, 2048] = 2048) -> nn.Module:
    """pytorch-fid's FID Inception (the TensorFlow FID network): what published FIDs use."""
    net, path = _load_net(PYTORCH_FID, weights, "pytorch-fid's FID Inception state_dict", fid_inception_net)
    features = PytorchFIDFeatures(net, dims)
    features.weights_digest = digest(path)
    return features


pytorch_fid.weights = PYTORCH_FID


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
    register("pytorch_fid", pytorch_fid)
    register("inception_v3", inception_v3)
    register("random_conv", random_conv)
