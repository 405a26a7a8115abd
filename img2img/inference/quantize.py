"""``img2img export RUN --int8 --calibrate FOLDER``: a statically quantised (QDQ) int8 ONNX file.

The generator is exported to float32 ONNX first (checked against torch as any export), then
onnxruntime's `quantize_static` places QuantizeLinear/DequantizeLinear pairs around its convolutions,
with activation ranges taken from the user's own images (weights per channel, int8; activations
uint8). The int8 file is compared with the float32 one on those same images: PSNR and the largest and
mean difference are printed, and a file whose worst image falls below `MIN_PSNR` is refused unless
forced. onnxruntime and ``--backend openvino`` both run the file in int8.
"""
from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from img2img import atomic
from img2img.errors import Img2ImgError, first_line

MIN_PSNR = 30.0
"""dB on [0, 1] images: the worst calibration image's int8 output against float32's must reach this."""
REDUCE_RANGE = True
"""7-bit weights: CPUs without VNNI multiply uint8 by int8 in pairs summed into int16, which saturates
with full-range weights (OpenVINO's int8 on such a CPU then missed float32 by 4/255 mean; 7 bits halved
the gap in onnxruntime too)."""
MAX_IMAGES = 64
"""Calibration images used at most (the first in name order); more add time, not accuracy."""
MAX_SIDE = 512
"""Calibration images are downscaled so that their longer side is at most this (activation ranges
depend little on size; memory and time do)."""


def calibration_images(folder: Path, channels: int) -> tuple[list[np.ndarray], list[str]]:
    """NCHW float32 [-1, 1] arrays (batch 1) of up to `MAX_IMAGES` images under `folder`, and their names;
    unreadable images are skipped and listed."""
    from img2img.data.folders import list_images
    from img2img.data.images import ImageReadError, read_image, to_tensor

    folder = Path(folder)
    paths = list_images(folder, "--calibrate")
    arrays: list[np.ndarray] = []
    skipped: list[str] = []
    for path in paths:
        if len(arrays) == MAX_IMAGES:
            break
        try:
            arr = read_image(path, channels)
        except ImageReadError as exc:
            skipped.append(f"{path.relative_to(folder)} ({exc.reason})")
            continue
        x = to_tensor(arr).unsqueeze(0)
        h, w = x.shape[-2:]
        if max(h, w) > MAX_SIDE:
            scale = MAX_SIDE / max(h, w)
            x = torch.nn.functional.interpolate(x, size=(max(16, round(h * scale)), max(16, round(w * scale))),
                                                mode="area")
        if min(x.shape[-2:]) < 16:
            skipped.append(f"{path.relative_to(folder)} (smaller than 16 px)")
            continue
        arrays.append(np.ascontiguousarray(x.numpy(), dtype=np.float32))
    if not arrays:
        raise Img2ImgError(f"--calibrate {folder}: none of its images could be used ({'; '.join(skipped[:3])}); "
                           "give a folder of images like those the model will translate")
    return arrays, skipped


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over the calibration images."""

    def __init__(self, name: str, arrays: list[np.ndarray]):
        self.name = name
        self.arrays = arrays
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.arrays):
            return None
        self.index += 1
        return {self.name: self.arrays[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


def _session(path: Path):
    import onnxruntime as ort

    from img2img.inference.backends import physical_cores

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = physical_cores()
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def agreement(fp32: Path, int8: Path, arrays: list[np.ndarray]) -> dict[str, float]:
    """PSNR (dB, [0, 1] images; the worst image's and the mean) and the max and mean absolute difference
    (in 1/255 steps) of the int8 file's outputs against the float32 file's."""
    a, b = _session(fp32), _session(int8)
    psnrs, worst, total, count = [], 0.0, 0.0, 0
    for x in arrays:
        ya = a.run(None, {a.get_inputs()[0].name: x})[0]
        yb = b.run(None, {b.get_inputs()[0].name: x})[0]
        diff = np.abs(yb.astype(np.float64) - ya.astype(np.float64)) / 2.0  # [-1, 1] -> [0, 1]
        mse = float(np.mean(diff ** 2))
        psnrs.append(99.0 if mse == 0 else min(99.0, 10 * math.log10(1.0 / mse)))
        worst = max(worst, float(diff.max()))
        total += float(diff.sum())
        count += diff.size
    return {"psnr_min": min(psnrs), "psnr_mean": float(np.mean(psnrs)), "max_diff": worst * 255,
            "mean_diff": total / count * 255, "images": len(arrays)}


def quantize_file(fp32: Path, out: Path, arrays: list[np.ndarray]) -> None:
    """Write the QDQ int8 version of the float32 ONNX file `fp32` to `out`, calibrated on `arrays`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(out.stem + ".prepared.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    except Exception:  # shape inference is an optimisation; quantise the file as it is
        prepared = fp32
    name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
    quantize_static(str(prepared), str(out), _Reader(name, arrays), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv", "ConvTranspose"],
                    reduce_range=REDUCE_RANGE, extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def export_int8(generator: Any, out: Path, *, calibrate: Path, in_channels: int, out_channels: int,
                size_multiple: int, metadata: dict[str, str], opset: int = 18, force: bool = False,
                min_psnr: float = MIN_PSNR, console: Console | None = None) -> Path:
    """Export `generator` as a statically quantised int8 ONNX file calibrated on the images in `calibrate`."""
    import onnx

    from img2img.inference.onnx_graph import export_generator

    console = console or Console()
    out = Path(out)
    calibrate = Path(calibrate)
    if calibrate.is_dir() and out.resolve().is_relative_to(calibrate.resolve()):
        raise Img2ImgError(f"--out {out} is inside the calibration folder {calibrate}; img2img never writes into "
                           "an input folder: write the export elsewhere")
    arrays, skipped = calibration_images(calibrate, in_channels)
    for line in skipped[:5]:
        console.print(f"[yellow]skipped[/] calibration image {line}", highlight=False)
    with tempfile.TemporaryDirectory(prefix="img2img-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        quiet = Console(file=io.StringIO())
        export_generator(generator, fp32, in_channels=in_channels, out_channels=out_channels,
                         size_multiple=size_multiple, metadata=metadata, opset=opset, check=True, console=quiet)
        int8 = Path(tmp) / "int8.onnx"
        try:
            quantize_file(fp32, int8, arrays)
        except Img2ImgError:
            raise
        except Exception as exc:
            raise Img2ImgError(f"onnxruntime could not quantise this generator: {first_line(exc)}; export it without "
                               "--int8 (float32), or with --half") from exc
        scores = agreement(fp32, int8, arrays)
        summary = (f"int8 vs float32 on {scores['images']} calibration image{'s' if scores['images'] != 1 else ''}: "
                   f"PSNR {scores['psnr_min']:.1f} dB worst, {scores['psnr_mean']:.1f} dB mean; max difference "
                   f"{scores['max_diff']:.1f}/255, mean {scores['mean_diff']:.2f}/255")
        if scores["psnr_min"] < min_psnr and not force:
            raise Img2ImgError(f"{summary}: below --min-psnr {min_psnr:g} dB, so {out} was not written. Calibrate on "
                               "more images like those the model will translate, export float32 (without --int8), or "
                               "add --force to write it anyway")
        model = onnx.load(str(int8))
        props = {p.key: p.value for p in model.metadata_props}
        props.update({"precision": "int8", "quantization": "static QDQ (onnxruntime), per-channel int8 weights, "
                      "uint8 activations", "calibration_images": str(scores["images"]),
                      "int8_psnr_db": f"{scores['psnr_min']:.2f}", "int8_max_diff_255": f"{scores['max_diff']:.2f}"})
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        with atomic.atomic_path(out) as target:
            onnx.save(model, str(target))
    warn = "[yellow]" if scores["psnr_min"] < min_psnr else "[green]"
    console.print(f"{warn}exported[/] {out} ({out.stat().st_size / 2**20:.1f} MiB, int8, opset {opset}): {summary}"
                  + (f" (below {min_psnr:g} dB, written because of --force)" if scores["psnr_min"] < min_psnr else ""),
                  highlight=False)
    return out
