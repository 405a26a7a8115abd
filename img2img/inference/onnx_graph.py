"""The ONNX graph of a generator: wrapped in `SizeAdapter`, written atomically, checked against torch.

The graph pads any height and width to the generator's size multiple (and up to the smallest size the
generator runs on) and crops back, so the deployed file takes any image, down to 1 x 1 pixel. Input
``image`` and output ``translated`` are float32 NCHW in [-1, 1] with dynamic batch, height and width;
``metadata_props`` (`onnx_metadata`) say everything else a deployer needs. `img2img.inference.export`
(float32/float16) and `img2img.inference.quantize` (int8) both write through `export_generator`.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from img2img import atomic
from img2img._version import __version__
from img2img.errors import Img2ImgError, first_line
from img2img.inference.tiling import SizeAdapter, minimum_size

__all__ = ["export_generator", "onnx_metadata", "PARITY_FP16", "PARITY_FP32", "MIN_SIZE"]

PARITY_FP32 = 1e-4
"""Largest max-abs difference between onnxruntime and torch accepted for a float32 export."""
PARITY_FP16 = 2e-2
"""The same for ``--half`` (float16 weights and arithmetic, compared with the float32 torch model)."""
MIN_SIZE = 1
"""The smallest height and width an exported graph takes (it pads smaller images up itself)."""
EXTERNAL_DATA_BYTES = 1_800_000_000
"""Weights above this go to ``<file>.data`` beside the model (protobuf caps one file at 2 GB)."""
PARITY_SHAPES = ((1, 37, 53), (2, 45, 31), (1, 1, 3))  # (batch, height, width): odd sizes, not the training size


class _Float32(nn.Module):
    """Run a normalisation layer in float32 inside a float16 graph (its sums overflow float16)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.float()).to(x.dtype)


class _Half(nn.Module):
    """Float32 in and out, float16 weights and arithmetic inside (normalisation kept in float32)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = _with_float32_norms(copy.deepcopy(generator).half())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x.half()).float()


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def _with_float32_norms(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, _NORMS):
            setattr(module, name, _Float32(child))
        else:
            _with_float32_norms(child)
    return module


def onnx_metadata(*, in_channels: int, out_channels: int, size_multiple: int, half: bool,
                  extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ``metadata_props`` of an exported file: everything a deployer needs besides the graph."""
    meta = {
        "value_range": "[-1, 1]",
        "layout": "NCHW",
        "input": "image",
        "output": "translated",
        "in_channels": str(in_channels),
        "out_channels": str(out_channels),
        "size_multiple": str(size_multiple),
        "min_size": str(MIN_SIZE),
        "precision": "fp16" if half else "fp32",
        "preprocessing": "x / 127.5 - 1",
        "postprocessing": "(y + 1) * 127.5",
        "img2img_version": __version__,
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def export_generator(generator: nn.Module, out: Path, *, in_channels: int, out_channels: int, size_multiple: int,
                     metadata: dict[str, str] | None = None, opset: int = 18, half: bool = False,
                     check: bool = True, console: Console | None = None) -> Path:
    """Export a generator module to `out` with the contract above; written atomically.

    With `check`, the file passes ``onnx.checker`` and onnxruntime must agree with torch (float32)
    on random inputs of odd sizes within `PARITY_FP32` (`PARITY_FP16` with `half`), or no file is
    written and Img2ImgError says by how much it missed.
    """
    import onnx

    console = console or Console()
    out = Path(out)
    generator = generator.eval().cpu().float()
    example = torch.rand(2, in_channels, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    smallest = minimum_size(generator, size_multiple, example)  # a constant of the graph's padding
    reference = SizeAdapter(generator, size_multiple, smallest).eval()
    wrapped = SizeAdapter(_Half(generator) if half else generator, size_multiple, smallest).eval()
    meta = onnx_metadata(in_channels=in_channels, out_channels=out_channels, size_multiple=size_multiple,
                         half=half, extra=metadata)
    batch, height, width = (torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("height", min=MIN_SIZE),
                            torch.export.Dim("width", min=MIN_SIZE))
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapped, (example,), input_names=["image"], output_names=["translated"], opset_version=opset,
                dynamo=True, verbose=False, dynamic_shapes={"image": {0: batch, 2: height, 3: width}},
            )
    except Exception as exc:
        raise Img2ImgError(f"this generator ({type(generator).__name__}) could not be exported to ONNX opset "
                           f"{opset}: {first_line(exc)}") from exc
    model = program.model
    model.metadata_props.update(meta)
    model.doc_string = ("img2img generator: input 'image' float32 NCHW in [-1, 1] (x / 127.5 - 1), output "
                        "'translated' of the same height and width ((y + 1) * 127.5); dynamic batch, height, width.")
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    data_name = f"{out.name}.data" if weight_bytes > EXTERNAL_DATA_BYTES else None
    diff = None
    try:
        with atomic.atomic_path(out) as tmp:
            import onnx_ir

            onnx_ir.save(model, tmp, external_data=data_name)
            onnx.checker.check_model(str(tmp))
            if check:
                diff, shapes = _parity(tmp, reference, in_channels)
                limit = PARITY_FP16 if half else PARITY_FP32
                if not diff <= limit:
                    raise Img2ImgError(
                        f"onnxruntime disagrees with torch on {out.name}: max abs difference {diff:.3g} on {shapes} "
                        f"exceeds {limit:g}; the file was not written. Try another --opset"
                        + ("" if half else " or report the generator") + ".")
    except BaseException:
        if data_name:
            (out.parent / data_name).unlink(missing_ok=True)
        raise
    size = out.stat().st_size + ((out.parent / data_name).stat().st_size if data_name else 0)
    checked = (f"onnxruntime vs torch max abs diff {diff:.2e} (limit {PARITY_FP16 if half else PARITY_FP32:g})"
               if diff is not None else "parity not checked (--no-check)")
    console.print(f"[green]exported[/] {out} ({size / 2**20:.1f} MiB{', float16' if half else ''}, "
                  f"opset {opset}): {checked}", highlight=False)
    return out


def _parity(path: Path, reference: nn.Module, channels: int) -> tuple[float, str]:
    """Max abs difference of onnxruntime vs torch (float32) on random inputs of odd sizes."""
    from img2img.inference.backends import import_onnxruntime

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1234)
    worst = 0.0
    shapes = []
    for n, h, w in PARITY_SHAPES:
        x = torch.rand(n, channels, h, w, generator=gen) * 2 - 1
        with torch.inference_mode():
            expected = reference(x).numpy()
        got = session.run(["translated"], {"image": x.numpy()})[0]
        if got.shape != expected.shape:
            raise Img2ImgError(f"the exported graph returned {got.shape} for an input of {tuple(x.shape)}; "
                               f"expected {expected.shape}")
        worst = max(worst, float(np.abs(got.astype(np.float32) - expected).max()))
        shapes.append(f"{n}x{channels}x{h}x{w}")
    return worst, " and ".join(shapes)
