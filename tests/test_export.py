"""ONNX and safetensors export: the graph contract, parity with torch, metadata, atomic writes, the CLI."""
import io
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from img2img.inference import onnx_graph
from img2img.engine.checkpoint import load_generator
from img2img.cli import app
from cli_support import user_error
from img2img.errors import Img2ImgError
from img2img.inference.export import export, export_generator, load_safetensors_generator
from img2img.inference.tiling import SizeAdapter
from img2img.inference.translator import Translator

runner = CliRunner()


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def torch_reference(translate_run, x: torch.Tensor) -> np.ndarray:
    loaded = load_generator(translate_run, "a2b")
    with torch.no_grad():
        return SizeAdapter(loaded.module, loaded.size_multiple)(x).numpy()


class TinyNet(nn.Module):
    """A one-convolution generator: exports in a second or two."""

    size_multiple = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(x))


# -- the contract --------------------------------------------------------------------------------

def test_graph_has_named_float32_nchw_io_with_dynamic_batch_height_width(translate_onnx):
    model = onnx.load(str(translate_onnx))
    onnx.checker.check_model(model)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("image", "translated")
    for value in (inp, out):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims] == [True, False, True, True]
        assert dims[1].dim_value == 3


def test_metadata_tells_a_deployer_everything(translate_onnx):
    meta = {p.key: p.value for p in onnx.load(str(translate_onnx)).metadata_props}
    assert meta["value_range"] == "[-1, 1]" and meta["layout"] == "NCHW"
    assert (meta["in_channels"], meta["out_channels"], meta["size_multiple"]) == ("3", "3", "4")
    assert (meta["direction"], meta["task"], meta["pipeline"]) == ("a2b", "cyclegan", "tiny-translate")
    assert meta["preprocessing"] == "x / 127.5 - 1" and meta["postprocessing"] == "(y + 1) * 127.5"
    assert meta["img2img_version"] == __import__("img2img").__version__
    assert meta["generator"] == "resnet_6blocks" and json.loads(meta["generator_params"])["ngf"] == 4


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 29, 41), (3, 3, 16, 16), (1, 3, 64, 96),
                                   (1, 3, 1, 2), (2, 3, 3, 2), (1, 3, 1, 40), (1, 3, 4, 4)])
def test_onnxruntime_matches_torch_at_any_size_and_batch(translate_run, translate_onnx, shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    got = session(translate_onnx).run(["translated"], {"image": x.numpy()})[0]
    assert got.shape == shape and got.dtype == np.float32
    assert np.abs(got - torch_reference(translate_run, x)).max() < 1e-4


def test_plain_onnxruntime_translates_a_one_pixel_image(translate_onnx):
    """The graph pads a 1 x 1 input up to the smallest size its resnet runs on (its instance norm and
    reflection padding fail at the multiple of 4 alone) and crops back; the metadata says so."""
    meta = {p.key: p.value for p in onnx.load(str(translate_onnx)).metadata_props}
    assert meta["min_size"] == "1"
    got = session(translate_onnx).run(["translated"], {"image": np.zeros((1, 3, 1, 1), np.float32)})[0]
    assert got.shape == (1, 3, 1, 1) and np.isfinite(got).all()


def test_export_prints_the_measured_parity_and_leaves_one_file(tmp_path):
    console = quiet()
    path = export_generator(TinyNet(), tmp_path / "g.onnx", in_channels=3, out_channels=3, size_multiple=1,
                            console=console)
    text = console.file.getvalue()
    assert path.is_file() and "max abs diff" in text and "limit 0.0001" in text
    figure = float(text.split("max abs diff ")[1].split()[0])
    assert 0 <= figure < 1e-4
    assert sorted(os.listdir(tmp_path)) == ["g.onnx"]  # no temporary files left behind


def test_half_export_keeps_float32_io_and_stores_float16_weights(translate_run, translate_onnx, tmp_path):
    path = export(translate_run, tmp_path / "g16.onnx", half=True, console=quiet())
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert conv_weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in conv_weights)
    assert {p.key: p.value for p in model.metadata_props}["precision"] == "fp16"
    full = [t for t in onnx.load(str(translate_onnx)).graph.initializer if len(t.dims) == 4]
    assert sum(len(t.raw_data) for t in conv_weights) * 2 == sum(len(t.raw_data) for t in full)
    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(4)) * 2 - 1
    got = session(path).run(["translated"], {"image": x.numpy()})[0]
    assert got.dtype == np.float32
    assert np.abs(got - torch_reference(translate_run, x)).max() < onnx_graph.PARITY_FP16
    Translator.from_onnx(path, precision="fp16")  # a half file accepts --precision fp16


def test_unet_with_a_multiple_larger_than_the_image_exports_and_runs_at_20px(tmp_path):
    from img2img.default_plugins.unet import unet_128

    torch.manual_seed(0)
    net = unet_128(3, 3, ngf=4, init="kaiming").eval()
    path = export_generator(net, tmp_path / "unet.onnx", in_channels=3, out_channels=3, size_multiple=128,
                            console=quiet())
    x = torch.rand(1, 3, 20, 20) * 2 - 1
    got = session(path).run(["translated"], {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = SizeAdapter(net, 128)(x).numpy()
    assert got.shape == (1, 3, 20, 20)
    assert np.abs(got - expected).max() < 1e-4


# -- failures and large files --------------------------------------------------------------------

def test_failed_parity_is_an_error_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_graph, "PARITY_FP32", -1.0)
    with pytest.raises(Img2ImgError, match=r"max abs difference .* exceeds -1; the file was not written"):
        export_generator(TinyNet(), tmp_path / "g.onnx", in_channels=3, out_channels=3, size_multiple=1,
                         console=quiet())
    assert os.listdir(tmp_path) == []


def test_large_weights_go_to_an_external_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_graph, "EXTERNAL_DATA_BYTES", 0)
    path = export_generator(TinyNet(), tmp_path / "g.onnx", in_channels=3, out_channels=3, size_multiple=1,
                            console=quiet())
    assert sorted(os.listdir(tmp_path)) == ["g.onnx", "g.onnx.data"]
    x = np.zeros((1, 3, 20, 24), np.float32)
    assert session(path).run(["translated"], {"image": x})[0].shape == (1, 3, 20, 24)


def test_an_onnx_file_cannot_be_exported_again(translate_onnx, tmp_path):
    with pytest.raises(Img2ImgError, match="already an ONNX file"):
        export(translate_onnx, tmp_path / "again.onnx", console=quiet())


# -- safetensors ---------------------------------------------------------------------------------

def test_safetensors_round_trip_through_the_registry(translate_run, tmp_path):
    path = export(translate_run, tmp_path / "g.safetensors", fmt="safetensors", console=quiet())
    sidecar = json.loads((tmp_path / "g.safetensors.json").read_text())
    assert sidecar["generator"]["name"] == "resnet_6blocks" and sidecar["generator"]["ngf"] == 4
    assert (sidecar["in_channels"], sidecar["out_channels"], sidecar["direction"], sidecar["task"]) == \
        (3, 3, "a2b", "cyclegan")
    assert sidecar["pipeline_name"] == "tiny-translate" and sidecar["img2img_version"]
    original = load_generator(translate_run, "a2b")
    rebuilt = load_safetensors_generator(path)
    x = torch.rand(1, 3, 32, 36) * 2 - 1
    with torch.no_grad():
        assert torch.equal(rebuilt.module(x), original.module(x))
    (tmp_path / "g.safetensors.json").unlink()  # the file's own metadata is enough
    assert load_safetensors_generator(path).in_channels == 3
    image = np.random.default_rng(0).integers(0, 256, (30, 42, 3), dtype=np.uint8)
    np.testing.assert_array_equal(Translator.from_run(path, device="cpu").translate(image),
                                  Translator.from_run(translate_run, device="cpu").translate(image))


# -- command line --------------------------------------------------------------------------------

def test_cli_export_safetensors_exits_zero(translate_run, tmp_path):
    result = runner.invoke(app, ["export", str(translate_run), "--out", str(tmp_path / "g.safetensors"),
                                 "--format", "safetensors"])
    assert result.exit_code == 0, result.output
    assert "exported" in result.output and (tmp_path / "g.safetensors.json").is_file()


@pytest.mark.parametrize("args,message", [
    (["--out", "{tmp}/g.onnx", "--direction", "a2b"], "no such checkpoint"),
    (["--out", "{tmp}/g.onnx", "--format", "safetensors"], "ends in .onnx"),
    (["--out", "{tmp}"], "is a folder"),
])
def test_cli_export_user_errors_exit_one(translate_run, tmp_path, args, message):
    model = str(tmp_path / "missing-run") if message == "no such checkpoint" else str(translate_run)
    result = runner.invoke(app, ["export", model, *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_cli_export_bad_usage_exits_two(translate_run, tmp_path):
    result = runner.invoke(app, ["export", str(translate_run), "--out", str(tmp_path / "g.onnx"), "--opset", "9"])
    assert result.exit_code == 2


def test_export_never_replaces_a_file_that_is_not_an_earlier_export(translate_run, tmp_path):
    from PIL import Image

    picture = tmp_path / "pic.png"
    Image.new("RGB", (4, 4), (200, 10, 10)).save(picture)
    before = picture.read_bytes()
    result = runner.invoke(app, ["export", str(translate_run), "--out", str(picture), "--no-check"])
    out = user_error(result, f"--out {picture} already exists and it is a PNG image", "--overwrite")
    assert picture.read_bytes() == before
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes")
    user_error(runner.invoke(app, ["export", str(translate_run), "--out", str(notes), "--format", "safetensors"]),
               f"--out {notes} already exists", "--overwrite")
    assert notes.read_text() == "my notes"
    assert "note:" in out and "does not end in .onnx" in out  # the suffix is named before the refusal

    forced = runner.invoke(app, ["export", str(translate_run), "--out", str(picture), "--no-check", "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert onnx.load(str(picture)).graph.input[0].name == "image"


def test_an_earlier_export_of_the_same_format_is_replaced_without_overwrite(translate_run, tmp_path):
    target = tmp_path / "g.onnx"
    for _ in range(2):
        result = runner.invoke(app, ["export", str(translate_run), "--out", str(target), "--no-check"])
        assert result.exit_code == 0, result.output
        assert "note:" not in result.output


def test_onnxruntime_stores_no_device_id_under_home(translate_run, tmp_path):
    """onnxruntime writes ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ (a device id, an event store)
    when it loads, unless ORT_DISABLE_TELEMETRY is set: img2img sets it for export, translate and serve."""
    import subprocess
    import sys

    from img2img.testing import write_images

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    write_images(tmp_path / "in", 1, 16)
    for args in (["export", str(translate_run), "--out", str(tmp_path / "g.onnx")],
                 ["translate", str(tmp_path / "in"), "--model", str(tmp_path / "g.onnx"), "--out", str(tmp_path / "out"),
                  "--device", "cpu"]):
        result = subprocess.run([sys.executable, "-m", "img2img", *args], env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "out" / "img000.png").is_file()
    assert not (home / ".cache" / "Microsoft").exists(), sorted(str(p) for p in home.rglob("*"))
