"""Translate images and folders with a trained generator (torch) or an exported ONNX file.

`Translator` is the one code path: `translate_inputs` (the `img2img translate` command) and
`Translator.translate_folder` plan the output files, then decode in a thread pool ahead of the
compute, batch images of equal size, tile large ones, and encode in the background. Every output
has its input's size: the torch backend pads to the generator's size multiple and crops back, an
exported ONNX graph does that itself.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from img2img.data.images import _pil_to_float, _to_channels, to_image_array, to_tensor
from img2img.devices import select_device
from img2img.engine.checkpoint import load_generator
from img2img.errors import Img2ImgError
from img2img.inference.backends import OnnxBackend, TorchBackend, physical_cores
from img2img.inference.distributed import torchrun_world, translate_ranks
from img2img.inference.files import (Terminated, TranslateReport, _Plan, on_sigterm, plan_outputs,
                                     remove_partial_outputs, run_plan, translation_stopped)
from img2img.inference.choice import BACKENDS, backend_for_loaded, backend_for_onnx, check_backend
from img2img.inference.normstats import apply_norm_stats, check_onnx_norm_stats
from img2img.inference.tiling import check_tiling, tile_plan, translate_tiled

__all__ = ["BACKENDS", "TranslateReport", "Translator", "physical_cores", "select_device", "translate_inputs"]


# ---------------------------------------------------------------------------------------------
# The translator


class Translator:
    """A loaded generator that translates arrays, PIL images, files and folders.

    >>> t = Translator.from_run("runs/horse2zebra")          # or Translator.from_onnx("g.onnx")
    >>> zebra = t.translate(PIL.Image.open("horse.jpg"))    # same kind and size out as in

    Options: `batch_size` (images of equal size, and tiles, run together); `tile` and `overlap`
    (translate images larger than `tile` in blended tiles); `max_pixels` (tile anything larger,
    512/64 unless given); `tile_norm` ("global": instance-norm statistics of the whole image,
    downscaled so its longer side is `stats_size`, default the tile size; "local": each tile its own;
    "auto", the default: per image, whichever of the two `choose_tile_norm` finds closer).
    """

    def __init__(self, backend: Any = None, *, model: str | os.PathLike | None = None,
                 batch_size: int = 1, tile: int | None = None, overlap: int | None = None,
                 max_pixels: int | None = None, tile_norm: str = "auto", stats_size: int | None = None,
                 **load_options: Any):
        """From a backend, or from `model` (a run folder, checkpoint, .safetensors or .onnx path) with
        `Translator.load`'s options (direction, device, precision, use_ema, channels_last, norm_stats).

        The `model` form is what Ray Data's ``map_batches(Translator, fn_constructor_kwargs={"model": ...})``
        calls in each worker; such a translator pickles as its path and options.
        """
        self._source: tuple[str, dict[str, Any]] | None = None
        if model is not None:
            if backend is not None:
                raise TypeError("Translator: give a backend or model=PATH, not both")
            options = dict(batch_size=batch_size, tile=tile, overlap=overlap, max_pixels=max_pixels,
                           tile_norm=tile_norm, stats_size=stats_size, **load_options)
            self.__dict__.update(Translator.load(model, **options).__dict__)
            return
        if backend is None:
            raise TypeError("Translator needs model=PATH (a run folder, checkpoint or .onnx file) or a backend")
        if load_options:
            raise TypeError(f"Translator: {', '.join(sorted(load_options))} apply only with model=PATH")
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
        if backend.kind != "torch" and tile_norm != "local" and (tile is not None or max_pixels is not None):
            what = "an ONNX model" if backend.kind == "onnx" else f"a model compiled by {backend.kind}"
            self.notes.append(f"tiles of {what} use their own instance-norm statistics; --tile-norm {tile_norm} "
                              "needs a run folder or checkpoint in torch")

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_run(cls, path: str | os.PathLike, direction: str | None = None, *, device: str = "auto",
                 precision: str = "fp32", use_ema: bool = True, channels_last: bool = False,
                 norm_stats: str | None = None, backend: str | None = None, **options: Any) -> Translator:
        """From a run folder, a checkpoint (.pt) or an exported .safetensors generator.

        `direction` is any of the run's task's directions (default: a2b, or the task's first direction).

        `norm_stats` ``"batch"`` normalises batch-norm layers with each image's own statistics, as the
        reference's test.py does (see `img2img.inference.normstats`); the default is eval mode.
        `backend` is ``"torch"`` (the default), ``"openvino"`` (compiled for this CPU) or ``"auto"``
        (the fastest of those that agree with torch fp32 here; see `img2img.inference.auto`).
        """
        path = Path(path)
        backend = check_backend(backend)
        if path.suffix.lower() == ".onnx":
            return cls.from_onnx(path, device=device, precision=precision, channels_last=channels_last,
                                 norm_stats=norm_stats, backend=backend, **options)
        if path.suffix.lower() == ".safetensors":
            from img2img.inference.export import load_safetensors_generator

            loaded = load_safetensors_generator(path)
            notes = apply_norm_stats(loaded, norm_stats)
            elsewhere = [] if direction is None or direction == loaded.direction else [
                f"{path.name} translates {loaded.direction}; --direction {direction} does not apply to an exported file"]
        else:
            loaded = load_generator(path, direction, use_ema=use_ema)
            notes, elsewhere = apply_norm_stats(loaded, norm_stats), []
        runner = backend_for_loaded(loaded, backend, device=device, precision=precision, channels_last=channels_last)
        runner.notes += elsewhere + notes
        if norm_stats == "batch" and not notes:  # a note: the generator has no batch norm to act on
            runner.label += ", batch-norm on image statistics"
        return cls(runner, **options)

    @classmethod
    def from_module(cls, module: nn.Module, *, in_channels: int = 3, out_channels: int = 3,
                    size_multiple: int | None = None, direction: str = "a2b", device: str = "auto",
                    precision: str = "fp32", channels_last: bool = False, **options: Any) -> Translator:
        """From a generator module (NCHW [-1, 1] in and out); its `size_multiple` attribute is used if present."""
        multiple = int(size_multiple if size_multiple is not None else getattr(module, "size_multiple", 1))
        backend = TorchBackend(module, in_channels=in_channels, out_channels=out_channels, size_multiple=multiple,
                                direction=direction, device=device, precision=precision, channels_last=channels_last,
                                label=f"{type(module).__name__} {direction}")
        return cls(backend, **options)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, device: str = "auto", precision: str = "fp32",
                  direction: str | None = None, channels_last: bool = False, norm_stats: str | None = None,
                  backend: str | None = None, **options: Any) -> Translator:
        """From a file written by `img2img export` (or any NCHW [-1, 1] image-to-image ONNX graph).

        The normalisation statistics are fixed at export; a `norm_stats` other than the file's is an error.
        `backend` is ``"onnxruntime"`` (the default), ``"openvino"`` or ``"auto"`` (the faster of the two
        where they agree).
        """
        runner = backend_for_onnx(Path(path), check_backend(backend), device=device, precision=precision,
                                  direction=direction, channels_last=channels_last)
        check_onnx_norm_stats(runner.metadata, norm_stats, Path(path))
        return cls(runner, **options)

    @classmethod
    def load(cls, model: str | os.PathLike, direction: str | None = None, *, device: str = "auto",
             precision: str = "fp32", use_ema: bool = True, channels_last: bool = False,
             backend: str | None = None, **options: Any) -> Translator:
        """By default the backend follows the path: ``.onnx`` runs in onnxruntime, anything else in torch;
        `backend` ``"openvino"`` runs either in OpenVINO, ``"auto"`` the fastest agreeing way."""
        source = (str(model), dict(direction=direction, device=device, precision=precision, use_ema=use_ema,
                                   channels_last=channels_last, backend=backend, **options))
        model = Path(model)
        if model.suffix.lower() == ".onnx":
            translator = cls.from_onnx(model, device=device, precision=precision, direction=direction,
                                       channels_last=channels_last, backend=backend, **options)
        else:
            translator = cls.from_run(model, direction, device=device, precision=precision, use_ema=use_ema,
                                      channels_last=channels_last, backend=backend, **options)
        translator._source = source
        return translator

    def __reduce_ex__(self, protocol: Any) -> Any:
        """A translator loaded from a path pickles as that path and its options (Ray ships it so)."""
        if self._source is None:
            return super().__reduce_ex__(protocol)
        model, options = self._source
        return (functools.partial(Translator, model=model, **options), ())

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
        """What runs the model (and, when `--backend auto` chose it, how much faster it measured)."""
        text = self.backend.describe()
        choice = getattr(self.backend, "choice", None)
        return f"{text[:-1]}; {choice})" if choice and text.endswith(")") else text

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
        with self.backend.tile_context(image, self.stats_size or tile, self.tile_norm, tile=tile, overlap=overlap):
            out = translate_tiled(image, self.backend, tile=tile, overlap=overlap, multiple=self.size_multiple,
                                  batch_size=self.batch_size)
        return to_image_array(out[0])

    def translate(self, image: Any) -> Any:
        """Translate one PIL image, numpy array (HW or HWC; uint8, uint16 or float in [0, 1]) or image file.

        Returns the same kind at the same size with the model's output channels: PIL in, PIL out
        (L, RGB or RGBA); a uint8 array in, a uint8 array out; and so on. A path (``str`` or
        ``os.PathLike``) is read as `img2img translate` reads files and gives a PIL image; to write
        files, use `translate_files` or `translate_folder`.
        """
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            from img2img.data.images import read_image

            if not Path(image).is_file():
                raise Img2ImgError(f"no such image file: {image}")
            out = self.translate_arrays([read_image(Path(image), self.in_channels)])[0]
            u8 = np.round(out * 255.0).astype(np.uint8)
            return Image.fromarray(u8[:, :, 0] if u8.shape[2] == 1 else u8)
        if isinstance(image, Image.Image):
            arr = _to_channels(_pil_to_float(image), self.in_channels)
            out = self.translate_arrays([arr])[0]
            u8 = np.round(out * 255.0).astype(np.uint8)
            return Image.fromarray(u8[:, :, 0] if u8.shape[2] == 1 else u8)
        if isinstance(image, torch.Tensor):
            raise TypeError("pass a PIL image or a numpy array; for tensors call the generator module directly")
        floats, dtype, squeeze = self._floats(image)
        return _like_input(self.translate_arrays([floats])[0], dtype, squeeze)

    def _floats(self, image: Any) -> tuple[np.ndarray, np.dtype, bool]:
        """An HW or HWC array (uint8, uint16 or float [0, 1]) as the model's input; its dtype and whether it was HW."""
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
        return _to_channels(floats, self.in_channels), dtype, squeeze

    # -- Ray Data -------------------------------------------------------------------------------

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One batch of Ray Data's ``map_batches(Translator, batch_format="numpy")``.

        Reads column ``"image"`` (HW or HWC arrays, uint8, uint16 or float [0, 1]; a 4-D array when all
        have one size, an object array of arrays when sizes differ, as `ray.data.read_images` gives them)
        and adds ``"translated"``: each image's translation at its size, in its dtype, stacked the same
        way. Other columns (e.g. ``"path"``) pass through. Equal sizes run together, `batch_size` at a time.
        """
        if "image" not in batch:
            raise Img2ImgError(f"Translator: the batch has no 'image' column (it has {', '.join(map(repr, batch))}); "
                               "rename the column holding the images to 'image'")
        prepared = [self._floats(image) for image in batch["image"]]
        outputs = self.translate_arrays([floats for floats, _, _ in prepared])
        results = [_like_input(out, dtype, squeeze) for out, (_, dtype, squeeze) in zip(outputs, prepared)]
        if results and all(r.shape == results[0].shape and r.dtype == results[0].dtype for r in results):
            column = np.stack(results)
        else:
            column = np.empty(len(results), dtype=object)
            for i, result in enumerate(results):
                column[i] = result
        return {**batch, "translated": column}

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
        plan = plan_outputs([Path(p) for p in inputs], Path(out), fmt, overwrite)
        return run_plan(self, plan, Path(out), resize=resize, keep_depth=keep_depth, console=console or Console())


def _like_input(out: np.ndarray, dtype: np.dtype, squeeze: bool) -> np.ndarray:
    """A translated HWC float [0, 1] array in the input's dtype (and HW if the input was)."""
    if squeeze and out.shape[2] == 1:
        out = out[:, :, 0]
    if dtype == np.uint8:
        return np.round(out * 255.0).astype(np.uint8)
    if dtype == np.uint16:
        return np.round(out * 65535.0).astype(np.uint16)
    return out.astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# The command's entry point


def translate_inputs(inputs: list[Path], *, model: Path, out: Path, direction: str | None = None, batch_size: int = 1,
                     device: str = "auto", precision: str = "fp32", tile: int | None = None,
                     overlap: int | None = None, max_pixels: int | None = None, tile_norm: str = "auto",
                     fmt: str | None = None, resize: int | None = None, keep_depth: bool = False,
                     overwrite: bool = False, use_ema: bool = True, channels_last: bool = False,
                     console: Console | None = None, norm_stats: str | None = None,
                     backend: str | None = None) -> TranslateReport:
    """Translate image files and folders (recursively) into `out`, mirroring relative paths.

    Each output has its input's size (or, with `resize`, the resized size), the input's format
    unless `fmt`, and 8 bits per channel unless `keep_depth`. Existing outputs are skipped unless
    `overwrite`; unreadable files are listed in the report, never raised. `overlap` defaults to 32
    with `tile` and 64 when `max_pixels` tiles an image automatically. `channels_last` runs a torch
    model in NHWC memory layout (usually faster on CUDA tensor cores; slower on this project's CPUs).
    `norm_stats` ``"batch"`` reproduces the reference's test.py (batch norm on each image's statistics).
    `backend` ``"openvino"`` or ``"auto"`` (see `Translator.load`) chooses what computes.
    """
    console = console or Console()

    def plan() -> _Plan:  # option and folder problems, before the model loads
        check_tiling(tile, overlap, max_pixels, tile_norm)
        check_backend(backend)
        if overlap is not None and tile is None and max_pixels is None:
            raise Img2ImgError(f"--overlap {overlap} applies to tiles only, and nothing is tiled without --tile or "
                               f"--max-pixels; add --tile N (e.g. --tile 512 --overlap {overlap}) or --max-pixels P")
        if batch_size < 1:
            raise Img2ImgError(f"--batch-size {batch_size}: must be >= 1")
        if resize is not None and resize < 1:
            raise Img2ImgError(f"--resize {resize}: must be a positive number of pixels")
        return plan_outputs([Path(p) for p in inputs], Path(out), fmt, overwrite)

    def load(device: str) -> Translator:
        return Translator.load(model, direction, device=device, precision=precision, use_ema=use_ema,
                               channels_last=channels_last, batch_size=batch_size, tile=tile, overlap=overlap,
                               max_pixels=max_pixels, tile_norm=tile_norm, norm_stats=norm_stats, backend=backend)

    if torchrun_world() > 1:  # a process of a torchrun job: the ranks share the inputs
        return translate_ranks(plan, load, device=device, out=Path(out), resize=resize, keep_depth=keep_depth,
                               console=console)
    jobs = plan()
    with on_sigterm():  # SIGTERM stops like Ctrl-C: what was written is said, exit 143
        try:
            translator = load(device)
        except (KeyboardInterrupt, Terminated) as exc:
            raise translation_stopped(exc, 0, len(jobs.jobs), Path(out)) from None
        remove_partial_outputs(jobs)  # what a killed run left half-written
        return run_plan(translator, jobs, Path(out), resize=resize, keep_depth=keep_depth, console=console)
