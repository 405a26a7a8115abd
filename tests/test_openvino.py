"""CPU inference beyond torch: `--backend openvino` (fp32, bf16), int8 export (`export --int8 --calibrate`)
and `--backend auto`, each held to agreement with torch fp32 on photo-like images of odd sizes.

Agreement (8-bit outputs, in 1/255 steps): OpenVINO fp32 within 0.5 mean and 3 max of torch fp32, bf16
within 2 mean, int8 within 4 mean. The model is `translate_run` (resnet_6blocks trained a few steps).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_support import flat, user_error
from serve_support import ServerProcess, noise_image, pixels, png_bytes

ov = pytest.importorskip("openvino")

from img2img.errors import Img2ImgError  # noqa: E402
from img2img.inference import openvino as ov_backend  # noqa: E402
from img2img.inference.translator import Translator  # noqa: E402
from img2img.registry import get_registry  # noqa: E402

runner = CliRunner()
ODD_SIZES = [(83, 61), (150, 97)]  # width, height: neither a multiple of the generator's 4
BF16 = ov_backend.bf16_supported()


def photos(seed: int = 0) -> list[np.ndarray]:
    return [np.asarray(noise_image(w, h, seed=seed + i)) for i, (w, h) in enumerate(ODD_SIZES)]


def differences(ours: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    diff = np.abs(ours.astype(np.int32) - reference.astype(np.int32))
    return float(diff.mean()), int(diff.max())


def agreement(translator: Translator, reference: Translator, seed: int = 0) -> tuple[float, int]:
    """Mean (over all pixels of all images) and max difference of 8-bit outputs."""
    means, worst = [], 0
    for image in photos(seed):
        out, expected = translator.translate(image), reference.translate(image)
        assert out.shape == expected.shape == image.shape
        mean, top = differences(out, expected)
        means.append(mean)
        worst = max(worst, top)
    return float(np.mean(means)), worst


TILING = {"whole": {}, "tiled": {"tile": 48, "overlap": 16, "tile_norm": "local"}}


@pytest.fixture(scope="module")
def torch_fp32(translate_run):
    return {name: Translator.load(translate_run, device="cpu", **options) for name, options in TILING.items()}


@pytest.mark.parametrize("tiling", list(TILING))
def test_openvino_fp32_agrees_with_torch_fp32(translate_run, torch_fp32, tiling):
    translator = Translator.load(translate_run, backend="openvino", **TILING[tiling])
    assert "(openvino, cpu, fp32)" in translator.describe()
    mean, worst = agreement(translator, torch_fp32[tiling])
    assert mean <= 0.5 and worst <= 3, (mean, worst)


def test_openvino_runs_the_exported_onnx_file_like_torch(translate_onnx, torch_fp32):
    translator = Translator.load(translate_onnx, backend="openvino")
    assert translator.direction == "a2b" and "openvino" in translator.describe()
    mean, worst = agreement(translator, torch_fp32["whole"], seed=5)
    assert mean <= 0.5 and worst <= 3, (mean, worst)


def test_a_batch_of_mixed_sizes_and_threads_share_one_compiled_model(translate_run, torch_fp32):
    """One model compiled with dynamic shapes serves every size, from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    translator = Translator.load(translate_run, backend="openvino", batch_size=3)
    images = [np.asarray(noise_image(w, h, seed=i)) for i, (w, h) in enumerate([(40, 33), (40, 33), (57, 90)] * 3)]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda im: translator.translate(im), images))
    batch = translator.translate_arrays([im.astype(np.float32) / 255 for im in images[:3]])
    for image, out in zip(images, outputs):
        assert differences(out, torch_fp32["whole"].translate(image))[1] <= 3
    assert [b.shape[:2] for b in batch] == [im.shape[:2] for im in images[:3]]


@pytest.mark.skipif(not BF16, reason="this CPU has no bf16 arithmetic OpenVINO uses")
@pytest.mark.parametrize("tiling", list(TILING))
def test_openvino_bf16_agrees_with_torch_fp32(translate_run, torch_fp32, tiling):
    translator = Translator.load(translate_run, backend="openvino", precision="bf16", **TILING[tiling])
    assert "(openvino, cpu, bf16)" in translator.describe()
    mean, _ = agreement(translator, torch_fp32[tiling])
    assert mean <= 2.0, mean


@pytest.mark.skipif(BF16, reason="this CPU has bf16 arithmetic")
def test_bf16_is_refused_where_the_cpu_has_none(translate_run, tmp_path):
    from img2img.cli import app

    noise_image(20, 20).save(tmp_path / "in.png")
    result = runner.invoke(app, ["translate", str(tmp_path / "in.png"), "--model", str(translate_run), "--out",
                                 str(tmp_path / "out"), "--backend", "openvino", "--precision", "bf16"])
    user_error(result, "--precision bf16: this CPU", "has no bf16 arithmetic OpenVINO can use", "--precision fp32")


# ---------------------------------------------------------------------------------------------
# int8


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    for i, (w, h) in enumerate([(96, 72), (64, 64), (101, 67), (80, 120), (70, 70), (128, 96)]):
        noise_image(w, h, seed=100 + i).save(folder / f"photo-{i}.png")
    return folder


@pytest.fixture(scope="module")
def int8_file(translate_run, calibration, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("int8") / "g-int8.onnx"
    result = subprocess.run([sys.executable, "-m", "img2img", "export", str(translate_run), "--out", str(out),
                             "--int8", "--calibrate", str(calibration)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, flat(result.stdout)


def test_int8_export_reports_its_agreement_and_records_it(int8_file):
    import onnx

    path, output = int8_file
    assert "int8 vs float32 on 6 calibration images: PSNR" in output and "max difference" in output
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "int8" and meta["calibration_images"] == "6" and meta["direction"] == "a2b"
    assert float(meta["int8_psnr_db"]) >= 30
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ: int8 convolutions for any runtime


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_agrees_with_torch_fp32_on_other_photos(int8_file, torch_fp32, backend):
    translator = Translator.load(int8_file[0], backend=backend)
    assert f"({backend}, cpu, int8)" in translator.describe()
    mean, _ = agreement(translator, torch_fp32["whole"], seed=50)  # not the calibration images
    assert mean <= 4.0, mean


def test_int8_below_the_threshold_is_refused_unless_forced(translate_run, calibration, tmp_path):
    from img2img.cli import app

    out = tmp_path / "g.onnx"
    args = ["export", str(translate_run), "--out", str(out), "--int8", "--calibrate", str(calibration),
            "--min-psnr", "90"]
    text = user_error(runner.invoke(app, args), "below --min-psnr 90 dB", f"{out} was not written", "--force")
    assert "PSNR" in text and not out.exists() and not list(tmp_path.iterdir())
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "written because of --force" in flat(result.output)


@pytest.mark.parametrize("extra, needles", [
    (["--int8"], ["--int8 needs --calibrate FOLDER"]),
    (["--calibrate", "{cal}"], ["--calibrate applies to int8 export; add --int8"]),
    (["--int8", "--calibrate", "{cal}", "--half"], ["--int8 and --half are two different exports"]),
    (["--int8", "--calibrate", "{empty}"], ["--calibrate: the folder", "contains no images"]),
])
def test_int8_usage_errors(translate_run, calibration, tmp_path, extra, needles):
    from img2img.cli import app

    (tmp_path / "empty").mkdir()
    extra = [e.format(cal=calibration, empty=tmp_path / "empty") for e in extra]
    user_error(runner.invoke(app, ["export", str(translate_run), "--out", str(tmp_path / "g.onnx"), *extra]), *needles)
    assert not (tmp_path / "g.onnx").exists()


def test_int8_never_writes_into_the_calibration_folder(translate_run, calibration):
    from img2img.cli import app

    before = sorted(calibration.iterdir())
    user_error(runner.invoke(app, ["export", str(translate_run), "--out", str(calibration / "g.onnx"), "--int8",
                                   "--calibrate", str(calibration)]), "is inside the calibration folder")
    assert sorted(calibration.iterdir()) == before


# ---------------------------------------------------------------------------------------------
# --backend auto


def test_backend_auto_measures_once_records_and_reuses_its_choice(translate_run, tmp_path, monkeypatch):
    from img2img.cli import app

    monkeypatch.setenv("IMG2IMG_CACHE", str(tmp_path / "cache"))
    noise_image(75, 51).save(tmp_path / "in.png")
    args = ["translate", str(tmp_path / "in.png"), "--model", str(translate_run), "--out", str(tmp_path / "out"),
            "--backend", "auto", "--precision", "auto", "--overwrite"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    cache = tmp_path / "cache" / "img2img" / "backends.json"
    entries = json.loads(cache.read_text())
    (entry,) = entries.values()
    choice = entry["choice"]
    assert entry["reference"] == "torch fp32" and {"torch fp32", "openvino fp32"} <= set(entry["measured"])
    assert entry["measured"][choice]["agrees"]
    agreeing = {n: r["speedup"] for n, r in entry["measured"].items() if r.get("agrees")}
    assert agreeing[choice] == max(agreeing.values())
    text = flat(first.output)
    assert f"chose {choice}" in text and "measured now and recorded in" in text
    assert f"auto: {entry['measured'][choice]['speedup']:.2f}x torch fp32" in text  # the summary line says so
    written = cache.stat().st_mtime_ns
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert f"chose {choice}" in flat(second.output) and "delete it to measure again" in flat(second.output)
    assert cache.stat().st_mtime_ns == written  # not measured again
    from PIL import Image

    assert Image.open(tmp_path / "out" / "in.png").size == (75, 51)


def test_auto_never_chooses_a_faster_path_that_disagrees(tmp_path, monkeypatch):
    """A much faster generator that computes something else loses to a slower one that agrees."""
    import torch

    from img2img.inference import auto
    from img2img.inference.backends import TorchBackend

    monkeypatch.setenv("IMG2IMG_CACHE", str(tmp_path))
    torch.manual_seed(0)
    slow = torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 3, padding=1) for _ in range(30)], torch.nn.Tanh())

    def backend(module):
        return lambda: TorchBackend(module, in_channels=3, out_channels=3, size_multiple=1, direction="a2b",
                                    device="cpu")

    reference = auto.Candidate("torch fp32", "fp32", backend(slow))
    wrong = auto.Candidate("fast", "fp32", backend(torch.nn.Tanh()))
    runner_, choice, notes = auto.choose(reference, [reference, wrong], channels=3, shape="test", wanted="test")
    (measured,) = json.loads((tmp_path / "img2img" / "backends.json").read_text()).values()
    assert measured["measured"]["fast"]["speedup"] > 1 and not measured["measured"]["fast"]["agrees"]
    assert measured["choice"] == "torch fp32" and runner_.module is slow
    assert "fast" in notes[0] and "(disagrees)" in notes[0]


def test_auto_without_openvino_chooses_among_torch_and_says_how_to_get_it(translate_run, tmp_path, monkeypatch):
    monkeypatch.setenv("IMG2IMG_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    translator = Translator.load(translate_run, backend="auto")
    assert translator.backend.kind == "torch"
    assert any("OpenVINO is not installed" in n and "img2img-pipeline[openvino]" in n for n in translator.notes)


def test_backend_openvino_without_openvino_says_how_to_install_it(translate_run, tmp_path, monkeypatch):
    from img2img.cli import app

    monkeypatch.setitem(sys.modules, "openvino", None)
    noise_image(20, 20).save(tmp_path / "in.png")
    result = runner.invoke(app, ["translate", str(tmp_path / "in.png"), "--model", str(translate_run), "--out",
                                 str(tmp_path / "out"), "--backend", "openvino"])
    user_error(result, "--backend openvino needs OpenVINO", "pip install 'img2img-pipeline[openvino]'")


@pytest.mark.parametrize("model, backend, needles", [
    ("run", "onnx", ["--backend 'onnx': use torch, onnxruntime, openvino or auto"]),
    ("run", "onnxruntime", ["--backend onnxruntime runs an exported .onnx file", "img2img export"]),
    ("onnx", "torch", ["is an ONNX file: it runs in onnxruntime or openvino"]),
])
def test_backend_mismatches_are_user_errors(translate_run, translate_onnx, tmp_path, model, backend, needles):
    from img2img.cli import app

    noise_image(20, 20).save(tmp_path / "in.png")
    path = translate_run if model == "run" else translate_onnx
    result = runner.invoke(app, ["translate", str(tmp_path / "in.png"), "--model", str(path), "--out",
                                 str(tmp_path / "out"), "--backend", backend])
    user_error(result, *needles)


# ---------------------------------------------------------------------------------------------
# serve


def test_serve_backend_openvino_gives_translates_pixels(translate_run, tmp_path):
    import httpx

    image = noise_image(67, 45, seed=3)
    noise_image(67, 45, seed=3).save(tmp_path / "in.png")
    result = subprocess.run([sys.executable, "-m", "img2img", "translate", str(tmp_path / "in.png"), "--model",
                             str(translate_run), "--out", str(tmp_path / "out"), "--backend", "openvino"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    proc = ServerProcess([f"run={translate_run}", "--backend", "openvino", "--max-batch", "4"], tmp_path / "log")
    try:
        proc.wait_ready()
        models = httpx.get(f"{proc.url}/v1/models", timeout=30).json()["models"]
        assert "openvino, cpu, fp32" in models[0]["directions"]["a2b"]["runs_on"]
        response = httpx.post(f"{proc.url}/v1/models/run/translate", content=png_bytes(image), timeout=120)
        assert response.status_code == 200, response.text
        assert np.array_equal(pixels(response.content), pixels(tmp_path / "out" / "in.png"))
    finally:
        assert proc.stop() == 0, proc.log


@pytest.mark.skipif(BF16, reason="this CPU has bf16 arithmetic")
def test_auto_with_bf16_on_a_cpu_without_it_says_what_to_do(translate_run, tmp_path, monkeypatch):
    monkeypatch.setenv("IMG2IMG_CACHE", str(tmp_path))
    with pytest.raises(Img2ImgError, match=r"--precision bf16: no backend runs that precision natively .* "
                                           r"use --precision fp32 or auto"):
        Translator.load(translate_run, backend="auto", precision="bf16")


@pytest.mark.parametrize("name", get_registry().names("generator"))
def test_every_generator_compiles_in_openvino_and_agrees_at_an_odd_size(name):
    """What `--backend openvino` does to a run's generator (convert, compile, pad, crop), for every generator."""
    import torch

    from img2img.inference.openvino import OpenVinoBackend, _convert_module
    from img2img.inference.padding import SizeAdapter

    torch.manual_seed(0)
    fields = get_registry().get("generator", name).params.model_fields
    net = get_registry().build("generator", {"name": name, **({"ngf": 8} if "ngf" in fields else {})},
                               in_channels=3, out_channels=1).eval()
    multiple = int(getattr(net, "size_multiple", 1))
    backend = OpenVinoBackend(_convert_module(net, 3, multiple), in_channels=3, out_channels=1,
                              size_multiple=multiple, direction="a2b")
    x = torch.rand(2, 3, 37, 45) * 2 - 1
    with torch.no_grad():
        expected = SizeAdapter(net, multiple)(x)
    got = backend(x)
    assert got.shape == expected.shape == (2, 1, 37, 45)
    diff = (got - expected).abs() * 127.5  # grey levels of an 8-bit image
    assert float(diff.mean()) <= 0.5 and float(diff.max()) <= 3, (float(diff.mean()), float(diff.max()))


def test_backend_auto_on_an_onnx_file_chooses_between_onnxruntime_and_openvino(translate_onnx, torch_fp32, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("IMG2IMG_CACHE", str(tmp_path))
    translator = Translator.load(translate_onnx, backend="auto")
    (entry,) = json.loads((tmp_path / "img2img" / "backends.json").read_text()).values()
    assert entry["reference"] == "onnxruntime fp32" and set(entry["measured"]) == {"onnxruntime fp32", "openvino fp32"}
    assert translator.backend.kind == {"onnxruntime fp32": "onnx", "openvino fp32": "openvino"}[entry["choice"]]
    assert "auto:" in translator.describe()
    mean, worst = agreement(translator, torch_fp32["whole"], seed=7)
    assert mean <= 0.5 and worst <= 3
