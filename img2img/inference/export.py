"""Export a trained generator: ONNX (checked against torch in onnxruntime) or safetensors.

The ONNX graph is the generator wrapped in `SizeAdapter`: it pads any height and width to the
generator's size multiple and crops back, so the deployed file takes any image of at least 16 x 16
pixels. Input ``image`` and output ``translated`` are float32 NCHW in [-1, 1] with dynamic batch,
height and width; ``metadata_props`` say everything else a deployer needs (channels, value range,
pre- and postprocessing, direction, task, pipeline, img2img version).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from img2img import atomic
from img2img._version import __version__
from img2img.engine.checkpoint import LoadedGenerator, load_generator
from img2img.engine.checkpoint import size_multiple as multiple_of
from img2img.errors import Img2ImgError, first_line
from img2img.inference.normstats import apply_norm_stats, check_norm_stats
from img2img.inference.tiling import SizeAdapter

__all__ = ["export", "export_generator", "load_safetensors_generator", "onnx_metadata", "PARITY_FP16",
           "PARITY_FP32", "MIN_SIZE"]

PARITY_FP32 = 1e-4
"""Largest max-abs difference between onnxruntime and torch accepted for a float32 export."""
PARITY_FP16 = 2e-2
"""The same for ``--half`` (float16 weights and arithmetic, compared with the float32 torch model)."""
MIN_SIZE = 16
EXTERNAL_DATA_BYTES = 1_800_000_000
"""Weights above this go to ``<file>.data`` beside the model (protobuf caps one file at 2 GB)."""
PARITY_SHAPES = ((1, 37, 53), (2, 45, 31))  # (batch, height, width): odd sizes, not the training size


# ---------------------------------------------------------------------------------------------
# Loading what to export


def _load(model: Path, direction: str | None, use_ema: bool) -> LoadedGenerator:
    model = Path(model)
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        raise Img2ImgError(f"{model} is already an ONNX file; export reads a run folder, a checkpoint (.pt) "
                           "or a .safetensors generator")
    if suffix == ".safetensors":
        loaded = load_safetensors_generator(model)
        if direction is not None and direction != loaded.direction:
            raise Img2ImgError(f"{model} holds the {loaded.direction} generator, not {direction}")
        return loaded
    return load_generator(model, direction, use_ema=use_ema)


def export(model: Path, out: Path, *, direction: str | None = None, opset: int = 18, half: bool = False,
           fmt: str = "onnx", use_ema: bool = True, check: bool = True, console: Console | None = None,
           norm_stats: str = "running") -> Path:
    """Export the `direction` generator of a run/checkpoint to `out` (ONNX or safetensors); returns `out`.

    `norm_stats` ``"batch"`` writes a graph whose batch-norm layers use each image's own statistics (the
    reference's test.py); the parity check compares it with the torch model in that same mode.
    """
    console = console or Console()
    out = Path(out)
    if fmt not in ("onnx", "safetensors"):
        raise Img2ImgError(f"--format {fmt!r}: use onnx or safetensors")
    if out.is_dir():
        raise Img2ImgError(f"--out {out} is a folder; give a file name such as {out / ('generator.' + fmt)}")
    if fmt == "onnx" and out.suffix.lower() == ".safetensors":
        raise Img2ImgError(f"--out {out} ends in .safetensors; add --format safetensors or name it .onnx")
    if fmt == "safetensors" and out.suffix.lower() == ".onnx":
        raise Img2ImgError(f"--out {out} ends in .onnx but --format is safetensors; name it .safetensors")
    _refuse_overwriting_the_model(Path(model), out, fmt)
    check_norm_stats(norm_stats)
    if fmt == "safetensors" and norm_stats != "running":
        raise Img2ImgError("--norm-stats batch applies to ONNX export; a safetensors file holds the weights only "
                           "(translate it with --norm-stats batch)")
    loaded = _load(Path(model), direction, use_ema)
    if fmt == "safetensors":
        return _export_safetensors(loaded, out, half=half, console=console)
    for note in apply_norm_stats(loaded, norm_stats):
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    metadata = {**_run_metadata(loaded), "norm_stats": norm_stats}
    return export_generator(loaded.module, out, in_channels=loaded.in_channels, out_channels=loaded.out_channels,
                            size_multiple=loaded.size_multiple, metadata=metadata, opset=opset,
                            half=half, check=check, console=console)


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def _refuse_overwriting_the_model(model: Path, out: Path, fmt: str) -> None:
    """An export never replaces the model it reads nor lands among a run's checkpoints, and is never
    named like a checkpoint (`--out runs/x/checkpoints/last.pt` would have replaced the run's weights)."""
    target = out.resolve()
    if model.is_file() and target == model.resolve():
        raise Img2ImgError(f"--out {out} is the model being exported ({model}); choose another file name")
    run = model if model.is_dir() else (model.parent.parent if model.parent.name == "checkpoints" else None)
    if run is not None and target.is_relative_to((run / "checkpoints").resolve()):
        raise Img2ImgError(f"--out {out} is inside the checkpoints folder of the run being exported ({run}); "
                           f"write the export elsewhere, e.g. {run / ('generator.' + fmt)}")
    if out.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise Img2ImgError(f"--out {out} ends in {out.suffix}, the name of a checkpoint; an export is a .{fmt} file: "
                           f"name it e.g. {out.with_suffix('.' + fmt)}")


def _generator_spec(loaded: LoadedGenerator) -> dict[str, Any]:
    gen = getattr(getattr(loaded.pipeline, "model", None), "generator", None)
    return gen.model_dump(mode="json") if gen is not None else {}


def _run_metadata(loaded: LoadedGenerator) -> dict[str, str]:
    spec = _generator_spec(loaded)
    return {
        "direction": loaded.direction,
        "task": loaded.task,
        "pipeline": loaded.name,
        "generator": spec.get("name", type(loaded.module).__name__),
        "generator_params": json.dumps({k: v for k, v in spec.items() if k != "name"}, sort_keys=True),
        "ema": str(bool(loaded.ema)).lower(),
        "source": Path(loaded.checkpoint).name,
    }


# ---------------------------------------------------------------------------------------------
# ONNX


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
    reference = SizeAdapter(generator, size_multiple).eval()
    wrapped = SizeAdapter(_Half(generator) if half else generator, size_multiple).eval()
    meta = onnx_metadata(in_channels=in_channels, out_channels=out_channels, size_multiple=size_multiple,
                         half=half, extra=metadata)
    example = torch.rand(2, in_channels, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
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
    import onnxruntime as ort

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


# ---------------------------------------------------------------------------------------------
# safetensors


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _export_safetensors(loaded: LoadedGenerator, out: Path, *, half: bool, console: Console) -> Path:
    from safetensors.torch import save_file

    from img2img.config import dump_pipeline

    spec = _generator_spec(loaded)
    info = {
        "format": "img2img-generator",
        "img2img_version": __version__,
        "generator": spec or {"name": type(loaded.module).__name__},
        "in_channels": loaded.in_channels,
        "out_channels": loaded.out_channels,
        "size_multiple": loaded.size_multiple,
        "direction": loaded.direction,
        "task": loaded.task,
        "pipeline_name": loaded.name,
        "ema": loaded.ema,
        "dtype": "float16" if half else "float32",
        "pipeline": dump_pipeline(loaded.pipeline),
    }
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in loaded.module.state_dict().items()}
    _check_unshared(state, loaded)
    sidecar = _sidecar_path(out)
    with atomic.atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"img2img": json.dumps(info)})
    atomic.write_text(sidecar, json.dumps(info, indent=2))
    console.print(f"[green]exported[/] {out} ({out.stat().st_size / 2**20:.1f} MiB{', float16' if half else ''}) "
                  f"and {sidecar.name}", highlight=False)
    return out


def _check_unshared(state: dict[str, torch.Tensor], loaded: LoadedGenerator) -> None:
    seen: dict[int, str] = {}
    for k, v in state.items():
        ptr = v.data_ptr()
        if v.numel() and ptr in seen:
            raise Img2ImgError(f"the {loaded.direction} generator shares a tensor between {seen[ptr]} and {k}; "
                               "export it to ONNX instead")
        seen[ptr] = k


def load_safetensors_generator(path: Path) -> LoadedGenerator:
    """Rebuild a generator exported with ``--format safetensors`` through the component registry.

    Its description is read from ``<file>.json`` beside it, or from the file's own metadata.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from img2img.config import pipeline_from_dict
    from img2img.registry import get_registry

    path = Path(path)
    if not path.is_file():
        raise Img2ImgError(f"no such safetensors file: {path}")
    sidecar = _sidecar_path(path)
    try:
        if sidecar.is_file():
            info = json.loads(sidecar.read_text())
        else:
            with safe_open(str(path), framework="pt") as fh:
                raw = (fh.metadata() or {}).get("img2img")
            if raw is None:
                raise Img2ImgError(f"{path} has no img2img description: {sidecar.name} is missing and the file "
                                   "carries none; export it again with `img2img export --format safetensors`")
            info = json.loads(raw)
        state = load_file(str(path))
    except Img2ImgError:
        raise
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise Img2ImgError(f"{path} is not a readable img2img safetensors export ({first_line(exc)})") from None
    if info.get("format") != "img2img-generator":
        raise Img2ImgError(f"{sidecar if sidecar.is_file() else path} does not describe an img2img generator")
    spec = dict(info["generator"])
    registry = get_registry()
    name = spec.get("name")
    pipeline = pipeline_from_dict(info["pipeline"])
    task_cls = registry.get("task", pipeline.task).factory
    if _builds_own_translator(task_cls):  # e.g. decoder_b(encoder_a(x)), or a generator not at model.generator
        module = task_cls.for_inference(pipeline, device="cpu").build_translator(info["direction"])
        name = f"{pipeline.task} translator"
    elif not registry.has("generator", name):
        raise Img2ImgError(f"{path} needs the generator '{name}', which no installed plugin provides; "
                           "install the plugin it was trained with")
    else:
        module = registry.build("generator", spec, in_channels=int(info["in_channels"]),
                                out_channels=int(info["out_channels"]))
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise Img2ImgError(f"{path} does not fit {name} with {spec}: {first_line(exc)}") from None
    module.eval()
    return LoadedGenerator(module=module.float(), direction=info["direction"], in_channels=int(info["in_channels"]),
                           out_channels=int(info["out_channels"]),
                           size_multiple=multiple_of(module) if multiple_of(module) > 1
                           else int(info.get("size_multiple", 1)),
                           pipeline=pipeline, ema=bool(info.get("ema")), checkpoint=path)


def _builds_own_translator(task_cls: type) -> bool:
    """The task overrides ``build_translator`` (and is not an img2img 0.1 task): rebuild through it, as a
    checkpoint is, rather than through ``model.generator``."""
    from img2img.engine.translators import written_for_generator
    from img2img.tasks.base import Task

    return task_cls.build_translator is not Task.build_translator and not written_for_generator(task_cls)
