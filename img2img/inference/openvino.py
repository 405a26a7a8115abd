"""The OpenVINO backend: a run's generator or an exported ONNX file (float32, float16 or int8) compiled
for this machine's CPU by OpenVINO (`pip install img2img-pipeline[openvino]`).

OpenVINO picks bf16 on its own on a bf16-capable CPU; this backend always sets the inference precision
(``f32`` for fp32, ``bf16`` for bf16) so that what runs is what was asked for. A model is converted and
compiled once per process with dynamic batch, height and width (on this project's CPUs a compiled
dynamic model ran no slower than one compiled per shape, and a new image size costs no compile; see
docs/benchmarks.md), and its threads are the physical cores, as for the other backends.
"""
from __future__ import annotations

import threading
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2img import precision as precisions
from img2img.engine.checkpoint import LoadedGenerator
from img2img.errors import Img2ImgError, first_line
from img2img.inference.padding import pad_to_multiple

INSTALL_HINT = "pip install 'img2img-pipeline[openvino]' (or: pip install openvino)"
PRECISIONS = ("fp32", "bf16")
_HINTS = {"fp32": "f32", "bf16": "bf16"}
_core_lock = threading.Lock()
_core: Any = None


def require_openvino():
    """The `openvino` module, or an Img2ImgError saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise Img2ImgError(f"--backend openvino needs OpenVINO, an optional extra of img2img: {INSTALL_HINT}; "
                           "or choose --backend torch (run folders) or onnxruntime (.onnx files)") from None
    return openvino


def core():
    """The process's one OpenVINO Core (it owns the CPU plugin and its thread pools)."""
    global _core
    ov = require_openvino()
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def capabilities() -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU, e.g. ['FP32', 'INT8', 'BF16']."""
    return [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def bf16_supported() -> bool:
    """Whether OpenVINO runs bf16 arithmetic on this CPU (AVX512-BF16 or AMX)."""
    return "BF16" in capabilities()


def check_precision(precision: str) -> str:
    """fp32 or bf16 for OpenVINO; bf16 only where this CPU has it."""
    kind = precisions.parse(precision)
    if kind == "auto":
        raise ValueError("resolve --precision auto before building an OpenVINO backend")
    if kind not in PRECISIONS:
        raise Img2ImgError(f"--precision {precision}: OpenVINO runs on the CPU in fp32 or bf16; use --precision fp32 "
                           "or bf16 (fp16 is for CUDA with --backend torch)")
    if kind == "bf16" and not bf16_supported():
        from img2img.precision import _cpu_name

        raise Img2ImgError(f"--precision bf16: this CPU ({_cpu_name()}) has no bf16 arithmetic OpenVINO can use "
                           f"(its capabilities: {', '.join(capabilities())}); use --precision fp32, or "
                           "--precision auto to take bf16 only where it exists and pays")
    return kind


def check_device(device: str) -> None:
    if device not in ("auto", "cpu"):
        raise Img2ImgError(f"--device {device}: --backend openvino runs on the CPU; use --device cpu (or auto), or "
                           "--backend torch for a GPU")


def _convert_module(module: torch.nn.Module, channels: int, multiple: int):
    """A torch generator as an OpenVINO model with dynamic batch, height and width."""
    ov = require_openvino()
    size = max(64, multiple)
    example = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            return ov.convert_model(module.eval().cpu().float(), example_input=example,
                                    input=[ov.PartialShape([-1, channels, -1, -1])])
    except Exception as exc:  # OpenVINO's frontends raise their own exception types
        raise Img2ImgError(f"OpenVINO could not convert this generator ({type(module).__name__}): {first_line(exc)}; "
                           "use --backend torch, or export to ONNX and run that with --backend openvino") from exc


class OpenVinoBackend:
    """A model compiled by OpenVINO for the CPU at an explicit inference precision.

    Converted from a torch generator it pads to the generator's multiple and crops back, as the torch
    backend does; an ONNX file written by `img2img export` pads inside its graph.
    """

    kind = "openvino"

    def __init__(self, model: Any, *, in_channels: int, out_channels: int, size_multiple: int, direction: str,
                 precision: str = "fp32", pad: bool = True, label: str = "", source: Path | None = None,
                 metadata: dict[str, str] | None = None, file_precision: str = "fp32"):
        from img2img.inference.backends import physical_cores

        self.precision = check_precision(precision)
        self.file_precision = file_precision
        self.threads = physical_cores()
        config = {"INFERENCE_PRECISION_HINT": _HINTS[self.precision], "INFERENCE_NUM_THREADS": self.threads,
                  "PERFORMANCE_HINT": "LATENCY"}
        try:
            self.compiled = core().compile_model(model, "CPU", config)
        except Exception as exc:
            raise Img2ImgError(f"OpenVINO could not compile {label or 'the model'} for the CPU: {first_line(exc)}") from exc
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_multiple = size_multiple
        self.direction = direction
        self.pad = pad
        self.label = label
        self.source = source
        self.metadata = dict(metadata or {})
        self.device = "cpu"
        self.notes: list[str] = []
        self._local = threading.local()

    @classmethod
    def from_loaded(cls, loaded: LoadedGenerator, precision: str = "fp32", device: str = "auto") -> OpenVinoBackend:
        check_device(device)
        check_precision(precision)
        gen = getattr(getattr(loaded.pipeline, "model", None), "generator", None)
        label = (f"{gen.name} " if gen is not None else "") + loaded.direction + (", EMA" if loaded.ema else "")
        model = _convert_module(loaded.module, loaded.in_channels, loaded.size_multiple)
        return cls(model, in_channels=loaded.in_channels, out_channels=loaded.out_channels,
                   size_multiple=loaded.size_multiple, direction=loaded.direction, precision=precision, pad=True,
                   label=label, source=loaded.checkpoint)

    @classmethod
    def from_onnx(cls, path: Path, precision: str = "fp32", device: str = "auto", direction: str | None = None,
                  channels_last: bool = False) -> OpenVinoBackend:
        import onnx

        path = Path(path)
        check_device(device)
        if channels_last:
            raise Img2ImgError("--channels-last applies to torch models; OpenVINO chooses the layout of "
                               f"{path.name}'s convolutions itself. Leave the flag out.")
        if not path.is_file():
            raise Img2ImgError(f"no such ONNX file: {path}" + ("" if not path.exists() else " (it is a folder)"))
        check_precision(precision)
        try:
            meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            model = core().read_model(str(path))
        except Img2ImgError:
            raise
        except Exception as exc:
            raise Img2ImgError(f"{path} is not an ONNX model OpenVINO can read ({first_line(exc)}); export one with "
                               "`img2img export RUN --out FILE.onnx`") from None
        inp, out = model.inputs[0].get_partial_shape(), model.outputs[0].get_partial_shape()
        fixed = lambda shape, i: shape.rank.is_static and len(shape) == 4 and shape[i].is_static  # noqa: E731
        in_channels = int(meta.get("in_channels", inp[1].get_length() if fixed(inp, 1) else 3))
        out_channels = int(meta.get("out_channels", out[1].get_length() if fixed(out, 1) else in_channels))
        backend = cls(model, in_channels=in_channels, out_channels=out_channels,
                      size_multiple=int(meta.get("size_multiple", 1)), direction=meta.get("direction", direction or "a2b"),
                      precision=precision, pad=False, label=meta.get("generator", ""), source=path, metadata=meta,
                      file_precision=meta.get("precision", "fp32"))
        if direction is not None and direction != backend.direction:
            backend.notes.append(f"{path.name} translates {backend.direction} (its metadata); --direction {direction} "
                                 "does not apply to an exported file")
        return backend

    @property
    def runs_as(self) -> str:
        """The arithmetic: the compute precision, or int8 for a quantised file."""
        return "int8" if self.file_precision == "int8" else self.precision

    def describe(self) -> str:
        name = f"{self.label} " if self.label else ""
        if self.metadata.get("direction") and self.label != self.direction:
            name += f"{self.direction} "
        arithmetic = self.runs_as if self.file_precision in ("fp32", "int8") else f"{self.file_precision} file, {self.precision}"
        return f"{name}(openvino, cpu, {arithmetic})"

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:  # an infer request is not thread-safe: one per thread (serve runs several)
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """NxCxHxW float32 in [-1, 1] (CPU) -> NxC'xHxW float32 on the CPU at the same size."""
        h, w = batch.shape[-2], batch.shape[-1]
        x = pad_to_multiple(batch.detach().cpu().float(), self.size_multiple) if self.pad else batch.detach().cpu()
        x = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        result = self._request().infer({0: x})
        y = np.array(next(iter(result.values())), dtype=np.float32, copy=True)  # the request reuses its buffer
        return torch.from_numpy(y[:, :, :h, :w]).contiguous()

    def tile_context(self, image: torch.Tensor, stats_size: int, tile_norm: str, *, tile: int | None = None,
                     overlap: int = 0):
        return nullcontext()  # the statistics inside a compiled graph cannot be substituted
