"""``antialias: true`` on the ResNet generators is CUT's generator layer for layer (checked against a
re-creation of CUT's own module structure), its PatchNCE layers are CUT's, and it exports to ONNX."""
from __future__ import annotations

import io

import pytest
import torch
from reference_networks import ResnetGenerator as CutResnetGenerator
from reference_networks import randomise
from rich.console import Console
from torch import nn

from img2img.default_plugins.resnet import BlurDownsample, BlurUpsample, ResnetGenerator, binomial_filter
from img2img.inference.export import export_generator
from img2img.registry import build

CUT_LAYER_TYPES = ["ReflectionPad2d", "Conv2d", "InstanceNorm2d", "ReLU", "Conv2d", "InstanceNorm2d", "ReLU",
                   "Downsample", "Conv2d", "InstanceNorm2d", "ReLU", "Downsample"]


def ours_from(cut: nn.Module, n_blocks: int, ngf: int, norm: str) -> ResnetGenerator:
    ours = build("generator", {"name": f"resnet_{n_blocks}blocks", "ngf": ngf, "norm": norm, "antialias": True},
                 in_channels=3, out_channels=3)
    ours.load_state_dict({k.replace(".conv_block.", ".body."): v for k, v in cut.state_dict().items()})
    return ours.eval()


@pytest.mark.parametrize("n_blocks,norm", [(9, "instance"), (6, "batch")])
def test_layer_for_layer_the_cut_generator(n_blocks, norm):
    cut = randomise(CutResnetGenerator(3, 3, 4, norm, False, n_blocks, antialias=True), seed=n_blocks).eval()
    ours = ours_from(cut, n_blocks, 4, norm)
    assert len(ours.model) == len(cut.model)
    for i, (mine, theirs) in enumerate(zip(ours.model, cut.model)):
        names = {type(mine).__name__, type(theirs).__name__}
        assert len(names) == 1 or names in ({"BlurDownsample", "Downsample"}, {"BlurUpsample", "Upsample"}), i
    assert [type(m).__name__ for m in cut.model[:12]] == [t if norm == "instance" else t.replace(
        "InstanceNorm2d", "BatchNorm2d") for t in CUT_LAYER_TYPES]
    x = torch.rand(2, 3, 44, 60, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(x), cut(x), atol=1e-6, rtol=0)


def test_features_are_cut_nce_layers():
    cut = randomise(CutResnetGenerator(3, 3, 4, "instance", False, 9, antialias=True), seed=1).eval()
    ours = ours_from(cut, 9, 4, "instance")
    assert ours.nce_layers == [0, 4, 8, 12, 16]
    x = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        theirs = cut(x, layers=[0, 4, 8, 12, 16], encode_only=True)
        mine = ours.features(x, ours.nce_layers)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # the same five layers of the paper, in either layout: input, the two downsampling convs, blocks 1 and 5
    plain = ResnetGenerator(3, 3, n_blocks=9, ngf=4)
    for net in (ours, plain):
        kinds = [type(net.model[i]).__name__ for i in net.nce_layers]
        assert kinds == ["ReflectionPad2d", "Conv2d", "Conv2d", "ResnetBlock", "ResnetBlock"]
        assert net.nce_layers[3] == net.encoder_layers - 9 and net.nce_layers[4] == net.encoder_layers - 5


def test_blur_layers_are_fixed_binomial_filters():
    assert torch.equal(binomial_filter(3), torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0)
    down, up = BlurDownsample(5), BlurUpsample(5)
    assert down.filt.shape == (5, 1, 3, 3) and up.filt.shape == (5, 1, 4, 4)
    assert not list(down.parameters()) and set(down.state_dict()) == {"filt"}
    x = torch.rand(1, 5, 17, 23)
    assert down(x).shape[-2:] == (9, 12) and up(x).shape[-2:] == (34, 46)
    flat = torch.ones(1, 5, 8, 8)  # a blur keeps a constant image constant
    torch.testing.assert_close(down(flat), torch.ones(1, 5, 4, 4))
    torch.testing.assert_close(up(flat), torch.ones(1, 5, 16, 16))


def test_antialiased_generator_exports_to_onnx_with_parity(tmp_path):
    net = build("generator", {"name": "resnet_6blocks", "ngf": 4, "antialias": True}, in_channels=3, out_channels=3)
    out = export_generator(net, tmp_path / "aa.onnx", in_channels=3, out_channels=3, size_multiple=4,
                           console=Console(file=io.StringIO()))
    assert out.is_file()  # export_generator raises when onnxruntime and torch differ by more than 1e-4


def test_resize_conv_upsampling_keeps_the_blur_downsampling():
    net = ResnetGenerator(3, 3, n_blocks=6, ngf=4, antialias=True, upsample="resize-conv")
    assert sum(isinstance(m, BlurDownsample) for m in net.modules()) == 2
    assert not any(isinstance(m, BlurUpsample) for m in net.modules())
    assert net(torch.zeros(1, 3, 20, 28)).shape == (1, 3, 20, 28)
