"""Folder translation: sizes, batching, formats, bit depths, unreadable files, safety rules, the CLI."""
import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from cli_support import user_error
from img2img.engine.checkpoint import load_generator
from img2img.cli import app
from img2img.data import image_bit_depth, read_image
from img2img.errors import Img2ImgError
from img2img.inference.translator import Translator, translate_inputs

runner = CliRunner()


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def text_of(console: Console) -> str:
    return console.file.getvalue()


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def translator(translate_run):
    return Translator.from_run(translate_run, device="cpu")


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Nested folders with jpg/webp/tif/png, L, RGBA and 16-bit images, a truncated png and a .txt."""
    root = tmp_path_factory.mktemp("mixed") / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rgb(37, 53, 1)).save(root / "a.jpg")
    Image.fromarray(rgb(40, 30, 2)).save(root / "sub" / "b.webp")
    Image.fromarray(rgb(33, 33, 3)[:, :, 0]).save(root / "sub" / "grey.png")
    Image.fromarray(np.dstack([rgb(21, 45, 4), np.full((21, 45), 128, np.uint8)])).save(root / "sub/deeper/alpha.png")
    sixteen = np.random.default_rng(5).integers(0, 65536, (19, 23, 3), dtype=np.uint16)
    cv2.imwrite(str(root / "sub" / "deeper" / "deep16.png"), sixteen)
    Image.fromarray(rgb(17, 16, 6)).save(root / "f.tif")
    Image.fromarray(rgb(64, 64, 7)).save(root / "broken.png")
    data = (root / "broken.png").read_bytes()
    (root / "broken.png").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not an image")
    return root


EXPECTED = {"a.jpg": (37, 53), "sub/b.webp": (40, 30), "sub/grey.png": (33, 33), "sub/deeper/alpha.png": (21, 45),
            "sub/deeper/deep16.png": (19, 23), "f.tif": (17, 16)}


# -- arrays and PIL images -----------------------------------------------------------------------

@pytest.mark.parametrize("size", [(37, 53), (75, 113), (16, 17), (64, 64)])
def test_output_has_exactly_the_input_size(translator, size):
    out = translator.translate(rgb(*size))
    assert out.shape == (*size, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("size", [(1, 1), (1, 40), (3, 2), (4, 4), (2, 1)])
def test_images_of_a_few_pixels_translate_at_their_size_with_both_backends(translator, translate_onnx, size):
    # a resnet's instance norm needs more than one value and its reflection padding a pad smaller than the side
    onnx = Translator.from_onnx(translate_onnx, device="cpu")
    image = rgb(*size, seed=9)
    torch_out, onnx_out = translator.translate(image), onnx.translate(image)
    assert torch_out.shape == onnx_out.shape == (*size, 3)
    if size != (1, 1):  # one pixel pads to a blank image, whose instance norm amplifies each runtime's round-off
        assert np.abs(torch_out.astype(int) - onnx_out).max() <= 1


def test_each_image_kind_comes_back_as_the_same_kind(translator):
    arr = rgb(24, 40)
    pil = translator.translate(Image.fromarray(arr))
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (40, 24)
    u8 = translator.translate(arr)
    np.testing.assert_array_equal(np.asarray(pil), u8)
    u16 = translator.translate(arr.astype(np.uint16) * 257)
    assert u16.dtype == np.uint16 and np.abs(u16 / 257.0 - u8).max() <= 1
    f32 = translator.translate(arr.astype(np.float32) / 255)
    assert f32.dtype == np.float32 and 0 <= f32.min() and f32.max() <= 1
    assert np.abs(f32 * 255 - u8).max() <= 1
    grey = translator.translate(arr[:, :, 0])  # HW input is read as one channel and converted
    assert grey.shape == (24, 40, 3)


def test_translator_matches_the_generator_itself(translate_run, translator):
    loaded = load_generator(translate_run, "a2b")
    arr = rgb(32, 48).astype(np.float32) / 255
    with torch.no_grad():
        expected = loaded.module(torch.from_numpy(arr).permute(2, 0, 1)[None] * 2 - 1)[0]
    expected = ((expected + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(translator.translate(arr), expected, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_batch_of_three_equals_three_single_runs(translate_run, translate_onnx, backend):
    model = translate_run if backend == "torch" else translate_onnx
    images = [rgb(36, 52, seed).astype(np.float32) / 255 for seed in range(3)]
    batched = Translator.load(model, device="cpu", batch_size=3)
    single = Translator.load(model, device="cpu", batch_size=1)
    calls = []
    original = batched.backend.__class__.__call__
    batched.backend.__class__.__call__ = lambda self, b: calls.append(b.shape[0]) or original(self, b)
    try:
        together = batched.translate_arrays(images)
    finally:
        batched.backend.__class__.__call__ = original
    assert calls == [3]
    for image, out in zip(images, together):
        np.testing.assert_allclose(out, single.translate_arrays([image])[0], atol=2e-5)


def test_channels_last_translates_like_the_default_layout(translate_run, translator):
    nhwc = Translator.from_run(translate_run, device="cpu", channels_last=True, batch_size=2)
    weight = next(p for p in nhwc.backend.module.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert "channels_last" in nhwc.describe()
    images = [rgb(36, 52, seed).astype(np.float32) / 255 for seed in range(2)] + [rgb(17, 29).astype(np.float32) / 255]
    for got, image in zip(nhwc.translate_arrays(images), images):
        assert got.shape == image.shape
        np.testing.assert_allclose(got, translator.translate_arrays([image])[0], atol=2e-5)


def test_channels_last_is_refused_for_an_onnx_file(translate_onnx):
    with pytest.raises(Img2ImgError, match="--channels-last applies to torch models"):
        Translator.load(translate_onnx, device="cpu", channels_last=True)


def test_onnx_and_torch_translate_alike(translator, translate_onnx):
    onnx = Translator.from_onnx(translate_onnx, device="cpu")
    assert (onnx.in_channels, onnx.out_channels, onnx.size_multiple, onnx.direction) == (3, 3, 4, "a2b")
    arr = rgb(45, 31)
    assert np.abs(onnx.translate(arr).astype(int) - translator.translate(arr).astype(int)).max() <= 1


def test_generator_channels_decide_the_output_mode(tmp_path):
    from img2img.default_plugins.resnet import resnet_6blocks

    for out_channels, mode in ((1, "L"), (4, "RGBA")):
        t = Translator.from_module(resnet_6blocks(3, out_channels, ngf=4), out_channels=out_channels, device="cpu")
        src = tmp_path / "in" / "x.png"
        src.parent.mkdir(exist_ok=True)
        Image.fromarray(rgb(20, 28)).save(src)
        report = t.translate_files([src], tmp_path / f"out{out_channels}", console=quiet())
        with Image.open(report.written[0]) as im:
            assert im.mode == mode and im.size == (28, 20)


# -- folders -------------------------------------------------------------------------------------

def test_mixed_folder_translates_every_image_at_its_size_and_lists_the_rest(translate_run, mixed_folder, tmp_path):
    console = quiet()
    report = translate_inputs([mixed_folder], model=translate_run, out=tmp_path / "out", device="cpu",
                              batch_size=2, console=console)
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in report.written)
    assert written == sorted(EXPECTED)
    for rel, (h, w) in EXPECTED.items():
        out = tmp_path / "out" / rel
        assert read_image(out, 3).shape[:2] == (h, w), rel
        assert image_bit_depth(out) == 8  # 16-bit in, 8-bit out unless keep_depth
    assert [(p.name, "truncated" in r) for p, r in report.failed] == [("broken.png", True)]
    assert [p.name for p, _ in report.ignored] == ["notes.txt"]
    text = text_of(console)
    assert "broken.png" in text and "notes.txt" in text and "translated 6 images" in text
    assert report.images_per_s > 0 and not report.skipped


@pytest.mark.parametrize("model", ["run", "onnx"])
def test_a_folder_with_one_pixel_images_translates_every_file(translate_run, translate_onnx, tmp_path, model):
    folder = tmp_path / "tiny"
    folder.mkdir()
    sizes = {"a-1x1.png": (1, 1), "b-2x3.png": (2, 3), "c-40x1.png": (40, 1), "d-24x24.png": (24, 24)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rgb(h, w, seed=h * 100 + w)).save(folder / name)
    result = runner.invoke(app, ["translate", str(folder), "--model", str(translate_run if model == "run" else
                                 translate_onnx), "--out", str(tmp_path / "out"), "--device", "cpu",
                                 "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "translated 4 images" in " ".join(result.output.split())
    for name, (h, w) in sizes.items():
        assert read_image(tmp_path / "out" / name, 3).shape[:2] == (h, w), name


def test_keep_depth_writes_sixteen_bit_output_for_sixteen_bit_input(translator, mixed_folder, tmp_path):
    report = translator.translate_files([mixed_folder / "sub" / "deeper" / "deep16.png"], tmp_path,
                                        keep_depth=True, console=quiet())
    assert image_bit_depth(report.written[0]) == 16


def test_existing_outputs_are_kept_unless_overwrite(translator, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb(20, 20)).save(src / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(out / "x.png")
    report = translator.translate_folder(src, out, console=quiet())
    assert report.written == [] and [p.name for p, _ in report.skipped] == ["x.png"]
    assert Image.open(out / "x.png").size == (5, 5)
    report = translator.translate_folder(src, out, overwrite=True, console=quiet())
    assert report.written == [out / "x.png"] and Image.open(out / "x.png").size == (20, 20)


@pytest.mark.parametrize("where", ["same", "inside"])
def test_never_writes_into_an_input_folder(translator, tmp_path, where):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb(20, 20)).save(src / "x.png")
    out = src if where == "same" else src / "translated"
    with pytest.raises(Img2ImgError, match="never writes into an input folder"):
        translator.translate_folder(src, out, console=quiet())
    assert sorted(os.listdir(src)) == ["x.png"]


def test_a_single_file_goes_to_out_by_name_and_format_can_change(translator, tmp_path):
    src = tmp_path / "photo.jpg"
    Image.fromarray(rgb(30, 41)).save(src)
    report = translator.translate_files([src], tmp_path / "out", fmt="png", console=quiet())
    assert report.written == [tmp_path / "out" / "photo.png"]
    with Image.open(report.written[0]) as im:
        assert im.format == "PNG" and im.size == (41, 30)


def test_resize_sets_the_shorter_side(translator, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb(40, 60)).save(src / "x.png")
    report = translator.translate_files([src], tmp_path / "out", resize=20, console=quiet())
    assert Image.open(report.written[0]).size == (30, 20)


def test_tiled_translation_keeps_the_size_and_stays_close(translate_run, tmp_path):
    src = tmp_path / "big.png"
    base = np.asarray(Image.fromarray(rgb(12, 16)).resize((150, 110), Image.BICUBIC))
    Image.fromarray(base).save(src)
    untiled = Translator.from_run(translate_run, device="cpu").translate(base)
    tiled = Translator.from_run(translate_run, device="cpu", tile=96, overlap=32, batch_size=4)
    assert tiled._tiling(110, 150) == (96, 32)
    out = tiled.translate_files([src], tmp_path / "out", console=quiet()).written[0]
    result = np.asarray(Image.open(out))
    assert result.shape == base.shape
    assert np.abs(result.astype(int) - untiled.astype(int)).mean() < 8
    whole = Translator.from_run(translate_run, device="cpu", tile=160)  # larger than the image: not tiled
    np.testing.assert_array_equal(whole.translate(base), untiled)


# -- errors --------------------------------------------------------------------------------------

def test_a_file_that_is_not_onnx_is_named(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("definitely not protobuf")
    with pytest.raises(Img2ImgError, match=r"model\.onnx is not an ONNX model"):
        Translator.from_onnx(fake)
    with pytest.raises(Img2ImgError, match="no such ONNX file"):
        Translator.from_onnx(tmp_path / "missing.onnx")


def test_onnx_precision_other_than_fp32_needs_a_half_file(translate_onnx):
    with pytest.raises(Img2ImgError, match="--half"):
        Translator.from_onnx(translate_onnx, precision="bf16")


def test_unknown_device_is_a_user_error(translate_run):
    with pytest.raises(Img2ImgError, match="--device"):
        Translator.from_run(translate_run, device="tpu")


# -- command line --------------------------------------------------------------------------------

def test_cli_translate_reports_and_exits_zero(translate_run, mixed_folder, tmp_path):
    result = runner.invoke(app, ["translate", str(mixed_folder), "--model", str(translate_run), "--out",
                                 str(tmp_path / "out"), "--device", "cpu", "-b", "3"])
    assert result.exit_code == 0, result.output
    assert "translated 6 images" in result.output and "broken.png" in result.output
    assert (tmp_path / "out" / "sub" / "deeper" / "alpha.png").is_file()
    strict = runner.invoke(app, ["translate", str(mixed_folder), "--model", str(translate_run), "--out",
                                 str(tmp_path / "out"), "--strict"])
    assert strict.exit_code == 1 and "skipped 6 existing" in strict.output
    nhwc = runner.invoke(app, ["translate", str(mixed_folder), "--model", str(translate_run), "--out",
                               str(tmp_path / "nhwc"), "--device", "cpu", "--channels-last"])
    assert nhwc.exit_code == 0, nhwc.output
    for name in EXPECTED:
        same = np.asarray(Image.open(tmp_path / "out" / name)).astype(int)
        assert np.abs(np.asarray(Image.open(tmp_path / "nhwc" / name)).astype(int) - same).max() <= 1, name


def test_cli_translate_with_onnx_model(translate_onnx, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb(37, 53)).save(src / "x.png")
    result = runner.invoke(app, ["translate", str(src), "--model", str(translate_onnx), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output and Image.open(tmp_path / "o" / "x.png").size == (53, 37)


@pytest.mark.parametrize("case", ["inside", "not-onnx", "missing-model"])
def test_cli_translate_user_errors_exit_one_without_traceback(translate_run, tmp_path, case):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb(20, 20)).save(src / "x.png")
    model, out, expected = str(translate_run), str(tmp_path / "out"), ""
    if case == "inside":
        out, expected = str(src / "out"), "never writes into an input folder"
    elif case == "not-onnx":
        (tmp_path / "m.onnx").write_bytes(b"\x00\x01garbage")
        model, expected = str(tmp_path / "m.onnx"), "is not an ONNX model"
    else:
        model, expected = str(tmp_path / "nope"), "no such checkpoint"
    result = runner.invoke(app, ["translate", str(src), "--model", model, "--out", out])
    assert result.exit_code == 1
    assert expected in " ".join(result.output.split()) and "Traceback" not in result.output


def test_an_input_linked_into_the_output_folder_is_left_alone(translator, tmp_path):
    out = tmp_path / "c6out"
    out.mkdir()
    precious = out / "photo.png"
    Image.fromarray(rgb(20, 20, 4)).save(precious)
    before = precious.read_bytes()
    inputs = tmp_path / "c6in"
    inputs.mkdir()
    (inputs / "photo.png").symlink_to(precious)
    Image.fromarray(rgb(20, 20, 5)).save(inputs / "other.png")
    console = quiet()
    report = translator.translate_files([inputs], out, overwrite=True, console=console)
    assert precious.read_bytes() == before
    assert [p.name for p in report.written] == ["other.png"]
    assert [p.name for p, _ in report.failed] == ["photo.png"]
    assert "never replaces an input" in " ".join(text_of(console).split())


def test_a_picture_given_as_the_model_is_called_a_picture_not_a_pickle(tmp_path):
    horse = tmp_path / "horse.png"
    Image.fromarray(rgb(8, 8)).save(horse)
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb(8, 8, 1)).save(tmp_path / "in" / "x.png")
    result = runner.invoke(app, ["translate", str(tmp_path / "in"), "--model", str(horse), "--out",
                                 str(tmp_path / "out")])
    out = user_error(result, f"{horse} is not an img2img checkpoint: it is a PNG image")
    assert "pickle" not in out and "nothing in the file was run" not in out
