"""Translate images and folders with a trained generator (torch) or an exported ONNX file.

`Translator` is the one code path: `translate_inputs` (the `img2img translate` command) and
`Translator.translate_folder` plan the output files, then decode in a thread pool ahead of the
compute, batch images of equal size, tile large ones, and encode in the background. Every output
has its input's size: the torch backend pads to the generator's size multiple and crops back, an
exported ONNX graph does that itself.
"""
from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from img2img.data.folders import list_images
from img2img.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    _pil_to_float,
    _to_channels,
    image_bit_depth,
    read_image,
    save_image,
    to_image_array,
    to_tensor,
)
from img2img.devices import select_device
from img2img.engine.checkpoint import LoadedGenerator, load_generator
from img2img.errors import Img2ImgError, first_line
from img2img.inference.normstats import apply_norm_stats, check_onnx_norm_stats
from img2img.inference.tiling import InstanceNormStats, SizeAdapter, check_tiling, tile_plan, translate_tiled

__all__ = ["TranslateReport", "Translator", "physical_cores", "select_device", "translate_inputs"]

PRECISIONS = ("fp32", "bf16", "fp16")
FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp", "tif": ".tif", "tiff": ".tif"}


@dataclass
class TranslateReport:
    """What a folder translation did; `skipped` are existing outputs, `failed` unreadable inputs."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # non-image files inside input folders
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return len(self.written) / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Devices and backends


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


class _TorchBackend:
    """A generator module on a device, with optional autocast; pads to its multiple and crops back."""

    kind = "torch"

    def __init__(self, module: nn.Module, *, in_channels: int, out_channels: int, size_multiple: int,
                 direction: str, device: str = "auto", precision: str = "fp32", channels_last: bool = False,
                 label: str = "", source: Path | None = None):
        if precision not in PRECISIONS:
            raise Img2ImgError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.device = select_device(device)
        self.precision = precision
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
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
                    channels_last: bool = False) -> _TorchBackend:
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

    def tile_context(self, image: torch.Tensor, stats_size: int, tile_norm: str):
        """Global instance-norm statistics for the tiles of `image`, when asked for and relevant."""
        if tile_norm != "global":
            return nullcontext()

        def run(x: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return self.module(x.to(self.device))

        stats = InstanceNormStats.capture(self.module, image, size=stats_size, multiple=self.size_multiple, run=run)
        return stats.applied(self.module) if len(stats) else nullcontext()


class _OnnxBackend:
    """An exported ONNX file in onnxruntime; its graph pads and crops by itself."""

    kind = "onnx"

    def __init__(self, path: Path, device: str = "auto", precision: str = "fp32", direction: str | None = None,
                 channels_last: bool = False):
        import onnxruntime as ort

        path = Path(path)
        if channels_last:
            raise Img2ImgError("--channels-last applies to torch models; onnxruntime chooses the layout of "
                               f"{path.name}'s convolutions itself. Leave the flag out for an ONNX file.")
        if not path.is_file():
            raise Img2ImgError(f"no such ONNX file: {path}" + ("" if not path.exists() else " (it is a folder)"))
        if precision not in PRECISIONS:
            raise Img2ImgError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
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
        shape_channels = inp.shape[1] if len(inp.shape) == 4 and isinstance(inp.shape[1], int) else 3
        self.in_channels = int(meta.get("in_channels", shape_channels))
        out_shape = self.session.get_outputs()[0].shape
        self.out_channels = int(meta.get("out_channels", out_shape[1] if len(out_shape) == 4
                                         and isinstance(out_shape[1], int) else self.in_channels))
        self.size_multiple = int(meta.get("size_multiple", 1))
        self.direction = meta.get("direction", direction or "a2b")
        self.file_precision = meta.get("precision", "fp32")
        if precision != "fp32" and not (precision == "fp16" and self.file_precision == "fp16"):
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

    def tile_context(self, image: torch.Tensor, stats_size: int, tile_norm: str):
        return nullcontext()  # the statistics inside an ONNX graph cannot be substituted


# ---------------------------------------------------------------------------------------------
# Planning the output files


@dataclass
class _Job:
    src: Path
    dst: Path


@dataclass
class _Plan:
    jobs: list[_Job]
    skipped: list[tuple[Path, str]]
    ignored: list[tuple[Path, str]]
    failed: list[tuple[Path, str]]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _non_images(folder: Path, images: set[Path]) -> list[tuple[Path, str]]:
    """Files under `folder` that are not images (hidden files and folders aside)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and path not in images:
                found.append((path, f"not an image file (images are {', '.join(IMAGE_EXTENSIONS)})"))
    return found


def _plan(inputs: Sequence[Path], out: Path, fmt: str | None, overwrite: bool) -> _Plan:
    """Map every input image to its output path; refuse outputs inside an input folder."""
    if not inputs:
        raise Img2ImgError("give at least one input image or folder")
    if fmt is not None and fmt.lower().lstrip(".") not in FORMATS:
        raise Img2ImgError(f"--format {fmt!r}: use one of png, jpg, webp, tif")
    suffix = FORMATS[fmt.lower().lstrip(".")] if fmt else None
    out = Path(out)
    out_real = out.resolve()
    if out.exists() and not out.is_dir():
        raise Img2ImgError(f"--out {out} is a file; give a folder for the translated images")
    sources: list[tuple[Path, Path]] = []  # (image, path relative to the output folder)
    ignored: list[tuple[Path, str]] = []
    failed: list[tuple[Path, str]] = []
    for given in inputs:
        given = Path(given)
        real = given.resolve()
        if given.is_dir():
            if _inside(out_real, real):
                raise Img2ImgError(f"--out {out} is inside the input folder {given}; img2img never writes into "
                                   "an input folder. Choose an output folder outside it.")
            images = list_images(given)
            sources += [(p, p.relative_to(given)) for p in images]
            ignored += _non_images(given, set(images))
        elif given.is_file():
            if out_real == real.parent:
                raise Img2ImgError(f"--out {out} is the folder holding the input {given}; img2img never writes "
                                   "into an input folder. Choose another output folder.")
            if given.suffix.lower() not in IMAGE_EXTENSIONS:
                failed.append((given, f"not an image file (images are {', '.join(IMAGE_EXTENSIONS)})"))
                continue
            sources.append((given, Path(given.name)))
        else:
            raise Img2ImgError(f"no such input file or folder: {given}")
    jobs: list[_Job] = []
    skipped: list[tuple[Path, str]] = []
    claimed: dict[Path, Path] = {}
    for src, rel in sources:
        dst = out / (rel.with_suffix(suffix) if suffix else rel)
        key = dst.resolve()
        if key in claimed:
            failed.append((src, f"its output {dst} is also the output of {claimed[key]}; translate them "
                                "into separate folders"))
            continue
        claimed[key] = src
        if dst.exists() and not overwrite:
            skipped.append((dst, "exists (use --overwrite to replace)"))
            continue
        jobs.append(_Job(src, dst))
    return _Plan(jobs=jobs, skipped=skipped, ignored=ignored, failed=failed)


# ---------------------------------------------------------------------------------------------
# The translator


class Translator:
    """A loaded generator that translates arrays, PIL images, files and folders.

    >>> t = Translator.from_run("runs/horse2zebra")          # or Translator.from_onnx("g.onnx")
    >>> zebra = t.translate(PIL.Image.open("horse.jpg"))    # same kind and size out as in

    Options: `batch_size` (images of equal size, and tiles, run together); `tile` and `overlap`
    (translate images larger than `tile` in blended tiles); `max_pixels` (tile anything larger,
    512/64 unless given); `tile_norm` ("global": instance-norm statistics of the whole image,
    downscaled so its longer side is `stats_size`, default the tile size; "local": each tile its own).
    """

    def __init__(self, backend: _TorchBackend | _OnnxBackend, *, batch_size: int = 1, tile: int | None = None,
                 overlap: int | None = None, max_pixels: int | None = None, tile_norm: str = "global",
                 stats_size: int | None = None):
        if batch_size < 1:
            raise Img2ImgError(f"--batch-size {batch_size}: must be >= 1")
        check_tiling(tile, overlap, max_pixels, tile_norm)
        if stats_size is not None and stats_size < 16:
            raise Img2ImgError(f"stats_size {stats_size}: must be at least 16 px")
        self.stats_size = stats_size
        self.backend = backend
        self.batch_size = int(batch_size)
        self.tile = tile
        self.overlap = overlap
        self.max_pixels = max_pixels
        self.tile_norm = tile_norm
        self.notes = list(backend.notes)
        if backend.kind == "onnx" and tile_norm == "global" and (tile is not None or max_pixels is not None):
            self.notes.append("tiles of an ONNX model use their own instance-norm statistics; "
                              "--tile-norm global needs a run folder or checkpoint")

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_run(cls, path: str | os.PathLike, direction: str = "a2b", *, device: str = "auto",
                 precision: str = "fp32", use_ema: bool = True, channels_last: bool = False,
                 norm_stats: str | None = None, **options: Any) -> Translator:
        """From a run folder, a checkpoint (.pt) or an exported .safetensors generator.

        `norm_stats` ``"batch"`` normalises batch-norm layers with each image's own statistics, as the
        reference's test.py does (see `img2img.inference.normstats`); the default is eval mode.
        """
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            return cls.from_onnx(path, device=device, precision=precision, channels_last=channels_last,
                                 norm_stats=norm_stats, **options)
        if path.suffix.lower() == ".safetensors":
            from img2img.inference.export import load_safetensors_generator

            loaded = load_safetensors_generator(path)
            notes = apply_norm_stats(loaded, norm_stats)
            backend = _TorchBackend.from_loaded(loaded, device, precision, channels_last)
            if direction != loaded.direction:
                backend.notes.append(f"{path.name} translates {loaded.direction}; --direction {direction} "
                                     "does not apply to an exported file")
        else:
            loaded = load_generator(path, direction, use_ema=use_ema)
            notes = apply_norm_stats(loaded, norm_stats)
            backend = _TorchBackend.from_loaded(loaded, device, precision, channels_last)
        backend.notes += notes
        if norm_stats == "batch":
            backend.label += ", batch-norm on image statistics"
        return cls(backend, **options)

    @classmethod
    def from_module(cls, module: nn.Module, *, in_channels: int = 3, out_channels: int = 3,
                    size_multiple: int | None = None, direction: str = "a2b", device: str = "auto",
                    precision: str = "fp32", channels_last: bool = False, **options: Any) -> Translator:
        """From a generator module (NCHW [-1, 1] in and out); its `size_multiple` attribute is used if present."""
        multiple = int(size_multiple if size_multiple is not None else getattr(module, "size_multiple", 1))
        backend = _TorchBackend(module, in_channels=in_channels, out_channels=out_channels, size_multiple=multiple,
                                direction=direction, device=device, precision=precision, channels_last=channels_last,
                                label=f"{type(module).__name__} {direction}")
        return cls(backend, **options)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, device: str = "auto", precision: str = "fp32",
                  direction: str | None = None, channels_last: bool = False, norm_stats: str | None = None,
                  **options: Any) -> Translator:
        """From a file written by `img2img export` (or any NCHW [-1, 1] image-to-image ONNX graph).

        The normalisation statistics are fixed at export; a `norm_stats` other than the file's is an error.
        """
        backend = _OnnxBackend(Path(path), device, precision, direction, channels_last)
        check_onnx_norm_stats(backend.metadata, norm_stats, Path(path))
        return cls(backend, **options)

    @classmethod
    def load(cls, model: str | os.PathLike, direction: str = "a2b", *, device: str = "auto",
             precision: str = "fp32", use_ema: bool = True, channels_last: bool = False,
             **options: Any) -> Translator:
        """The backend follows the path: ``.onnx`` runs in onnxruntime, anything else in torch."""
        model = Path(model)
        if model.suffix.lower() == ".onnx":
            return cls.from_onnx(model, device=device, precision=precision, direction=direction,
                                 channels_last=channels_last, **options)
        return cls.from_run(model, direction, device=device, precision=precision, use_ema=use_ema,
                            channels_last=channels_last, **options)

    # -- properties -----------------------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        return self.backend.in_channels

    @property
    def out_channels(self) -> int:
        return self.backend.out_channels

    @property
    def size_multiple(self) -> int:
        return self.backend.size_multiple

    @property
    def direction(self) -> str:
        return self.backend.direction

    def describe(self) -> str:
        return self.backend.describe()

    # -- arrays ---------------------------------------------------------------------------------

    def _tiling(self, height: int, width: int) -> tuple[int, int] | None:
        return tile_plan(height, width, tile=self.tile, overlap=self.overlap, max_pixels=self.max_pixels,
                         multiple=self.size_multiple)

    def translate_arrays(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """HWC float32 [0, 1] arrays with the model's input channels -> HWC [0, 1], model out channels.

        Images of equal size that need no tiling run as one batch; the rest one at a time, tiled.
        """
        results: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, arr in enumerate(images):
            if arr.ndim != 3 or arr.shape[2] != self.in_channels:
                raise ValueError(f"expected HxWx{self.in_channels}, got {arr.shape}")
            h, w = arr.shape[:2]
            plan = self._tiling(h, w)
            if plan is not None:
                results[i] = self._translate_tiled(arr, *plan)
            else:
                groups.setdefault((h, w), []).append(i)
        for indices in groups.values():
            for k in range(0, len(indices), self.batch_size):
                chunk = indices[k:k + self.batch_size]
                batch = torch.stack([to_tensor(images[i]) for i in chunk])
                out = self.backend(batch)
                for j, i in enumerate(chunk):
                    results[i] = to_image_array(out[j])
        return results  # type: ignore[return-value]

    def _translate_tiled(self, arr: np.ndarray, tile: int, overlap: int) -> np.ndarray:
        image = to_tensor(arr).unsqueeze(0)
        with self.backend.tile_context(image, self.stats_size or tile, self.tile_norm):
            out = translate_tiled(image, self.backend, tile=tile, overlap=overlap, multiple=self.size_multiple,
                                  batch_size=self.batch_size)
        return to_image_array(out[0])

    def translate(self, image: Any) -> Any:
        """Translate one PIL image or numpy array (HW or HWC; uint8, uint16 or float in [0, 1]).

        Returns the same kind at the same size with the model's output channels: PIL in, PIL out
        (L, RGB or RGBA); a uint8 array in, a uint8 array out; and so on.
        """
        from PIL import Image

        if isinstance(image, Image.Image):
            arr = _to_channels(_pil_to_float(image), self.in_channels)
            out = self.translate_arrays([arr])[0]
            u8 = np.round(out * 255.0).astype(np.uint8)
            return Image.fromarray(u8[:, :, 0] if u8.shape[2] == 1 else u8)
        if isinstance(image, torch.Tensor):
            raise TypeError("pass a PIL image or a numpy array; for tensors call the generator module directly")
        arr = np.asarray(image)
        squeeze = arr.ndim == 2
        if squeeze:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"expected an HW or HWC image with 1-4 channels, got shape {arr.shape}")
        dtype = arr.dtype
        if dtype == np.uint8:
            floats = arr.astype(np.float32) / 255.0
        elif dtype == np.uint16:
            floats = arr.astype(np.float32) / 65535.0
        elif np.issubdtype(dtype, np.floating):
            floats = np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)
        else:
            raise TypeError(f"unsupported image dtype {dtype}; use uint8, uint16 or float in [0, 1]")
        out = self.translate_arrays([_to_channels(floats, self.in_channels)])[0]
        if squeeze and out.shape[2] == 1:
            out = out[:, :, 0]
        if dtype == np.uint8:
            return np.round(out * 255.0).astype(np.uint8)
        if dtype == np.uint16:
            return np.round(out * 65535.0).astype(np.uint16)
        return out.astype(dtype, copy=False)

    # -- files ----------------------------------------------------------------------------------

    def translate_folder(self, input_dir: str | os.PathLike, out_dir: str | os.PathLike,
                         **options: Any) -> TranslateReport:
        """Translate every image under `input_dir` into `out_dir`, mirroring relative paths.

        Options: fmt, resize, keep_depth, overwrite, console (see `translate_inputs`).
        """
        return self.translate_files([Path(input_dir)], Path(out_dir), **options)

    def translate_files(self, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                        fmt: str | None = None, resize: int | None = None, keep_depth: bool = False,
                        overwrite: bool = False, console: Console | None = None) -> TranslateReport:
        """Translate image files and folders (see `translate_inputs`)."""
        if resize is not None and resize < 1:
            raise Img2ImgError(f"--resize {resize}: must be a positive number of pixels")
        plan = _plan([Path(p) for p in inputs], Path(out), fmt, overwrite)
        return self._run(plan, Path(out), resize=resize, keep_depth=keep_depth, console=console or Console())

    def _load(self, job: _Job, resize: int | None, keep_depth: bool) -> tuple[np.ndarray, int]:
        arr = read_image(job.src, self.in_channels)
        depth = 16 if keep_depth and image_bit_depth(job.src) >= 16 else 8
        if resize is not None:
            arr = _resize_shorter(arr, resize)
        return arr, depth

    def _run(self, plan: _Plan, out: Path, *, resize: int | None, keep_depth: bool,
             console: Console) -> TranslateReport:
        report = TranslateReport(skipped=list(plan.skipped), failed=list(plan.failed), ignored=list(plan.ignored))
        for note in self.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        jobs = plan.jobs
        workers = max(2, min(8, (os.cpu_count() or 2)))
        lookahead = max(2 * self.batch_size, workers) + 1
        start = time.perf_counter()
        progress = Progress(TextColumn("[bold]translate[/]"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, transient=False, disable=not jobs)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="img2img-io") as pool, progress:
            task = progress.add_task("translate", total=len(jobs), rate="")
            reads: deque[tuple[_Job, Future]] = deque()
            writes: deque[tuple[_Job, Future]] = deque()
            buckets: dict[tuple[int, int], list[tuple[_Job, np.ndarray, int]]] = {}
            queue = iter(jobs)

            def advance(n: int = 1) -> None:
                progress.advance(task, n)
                done = progress.tasks[0].completed
                elapsed = time.perf_counter() - start
                progress.update(task, rate=f"{done / elapsed:.2f} images/s" if elapsed > 0 else "")

            def finish_writes(limit: int) -> None:
                while len(writes) > limit:
                    job, fut = writes.popleft()
                    try:
                        fut.result()
                        report.written.append(job.dst)
                    except (OSError, Img2ImgError) as exc:
                        report.failed.append((job.src, f"cannot write {job.dst}: {exc}"))
                    advance()

            def compute(items: list[tuple[_Job, np.ndarray, int]]) -> None:
                try:
                    outputs = self.translate_arrays([arr for _, arr, _ in items])
                except (MemoryError, RuntimeError) as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                    if not isinstance(exc, MemoryError) and "out of memory" not in str(exc).lower():
                        raise
                    for job, arr, _ in items:
                        report.failed.append((job.src, f"out of memory at {arr.shape[1]}x{arr.shape[0]}; "
                                                       "use --tile 512 (or --max-pixels) or a smaller --batch-size"))
                        advance()
                    return
                for (job, _, depth), result in zip(items, outputs):
                    writes.append((job, pool.submit(save_image, job.dst, result, bit_depth=depth)))
                finish_writes(2 * workers)

            def refill() -> None:
                while len(reads) < lookahead:
                    job = next(queue, None)
                    if job is None:
                        return
                    reads.append((job, pool.submit(self._load, job, resize, keep_depth)))

            refill()
            pending = 0
            while reads:
                job, fut = reads.popleft()
                refill()
                try:
                    arr, depth = fut.result()
                except ImageReadError as exc:
                    report.failed.append((job.src, exc.reason))
                    advance()
                    continue
                except Img2ImgError as exc:
                    report.failed.append((job.src, str(exc)))
                    advance()
                    continue
                h, w = arr.shape[:2]
                if self._tiling(h, w) is not None:
                    compute([(job, arr, depth)])
                    continue
                bucket = buckets.setdefault((h, w), [])
                bucket.append((job, arr, depth))
                pending += 1
                if len(bucket) >= self.batch_size:
                    pending -= len(bucket)
                    compute(buckets.pop((h, w)))
                elif pending > 4 * self.batch_size:  # many distinct sizes: run the fullest bucket
                    key = max(buckets, key=lambda k: len(buckets[k]))
                    pending -= len(buckets[key])
                    compute(buckets.pop(key))
            for key in list(buckets):
                compute(buckets.pop(key))
            finish_writes(0)
        report.seconds = time.perf_counter() - start
        _summarise(report, out, self, console)
        return report


def _resize_shorter(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size` (antialiased bilinear), keeping the aspect ratio."""
    h, w = arr.shape[:2]
    scale = size / min(h, w)
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    if new == (h, w):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0)
    t = F.interpolate(t, size=new, mode="bilinear", align_corners=False, antialias=scale < 1)
    return np.ascontiguousarray(t[0].clamp_(0, 1).permute(1, 2, 0).numpy())


def _listing(console: Console, title: str, rows: Iterable[tuple[Path, str]], style: str, limit: int = 20) -> None:
    rows = list(rows)
    if not rows:
        return
    console.print(f"[{style}]{title} ({len(rows)}):[/]", highlight=False)
    for path, reason in rows[:limit]:
        console.print(f"  {path}: {reason}", highlight=False, markup=False)
    if len(rows) > limit:
        console.print(f"  ... and {len(rows) - limit} more", highlight=False)


def _summarise(report: TranslateReport, out: Path, translator: Translator, console: Console) -> None:
    n = len(report.written)
    console.print(f"[green]translated {n} image{'s' if n != 1 else ''}[/] in {report.seconds:.1f} s "
                  f"({report.images_per_s:.2f} images/s) with {translator.describe()} -> {out}", highlight=False)
    if report.skipped:
        console.print(f"[yellow]skipped {len(report.skipped)} existing output(s)[/] (use --overwrite to replace "
                      f"them): {', '.join(str(p) for p, _ in report.skipped[:3])}"
                      f"{', ...' if len(report.skipped) > 3 else ''}", highlight=False)
    _listing(console, "ignored, not images", report.ignored, "yellow")
    _listing(console, "not translated", report.failed, "red")


# ---------------------------------------------------------------------------------------------
# The command's entry point


def translate_inputs(inputs: list[Path], *, model: Path, out: Path, direction: str = "a2b", batch_size: int = 1,
                     device: str = "auto", precision: str = "fp32", tile: int | None = None,
                     overlap: int | None = None, max_pixels: int | None = None, tile_norm: str = "global",
                     fmt: str | None = None, resize: int | None = None, keep_depth: bool = False,
                     overwrite: bool = False, use_ema: bool = True, channels_last: bool = False,
                     console: Console | None = None, norm_stats: str | None = None) -> TranslateReport:
    """Translate image files and folders (recursively) into `out`, mirroring relative paths.

    Each output has its input's size (or, with `resize`, the resized size), the input's format
    unless `fmt`, and 8 bits per channel unless `keep_depth`. Existing outputs are skipped unless
    `overwrite`; unreadable files are listed in the report, never raised. `overlap` defaults to 32
    with `tile` and 64 when `max_pixels` tiles an image automatically. `channels_last` runs a torch
    model in NHWC memory layout (usually faster on CUDA tensor cores; slower on this project's CPUs).
    `norm_stats` ``"batch"`` reproduces the reference's test.py (batch norm on each image's statistics).
    """
    console = console or Console()
    check_tiling(tile, overlap, max_pixels, tile_norm)
    if batch_size < 1:
        raise Img2ImgError(f"--batch-size {batch_size}: must be >= 1")
    if resize is not None and resize < 1:
        raise Img2ImgError(f"--resize {resize}: must be a positive number of pixels")
    plan = _plan([Path(p) for p in inputs], Path(out), fmt, overwrite)  # folder problems before the model loads
    translator = Translator.load(model, direction, device=device, precision=precision, use_ema=use_ema,
                                 channels_last=channels_last, batch_size=batch_size, tile=tile, overlap=overlap, max_pixels=max_pixels,
                                 tile_norm=tile_norm, norm_stats=norm_stats)
    return translator._run(plan, Path(out), resize=resize, keep_depth=keep_depth, console=console)
