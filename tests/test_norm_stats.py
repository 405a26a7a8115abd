"""``--norm-stats batch``: the reference test.py's batch-norm behaviour (train-mode statistics, one image per
batch), on translate and export, against the reference U-Net itself; eval mode stays the default."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from reference_networks import ResnetGenerator, UnetGenerator, randomise
from test_import import onnx_output, photo, read_png, reference_output
from torch import nn
from typer.testing import CliRunner

from img2img.cli import app

runner = CliRunner()


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def as_reference_test_py(net: nn.Module) -> nn.Module:
    """The reference's test.py without --eval: train mode (batch norm on batch statistics); its dropout is
    random, so it is switched off here as img2img does. A copy: a train-mode pass updates the running averages."""
    net = copy.deepcopy(net).train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    return net


@pytest.fixture(scope="module")
def pix2pix(tmp_path_factory):
    root = tmp_path_factory.mktemp("norm-stats")
    net = randomise(UnetGenerator(3, 3, 7, 4, "batch", True), seed=11)
    torch.save(net.state_dict(), root / "latest_net_G.pth")
    invoke("import", "reference", root / "latest_net_G.pth", "--out", root / "run")
    (root / "photos").mkdir()
    images = {"a.png": photo(131, 190, seed=12), "b.png": photo(131, 190, seed=13), "c.png": photo(77, 101, seed=14)}
    for name, image in images.items():
        Image.fromarray(image).save(root / "photos" / name)
    return root, net, images


def test_batch_statistics_reproduce_the_reference_test_py_per_image(pix2pix):
    root, net, images = pix2pix
    # a and b share a size and run as one batch of 2: each must still match its own batch-of-one reference run
    out = invoke("translate", root / "photos", "--model", root / "run", "--out", root / "batch", "--norm-stats",
                 "batch", "--batch-size", "2")
    assert "batch-norm on image statistics" in out
    reference = as_reference_test_py(net)
    for name, image in images.items():
        expected = reference_output(reference, image, 128)
        assert np.abs(read_png(root / "batch" / name) - expected).max() <= 1 / 255, name


def test_eval_mode_stays_the_default_and_differs(pix2pix):
    root, net, images = pix2pix
    invoke("translate", root / "photos", "--model", root / "run", "--out", root / "eval")
    for name, image in images.items():
        eval_expected = reference_output(net.eval(), image, 128)
        train_expected = reference_output(as_reference_test_py(net), image, 128)
        got = read_png(root / "eval" / name)
        assert np.abs(got - eval_expected).max() <= 1 / 255
        assert np.abs(got - train_expected).mean() > 5 / 255  # the two modes really are different functions


@pytest.mark.parametrize("mode", ["running", "batch"])
def test_onnx_equals_the_torch_path_in_each_mode(pix2pix, mode):
    root, net, images = pix2pix
    path = root / f"g-{mode}.onnx"
    out = invoke("export", root / "run", "--out", path, "--norm-stats", mode)
    assert "max abs diff" in out
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["norm_stats"] == mode
    reference = as_reference_test_py(net) if mode == "batch" else net.eval()
    for name, image in images.items():
        expected = reference_output(reference, image, 128)
        assert np.abs(onnx_output(path, image) - expected).max() <= 1 / 255, name
    # translating with the file: the statistics are part of the graph
    other = "running" if mode == "batch" else "batch"
    result = runner.invoke(app, ["translate", str(root / "photos"), "--model", str(path), "--out",
                                 str(root / f"onnx-{mode}"), "--norm-stats", other])
    assert result.exit_code == 1 and f"exported with --norm-stats {mode}" in " ".join(result.output.split())
    invoke("translate", root / "photos", "--model", path, "--out", root / f"onnx-{mode}", "--norm-stats", mode)


def test_safetensors_export_refuses_batch_statistics(pix2pix):
    root, _, _ = pix2pix
    result = runner.invoke(app, ["export", str(root / "run"), "--out", str(root / "g.safetensors"), "--format",
                                 "safetensors", "--norm-stats", "batch"])
    assert result.exit_code == 1 and "applies to ONNX export" in result.output


def test_a_generator_without_batch_norm_is_told_nothing_changes(tmp_path):
    net = randomise(ResnetGenerator(3, 3, 4, "instance", False, 6), seed=15).eval()
    torch.save(net.state_dict(), tmp_path / "latest_net_G.pth")
    invoke("import", "reference", tmp_path / "latest_net_G.pth", "--out", tmp_path / "run")
    (tmp_path / "photos").mkdir()
    image = photo(40, 52, seed=16)
    Image.fromarray(image).save(tmp_path / "photos" / "p.png")
    out = invoke("translate", tmp_path / "photos", "--model", tmp_path / "run", "--out", tmp_path / "out",
                 "--norm-stats", "batch")
    assert "changes nothing: this generator has no batch-norm layers" in out
    assert "batch-norm on image statistics" not in " ".join(out.split())  # the summary does not claim it either
    assert np.abs(read_png(tmp_path / "out" / "p.png") - reference_output(net, image, 4)).max() <= 1 / 255
