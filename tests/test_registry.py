"""Every registered network builds and runs; parameters come from factory signatures."""
from __future__ import annotations

from typing import Annotated

import pytest
import torch
from pydantic import Field, ValidationError
from torch import nn

import img2img
from img2img.losses import exposes_features, feature_scales, scales_of
from img2img.registry import ParamsProblem, get_registry, params_model

REGISTRY = get_registry()


def _small(kind: str, name: str) -> dict:
    fields = REGISTRY.get(kind, name).params.model_fields
    params = {}
    for key in ("ngf", "ndf"):
        if key in fields:
            params[key] = 8
    return params


@pytest.mark.parametrize("name", REGISTRY.names("generator"))
def test_every_generator_builds_and_runs(name):
    torch.manual_seed(0)
    net = REGISTRY.build("generator", {"name": name, **_small("generator", name)}, in_channels=3, out_channels=1)
    # 64: deep encoders (pix2pixHD's local enhancer: 5 halvings) keep more than one pixel for instance norm
    size = max(64, int(getattr(net, "size_multiple", 1)))
    net.eval()
    with torch.no_grad():
        y = net(torch.rand(2, 3, size, size) * 2 - 1)
    assert y.shape == (2, 1, size, size)
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0


@pytest.mark.parametrize("name", REGISTRY.names("discriminator"))
def test_every_discriminator_builds_and_runs(name):
    """Logits, or a list of them (one per scale); with features=True, where offered, the same logits."""
    net = REGISTRY.build("discriminator", {"name": name, **_small("discriminator", name)}, in_channels=6)
    x = torch.rand(2, 6, 64, 64) * 2 - 1
    scales = scales_of(net(x))
    assert all(y.shape[0] == 2 and torch.isfinite(y).all() for y in scales)
    sum(y.mean() for y in scales).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    if exposes_features(net):
        logits, features = net(x, features=True)
        assert all(torch.equal(a, b) for a, b in zip(scales_of(logits), scales, strict=True))
        assert all(len(layers) >= 1 for layers in feature_scales(features))


BUILTIN_LOSSES = [c.name for c in REGISTRY.all("loss") if c.distribution == "img2img-pipeline"]


@pytest.mark.parametrize("name", BUILTIN_LOSSES)
def test_every_builtin_loss_builds_and_gives_a_scalar(name):
    """Plugin losses may take other inputs (e.g. features); the image losses here take images."""
    loss = REGISTRY.build("loss", name)
    a, b = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    if isinstance(loss, img2img.AdversarialLoss):
        values = [loss.d_loss(a, b), loss.g_loss(b)]
    else:
        values = [loss(a, b)]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in values)


def test_params_model_from_signature_rejects_unknown_and_honours_constraints():
    def gen(in_channels: int, out_channels: int, *, width: Annotated[int, Field(ge=1)] = 8, act: str = "relu"):
        return nn.Identity()

    model = params_model("generator", "gen", gen)
    assert model().width == 8
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        model(width=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model(widht=3)


def test_params_model_requires_annotations_and_io():
    with pytest.raises(ParamsProblem, match="'width' has no type annotation"):
        params_model("generator", "g", lambda in_channels, out_channels, width=8: None)
    def no_io(*, width: int = 8):
        return nn.Identity()

    with pytest.raises(ParamsProblem, match="must accept in_channels, out_channels"):
        params_model("generator", "g", no_io)
    with pytest.raises(ParamsProblem, match=r"\*kwargs is not allowed"):
        params_model("loss", "l", lambda **kwargs: None)


def test_build_rejects_bad_params_with_a_clear_error():
    with pytest.raises(img2img.Img2ImgError, match=r"generator 'resnet_9blocks': invalid parameters: ngf"):
        REGISTRY.build("generator", {"name": "resnet_9blocks", "ngf": 0}, in_channels=3, out_channels=3)
    with pytest.raises(img2img.Img2ImgError, match="did you mean 'resnet_9blocks'"):
        REGISTRY.build("generator", "resnet_9block", in_channels=3, out_channels=3)


def test_components_describe_parameters():
    described = REGISTRY.get("generator", "resnet_9blocks").describe()
    params = {p["name"]: p for p in described["parameters"]}
    assert params["ngf"]["default"] == 64 and params["ngf"]["type"] == "int"
    assert {"norm", "dropout", "padding", "upsample", "init", "init_gain"} <= set(params)
