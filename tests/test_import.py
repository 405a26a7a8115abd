"""`img2img import`: generators built with the reference repositories' own module structure, saved as they
save them, imported, then translated, tiled and exported: every variant must compute the original's function.

The originals are `reference_networks` (the CycleGAN/pix2pix repository's ResnetGenerator and recursive
UnetGenerator, CUT's anti-aliased ResnetGenerator), not img2img code. "Equal" means within 1/255 on
photo-like images of odd sizes; the original runs on the image padded (by reflection, bottom and right)
to its size multiple and is cropped back, which is what img2img does for any size.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reference_networks import (
    ResnetGenerator,
    UnetGenerator,
    randomise,
    stale_instance_norm_buffers,
)
from torch import nn
from typer.testing import CliRunner

from img2img.cli import app
from img2img.engine.checkpoint import load_checkpoint

runner = CliRunner()


def photo(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    """A textured, photo-like uint8 image: smooth shading, structure at three scales, a bright disc, grain."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.zeros(channels, h, w)
    for cells, amp in ((3, 0.6), (11, 0.3), (37, 0.15)):
        grid = torch.rand(1, channels, cells, max(2, cells * w // h), generator=gen)
        img += amp * F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img += 0.4 * (xx - yy)
    img += 0.5 * (((yy - 0.4) ** 2 + (xx - 0.6) ** 2) < 0.05).float()
    img += 0.05 * torch.randn(channels, h, w, generator=gen)
    img = (img - img.min()) / (img.max() - img.min())
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return arr[:, :, 0] if channels == 1 else arr


def reference_output(net: nn.Module, image: np.ndarray, multiple: int) -> np.ndarray:
    """The original generator's output in [0, 1] (HWC) for a uint8 image, padded to `multiple` and cropped."""
    arr = image[:, :, None] if image.ndim == 2 else image
    h, w = arr.shape[:2]
    padded = np.pad(arr, ((0, -h % multiple), (0, -w % multiple), (0, 0)), mode="reflect")
    x = torch.from_numpy(padded.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = net(x)[0, :, :h, :w]
    return ((y + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()


def invoke(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def read_png(path) -> np.ndarray:
    arr = np.asarray(Image.open(path)).astype(np.float64) / 255
    return arr[:, :, None] if arr.ndim == 2 else arr


def onnx_output(path, image: np.ndarray) -> np.ndarray:
    arr = image[:, :, None] if image.ndim == 2 else image
    x = (arr.astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = session.run(["translated"], {"image": x})[0][0]
    return np.clip((y + 1) / 2, 0, 1).transpose(1, 2, 0)


# name: (how the original is built, how it is saved, the import command's extra arguments, size multiple,
#        two image sizes (each pads to its multiple by less than its own size) and channels)
def _module_prefix(net):
    return nn.DataParallel(net).state_dict()  # what a DataParallel-wrapped model saves: "module." keys


VARIANTS = {
    # CycleGAN's default, saved by a current PyTorch
    "resnet_9blocks-instance": (lambda: ResnetGenerator(3, 3, 8, "instance", False, 9),
                                lambda net: net.state_dict(), [], 4, ((67, 93), (45, 58), 3)),
    # batch norm with running statistics, dropout (conv_block indices shifted), saved from DataParallel
    "resnet_6blocks-batch-dropout-module": (lambda: ResnetGenerator(3, 3, 6, "batch", True, 6),
                                            _module_prefix, [], 4, ((67, 93), (45, 58), 3)),
    # pix2pix's default: unet_256 with batch norm and dropout
    "unet_256-batch-dropout": (lambda: UnetGenerator(3, 3, 8, 4, "batch", True),
                               lambda net: net.state_dict(), [], 256, ((300, 451), (257, 270), 3)),
    # unet_128, instance norm, gray in and colour out, stale instance-norm buffers of old PyTorch
    "unet_128-instance-stale-gray": (lambda: UnetGenerator(1, 3, 7, 4, "instance", False),
                                     lambda net: stale_instance_norm_buffers(net, net.state_dict()),
                                     ["--no-dropout"], 128, ((93, 67), (130, 77), 1)),
    # CUT's anti-aliased ResNet generator (its defaults)
    "cut-resnet_9blocks-antialias": (lambda: ResnetGenerator(3, 3, 4, "instance", False, 9, antialias=True),
                                     lambda net: net.state_dict(), [], 4, ((93, 67), (58, 45), 3)),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def imported(request, tmp_path_factory):
    """(variant, original net in eval mode, photos folder, the imported run) for each variant."""
    name = request.param
    build, save, extra, multiple, (size, other, c) = VARIANTS[name]
    root = tmp_path_factory.mktemp(name)
    net = randomise(build(), seed=len(name)).eval()
    ckpt = root / "latest_net_G.pth"
    torch.save(save(net), ckpt)
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(photo(*size, seed=1, channels=c)).save(photos / "odd.png")
    Image.fromarray(photo(*other, seed=2, channels=c)).save(photos / "other.png")
    kind = "cut" if name.startswith("cut") else "reference"
    invoke("import", kind, ckpt, "--out", root / "run", *extra)
    return name, net, photos, root / "run", multiple


def test_translate_equals_the_original_forward_pass(imported):
    name, net, photos, run, multiple = imported
    out = run.parent / "translated"
    invoke("translate", photos, "--model", run, "--out", out, "--batch-size", "2")
    for src in sorted(photos.iterdir()):
        image = np.asarray(Image.open(src))
        expected = reference_output(net, image, multiple)
        got = read_png(out / src.name)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1 / 255 + 1e-9, f"{name}: {src.name}"
        assert expected.std() > 0.02  # the original's output is an image, not a constant


def test_exported_onnx_matches_the_original(imported):
    name, net, photos, run, multiple = imported
    onnx_path = run.parent / "g.onnx"
    invoke("export", run, "--out", onnx_path)
    for src in sorted(photos.iterdir()):
        image = np.asarray(Image.open(src))
        expected = reference_output(net, image, multiple)
        assert np.abs(onnx_output(onnx_path, image) - expected).max() <= 1 / 255, f"{name}: {src.name}"


def test_the_run_records_where_it_came_from(imported):
    name, _, _, run, _ = imported
    ckpt = load_checkpoint(run)
    source = json.loads((run / "source.json").read_text())
    assert ckpt["source"] == source and ckpt["resumable"] is False
    entry = source["files"][0]
    assert entry["name"] == "latest_net_G.pth" and len(entry["sha256"]) == 64
    generator = source["generator"]
    assert generator["name"] == name.split("-")[1 if name.startswith("cut") else 0]
    assert generator["norm"] == ("batch" if "batch" in name else "instance")
    assert generator.get("antialias", False) == ("antialias" in name)
    assert (generator["dropout"] > 0) == ("dropout" in name)
    assert entry["module_prefix_removed"] == ("module" in name)
    assert bool(entry["ignored_keys"]) == ("stale" in name)
    assert ckpt["task"] == ("cut" if name.startswith("cut") else "pix2pix" if "unet" in name else "cyclegan")


def test_cyclegan_pair_imports_both_directions_into_one_run(tmp_path):
    """G_A (a2b) as a current PyTorch saves it, G_B (b2a) from old PyTorch: legacy file format, DataParallel
    prefix and stale instance-norm buffers."""
    g_a = randomise(ResnetGenerator(3, 3, 8, "instance", False, 9), seed=3).eval()
    g_b = randomise(ResnetGenerator(3, 3, 8, "instance", False, 9), seed=4).eval()
    torch.save(g_a.state_dict(), tmp_path / "latest_net_G_A.pth")
    torch.save(stale_instance_norm_buffers(g_b, _module_prefix(g_b), "module."), tmp_path / "latest_net_G_B.pth",
               _use_new_zipfile_serialization=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    image = photo(45, 71, seed=5)
    Image.fromarray(image).save(photos / "p.png")
    # given in the "wrong" order: the names decide the directions
    invoke("import", "reference", tmp_path / "latest_net_G_B.pth", tmp_path / "latest_net_G_A.pth",
           "--out", tmp_path / "h2z")
    for direction, net in (("a2b", g_a), ("b2a", g_b)):
        invoke("translate", photos, "--model", tmp_path / "h2z", "--out", tmp_path / direction,
               "--direction", direction)
        expected = reference_output(net, image, 4)
        assert np.abs(read_png(tmp_path / direction / "p.png") - expected).max() <= 1 / 255
    source = json.loads((tmp_path / "h2z" / "source.json").read_text())
    assert {f["name"]: f["direction"] for f in source["files"]} == {"latest_net_G_A.pth": "a2b",
                                                                     "latest_net_G_B.pth": "b2a"}


def test_generators_between_gray_and_colour_import_and_translate(tmp_path):
    """G_A 1 -> 3 and G_B 3 -> 1 into one cyclegan run, and a CUT 1 -> 3: the imported pipelines turn off
    the training terms that feed one domain's images to the other's generator (identity loss, NCE identity),
    as the originals must have been trained, so they validate and translate."""
    import yaml

    nets = {"a2b": randomise(ResnetGenerator(1, 3, 4, "instance", False, 6), seed=8).eval(),
            "b2a": randomise(ResnetGenerator(3, 1, 4, "instance", False, 6), seed=9).eval()}
    torch.save(nets["a2b"].state_dict(), tmp_path / "latest_net_G_A.pth")
    torch.save(nets["b2a"].state_dict(), tmp_path / "latest_net_G_B.pth")
    cut = randomise(ResnetGenerator(1, 3, 4, "instance", False, 6, antialias=True), seed=10).eval()
    torch.save(cut.state_dict(), tmp_path / "latest_net_G.pth")
    images = {"a": photo(37, 58, seed=11, channels=1), "b": photo(37, 58, seed=12)}
    for domain, image in images.items():
        (tmp_path / domain).mkdir()
        Image.fromarray(image).save(tmp_path / domain / "p.png")
    invoke("import", "reference", tmp_path / "latest_net_G_A.pth", tmp_path / "latest_net_G_B.pth",
           "--out", tmp_path / "pair")
    invoke("import", "cut", tmp_path / "latest_net_G.pth", "--out", tmp_path / "cut")
    pair = yaml.safe_load((tmp_path / "pair" / "pipeline.yaml").read_text())
    assert pair["data"]["channels"] == {"a": 1, "b": 3} and pair["losses"]["identity"]["weight"] == 0
    assert yaml.safe_load((tmp_path / "cut" / "pipeline.yaml").read_text())["nce"]["identity"] is False
    for run, direction, domain, net in (("pair", "a2b", "a", nets["a2b"]), ("pair", "b2a", "b", nets["b2a"]),
                                        ("cut", "a2b", "a", cut)):
        out = tmp_path / f"out-{run}-{direction}"
        invoke("translate", tmp_path / domain, "--model", tmp_path / run, "--out", out, "--direction", direction)
        expected = reference_output(net, images[domain], 4)
        got = read_png(out / "p.png")
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1 / 255, (run, direction)


@pytest.fixture(scope="module")
def tiling_case(tmp_path_factory):
    """Two imported resnet_6blocks runs (instance and batch norm, weights as smooth as a trained model's)
    and a 150x213 photo."""
    root = tmp_path_factory.mktemp("tiling")
    image = photo(150, 213, seed=7)
    (root / "photos").mkdir()
    Image.fromarray(image).save(root / "photos" / "big.png")
    nets = {}
    for norm in ("instance", "batch"):
        nets[norm] = randomise(ResnetGenerator(3, 3, 8, norm, False, 6), seed=6, gain=0.5).eval()
        torch.save(nets[norm].state_dict(), root / f"{norm}_net_G.pth")
        invoke("import", "reference", root / f"{norm}_net_G.pth", "--out", root / norm)
    return root, image, nets


def _tiled(root, norm: str, tile_norm: str) -> np.ndarray:
    out = root / f"tiled-{norm}-{tile_norm}"
    invoke("translate", root / "photos", "--model", root / norm, "--out", out, "--tile", "96", "--overlap", "32",
           "--tile-norm", tile_norm)
    return read_png(out / "big.png")


def test_tiling_a_batch_norm_generator_reproduces_the_whole_image(tiling_case):
    """Eval-mode batch norm is per pixel: tiles blended over their overlap give the untiled result."""
    root, image, nets = tiling_case
    expected = reference_output(nets["batch"], image, 4)
    assert np.abs(_tiled(root, "batch", "global") - expected).max() <= 2 / 255


def test_tiling_an_instance_norm_generator_uses_whole_image_statistics(tiling_case):
    """Instance norm's statistics come from the (downscaled) whole image: far closer than each tile's own."""
    root, image, nets = tiling_case
    expected = reference_output(nets["instance"], image, 4)
    shared = np.abs(_tiled(root, "instance", "global") - expected).mean()
    local = np.abs(_tiled(root, "instance", "local") - expected).mean()
    assert shared < 0.5 * local and shared < 16 / 255
