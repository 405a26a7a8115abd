"""The two ways a translator computes: a torch module on a device, or an exported ONNX file in onnxruntime.

Both take NxCxHxW float32 batches in [-1, 1] on the CPU and return NxC'xHxW float32 on the CPU at the
same size: the torch backend pads to the generator's size multiple and crops back, an exported ONNX
graph does that itself.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from img2img import precision as precisions
from img2img.devices import select_device
from img2img.engine.checkpoint import LoadedGenerator
from img2img.errors import Img2ImgError, first_line
from img2img.inference.padding import SizeAdapter
from img2img.inference.tiling import InstanceNormStats, choose_tile_norm


def import_onnxruntime():
    """onnxruntime with its telemetry events off (unless ORT_DISABLE_TELEMETRY=0): img2img sends nothing
    anywhere, and `img2img` sets ORT_DISABLE_TELEMETRY=1 so that onnxruntime stores no device id either."""
    import onnxruntime as ort

    if os.environ.get("ORT_DISABLE_TELEMETRY", "1") != "0":
        ort.disable_telemetry_events()
    return ort


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's arithmetic units)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, len(cpus))
    cores = set()
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "processor" in fields and int(fields["processor"]) in cpus:
            cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    return max(1, len(cores) or len(cpus))


class TorchBackend:
    """A generator module on a device, with optional autocast; pads to its multiple and crops back."""

    kind = "torch"

    def __init__(self, module: nn.Module, *, in_channels: int, out_channels: int, size_multiple: int,
                 direction: str, device: str = "auto", precision: str = "fp32", channels_last: bool = False,
                 label: str = "", source: Path | None = None):
        self.device = select_device(device)
        self.precision = precisions.resolve(precision, self.device)  # `auto` is decided for this device
        self.dtype = precisions.DTYPES.get(self.precision)
        self.channels_last = bool(channels_last)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.module = module.eval().to(self.device, memory_format=self.memory_format)
        self.adapter = SizeAdapter(self.module, size_multiple)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_multiple = size_multiple
        self.direction = direction
        self.label = label
        self.source = source
        self.notes: list[str] = []

    @classmethod
    def from_loaded(cls, loaded: LoadedGenerator, device: str, precision: str,
                    channels_last: bool = False) -> TorchBackend:
        gen = getattr(getattr(loaded.pipeline, "model", None), "generator", None)
        label = f"{gen.name} " if gen is not None else ""
        return cls(loaded.module, in_channels=loaded.in_channels, out_channels=loaded.out_channels,
                   size_multiple=loaded.size_multiple, direction=loaded.direction, device=device,
                   precision=precision, channels_last=channels_last, label=label + loaded.direction + (", EMA" if loaded.ema else ""),
                   source=loaded.checkpoint)

    def describe(self) -> str:
        layout = ", channels_last" if self.channels_last else ""
        return f"{self.label or self.direction} (torch, {self.device}, {self.precision}{layout})"

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """NxCxHxW float32 in [-1, 1] (CPU) -> NxC'xHxW float32 on the CPU."""
        with torch.inference_mode(), self._autocast():
            y = self.adapter(batch.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format))
        return y.float().cpu().contiguous()

    def tile_context(self, image: torch.Tensor, stats_size: int, tile_norm: str, *, tile: int | None = None,
                     overlap: int = 0):
        """Global instance-norm statistics for the tiles of `image`, when asked for (or, for ``auto``,
        when `choose_tile_norm` finds them closer than each tile's own) and relevant."""
        if tile_norm == "local":
            return nullcontext()

        def run(x: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return self.module(x.to(self.device))

        if tile_norm == "auto" and tile is not None:
            chosen = choose_tile_norm(self.module, image, tile=tile, overlap=overlap, multiple=self.size_multiple,
                                      stats_size=stats_size, run=run)
            if chosen == "local":
                return nullcontext()

        stats = InstanceNormStats.capture(self.module, image, size=stats_size, multiple=self.size_multiple, run=run)
        return stats.applied(self.module) if len(stats) else nullcontext()


class OnnxBackend:
    """An exported ONNX file in onnxruntime; its graph pads and crops by itself."""

    kind = "onnx"

    def __init__(self, path: Path, device: str = "auto", precision: str = "fp32", direction: str | None = None,
                 channels_last: bool = False):
        ort = import_onnxruntime()

        path = Path(path)
        if channels_last:
            raise Img2ImgError("--channels-last applies to torch models; onnxruntime chooses the layout of "
                               f"{path.name}'s convolutions itself. Leave the flag out for an ONNX file.")
        if not path.is_file():
            raise Img2ImgError(f"no such ONNX file: {path}" + ("" if not path.exists() else " (it is a folder)"))
        precision = precisions.parse(precision)
        available = ort.get_available_providers()
        if device in ("auto", "cuda") or device.startswith("cuda:"):
            if "CUDAExecutionProvider" in available:
                index = int(device.split(":", 1)[1]) if ":" in device else 0
                providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
            elif device == "auto":
                providers = ["CPUExecutionProvider"]
            else:
                raise Img2ImgError(f"--device {device}: this onnxruntime has no CUDA provider "
                                   "(install onnxruntime-gpu); use --device cpu")
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise Img2ImgError(f"--device {device}: ONNX models run on cpu or cuda")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = physical_cores()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unparsable files
            raise Img2ImgError(f"{path} is not an ONNX model onnxruntime can load ({first_line(exc)}); "
                               "export one with `img2img export RUN --out FILE.onnx`") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        out_shape = self.session.get_outputs()[0].shape
        graph_in = inp.shape[1] if len(inp.shape) == 4 and isinstance(inp.shape[1], int) else None
        graph_out = out_shape[1] if len(out_shape) == 4 and isinstance(out_shape[1], int) else None
        self.in_channels = _metadata_int(meta, "in_channels", graph_in or 3, path)
        self.out_channels = _metadata_int(meta, "out_channels", graph_out or self.in_channels, path)
        self.size_multiple = _metadata_int(meta, "size_multiple", 1, path)
        for key, said, graph in (("in_channels", self.in_channels, graph_in),
                                 ("out_channels", self.out_channels, graph_out)):
            if graph is not None and said != graph:
                raise Img2ImgError(f"{path} is inconsistent: its metadata says {key}={said} but its graph's "
                                   f"{'input' if key == 'in_channels' else 'output'} has {graph} channels; export "
                                   "it again with `img2img export`, or correct the metadata")
        self.direction = meta.get("direction", direction or "a2b")
        self.file_precision = meta.get("precision", "fp32")
        if precision not in ("fp32", "auto") and not (precision == "fp16" and self.file_precision == "fp16"):
            raise Img2ImgError(
                f"--precision {precision} applies to torch models; {path} is a {self.file_precision} ONNX file. "
                "Use --precision fp32, or export with `img2img export --half` for float16 compute.")
        self.precision = self.file_precision
        self.source = path
        self.notes = []
        if direction is not None and direction != self.direction:
            self.notes.append(f"{path.name} translates {self.direction} (its metadata); --direction {direction} "
                              "does not apply to an exported file")
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def describe(self) -> str:
        gen = self.metadata.get("generator")
        name = f"{gen} " if gen else ""
        return f"{name}{self.direction} (onnxruntime, {self.device}, {self.precision})"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        y = self.session.run([self.output_name], {self.input_name: x})[0]
        return torch.from_numpy(np.asarray(y, dtype=np.float32))

    def tile_context(self, image: torch.Tensor, stats_size: int, tile_norm: str, *, tile: int | None = None,
                     overlap: int = 0):
        return nullcontext()  # the statistics inside an ONNX graph cannot be substituted


def _metadata_int(meta: dict[str, str], key: str, default: int, path: Path) -> int:
    """A positive whole number from an ONNX file's metadata (`default` when absent), else an error naming it."""
    if key not in meta:
        return int(default)
    text = str(meta[key]).strip()
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise Img2ImgError(f"{path} has a damaged metadata entry: {key}={meta[key]!r} is not a positive whole "
                           "number; export it again with `img2img export`, or correct the metadata")
    return int(text)


_TorchBackend, _OnnxBackend = TorchBackend, OnnxBackend  # the names img2img 0.1 used
