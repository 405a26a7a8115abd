"""pix2pixHD's VGG perceptual loss, with VGG-19 weights read from a file the user names.

Nothing is downloaded: the file is a torchvision ``vgg19`` state dict (``vgg19-dcbb9e9d.pth`` as
torchvision saves it, or only its ``features``), in ``.pth`` (read with ``weights_only=True``) or
``.safetensors``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from img2img import Img2ImgError

SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
"""The VGG-19 ``features`` layers up to relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1."""
LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def read_vgg19_features(path: Path) -> nn.Sequential:
    """torchvision's VGG-19 ``features`` with the weights in `path`, frozen."""
    from torchvision.models import vgg19

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise Img2ImgError(f"{path}: cannot read VGG-19 weights ({type(exc).__name__}: {exc}). Give a torchvision "
                           "vgg19 state dict (.pth or .safetensors) in the loss's 'weights'.") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise Img2ImgError(f"{path}: holds a {type(state).__name__}, not a VGG-19 state dict")
    if any(k.startswith("features.") for k in state):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    features = vgg19().features
    try:
        features.load_state_dict(state)
    except RuntimeError as exc:
        raise Img2ImgError(f"{path}: not torchvision's VGG-19 weights ({str(exc).splitlines()[0]}). Give the "
                           "state dict of torchvision.models.vgg19 (or of its .features).") from None
    return features.requires_grad_(False).eval()


class VGGLoss(nn.Module):
    """Sum over relu1_1..relu5_1 of weight x L1(VGG(prediction), VGG(target)), the target detached.

    Images go in as they are, in [-1, 1] (as pix2pixHD feeds them); grey images are repeated to
    three channels.
    """

    def __init__(self, weights: Path) -> None:
        super().__init__()
        features = read_vgg19_features(weights)
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in SLICES)

    def train(self, mode: bool = True) -> VGGLoss:
        return super().train(False)  # frozen: always in eval mode

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise Img2ImgError(f"the VGG loss needs RGB or grey images, got {x.shape[1]} channels")
        out = []
        for block in self.slices:
            x = block(x)
            out.append(x)
        return out

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = None
        for weight, p, t in zip(LAYER_WEIGHTS, self.activations(prediction), self.activations(target)):
            term = weight * F.l1_loss(p, t.detach())
            total = term if total is None else total + term
        return total
