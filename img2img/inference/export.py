"""Export a trained generator: ONNX (checked against torch in onnxruntime) or safetensors.

The ONNX graph is the generator wrapped in `SizeAdapter`: it pads any height and width to the
generator's size multiple (and up to the smallest size the generator runs on) and crops back, so
the deployed file takes any image, down to 1 x 1 pixel. Input ``image`` and output ``translated`` are float32 NCHW in [-1, 1] with dynamic batch,
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
from img2img.inference.tiling import SizeAdapter, minimum_size
from img2img.tensorfile import build_checked

__all__ = ["export", "export_generator", "load_safetensors_generator", "onnx_metadata", "PARITY_FP16",
           "PARITY_FP32", "MIN_SIZE"]

PARITY_FP32 = 1e-4
"""Largest max-abs difference between onnxruntime and torch accepted for a float32 export."""
PARITY_FP16 = 2e-2
"""The same for ``--half`` (float16 weights and arithmetic, compared with the float32 torch model)."""
MIN_SIZE = 1
"""The smallest height and width an exported graph takes (it pads smaller images up itself)."""
EXTERNAL_DATA_BYTES = 1_800_000_000
"""Weights above this go to ``<file>.data`` beside the model (protobuf caps one file at 2 GB)."""
PARITY_SHAPES = ((1, 37, 53), (2, 45, 31), (1, 1, 3))  # (batch, height, width): odd sizes, not the training size


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
           norm_stats: str = "running", overwrite: bool = False, int8: bool = False,
           calibrate: Path | None = None, force: bool = False, min_psnr: float | None = None) -> Path:
    """Export the `direction` generator of a run/checkpoint to `out` (ONNX or safetensors); returns `out`.

    An existing `out` is replaced only when it is an earlier img2img export of the same format, or with
    `overwrite`; any other file there is kept and the export refused.

    `norm_stats` ``"batch"`` writes a graph whose batch-norm layers use each image's own statistics (the
    reference's test.py); the parity check compares it with the torch model in that same mode.
    `int8` writes a statically quantised ONNX file calibrated on the images in `calibrate`, refused when
    it agrees with float32 less than `min_psnr` dB unless `force` (see `img2img.inference.quantize`).
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
    _check_int8(int8, calibrate, fmt=fmt, half=half, check=check, force=force, min_psnr=min_psnr)
    _check_replacing(out, fmt, overwrite, console)
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
    if int8:
        from img2img.inference.quantize import MIN_PSNR, export_int8

        return export_int8(loaded.module, out, calibrate=Path(calibrate), in_channels=loaded.in_channels,
                           out_channels=loaded.out_channels, size_multiple=loaded.size_multiple, metadata=metadata,
                           opset=opset, force=force, min_psnr=MIN_PSNR if min_psnr is None else min_psnr,
                           console=console)
    return export_generator(loaded.module, out, in_channels=loaded.in_channels, out_channels=loaded.out_channels,
                            size_multiple=loaded.size_multiple, metadata=metadata, opset=opset,
                            half=half, check=check, console=console)


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def _check_int8(int8: bool, calibrate: Path | None, *, fmt: str, half: bool, check: bool, force: bool,
                min_psnr: float | None) -> None:
    if not int8:
        for flag, given in (("--calibrate", calibrate is not None), ("--force", force),
                            ("--min-psnr", min_psnr is not None)):
            if given:
                raise Img2ImgError(f"{flag} applies to int8 export; add --int8 (e.g. --int8 --calibrate photos/)")
        return
    if fmt != "onnx":
        raise Img2ImgError("--int8 writes an ONNX file; leave out --format safetensors")
    if half:
        raise Img2ImgError("--int8 and --half are two different exports; choose one")
    if not check:
        raise Img2ImgError("--int8 always compares the int8 file with float32 on the calibration images; leave out "
                           "--no-check")
    if calibrate is None:
        raise Img2ImgError("--int8 needs --calibrate FOLDER: images like those the model will translate (a few dozen "
                           "suffice), to measure the ranges int8 must cover")


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


def _check_replacing(out: Path, fmt: str, overwrite: bool, console: Console) -> None:
    """Refuse to replace a file that is not an earlier export of this format (without `overwrite`); note
    an --out whose suffix is not the format's."""
    if out.suffix.lower() != f".{fmt}":
        console.print(f"[yellow]note:[/] --out {out} does not end in .{fmt}; the file written is {fmt.upper()} "
                      f"whatever its name (e.g. {out.with_suffix('.' + fmt)})", highlight=False)
    if overwrite or not out.exists():
        return
    if out.is_file() and _is_img2img_export(out, fmt):
        return  # an earlier export of the same kind: exporting again replaces it, as a build replaces its output
    from img2img.tensorfile import foreign_kind

    kind = foreign_kind(out) if out.is_file() else None
    what = f"it is {kind}" if kind else f"it is not an earlier img2img {fmt} export"
    raise Img2ImgError(f"--out {out} already exists and {what}; export replaces only its own earlier files. "
                       f"Choose another file name, or add --overwrite to replace {out.name}")


def _is_img2img_export(path: Path, fmt: str) -> bool:
    """`path` is a file img2img export wrote in `fmt` (its metadata carries img2img's marks)."""
    try:
        if fmt == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                return "img2img" in (fh.metadata() or {})
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return any(p.key == "img2img_version" for p in model.metadata_props)
    except Exception:  # not parseable as that format: not ours
        return False


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
    try:  # safetensors checks the header's offsets against the file's size before anything is read
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("img2img")
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # SafetensorError (garbage, truncated, a header that lies), OSError
        raise Img2ImgError(f"{path} is not a readable safetensors file ({first_line(exc)}); it may be truncated "
                           "or of another program. Export it again with `img2img export --format safetensors`") from None
    described = sidecar if sidecar.is_file() else path
    try:
        if sidecar.is_file():
            info = json.loads(sidecar.read_text())
        elif raw is None:
            raise Img2ImgError(f"{path} has no img2img description: {sidecar.name} is missing and the file "
                               "carries none; export it again with `img2img export --format safetensors`")
        else:
            info = json.loads(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Img2ImgError(f"{described} does not hold a readable img2img description ({first_line(exc)}); "
                           "export it again with `img2img export --format safetensors`") from None
    info = _checked_description(info, described)
    spec = dict(info["generator"])
    registry = get_registry()
    name = spec.get("name")
    pipeline = pipeline_from_dict(info["pipeline"])
    task_cls = registry.get("task", pipeline.task).factory
    cin, cout = info["in_channels"], info["out_channels"]
    if _builds_own_translator(task_cls):  # e.g. decoder_b(encoder_a(x)), or a generator not at model.generator
        def build(device: str) -> nn.Module:
            return task_cls.for_inference(pipeline, device=device).build_translator(info["direction"])

        name = f"{pipeline.task} translator"
    elif not registry.has("generator", name):
        raise Img2ImgError(f"{path} needs the generator '{name}', which no installed plugin provides; "
                           "install the plugin it was trained with")
    else:
        def build(device: str) -> nn.Module:  # the meta build runs under torch.device("meta")
            return registry.build("generator", spec, in_channels=cin, out_channels=cout)
    # on the meta device first: a description of a far larger network than the tensors stored allocates nothing
    module = build_checked(build, shapes, f"{path} does not fit {name} with {spec} and {cin} -> {cout} channels "
                                          f"(as {described.name} describes it)")
    try:
        state = load_file(str(path))
        module.load_state_dict(state)
    except Exception as exc:  # a dtype torch cannot copy, a file changed while read
        raise Img2ImgError(f"{path} does not fit {name} with {spec}: {first_line(exc)}") from None
    module.eval()
    return LoadedGenerator(module=module.float(), direction=info["direction"], in_channels=cin, out_channels=cout,
                           size_multiple=multiple_of(module) if multiple_of(module) > 1
                           else int(info.get("size_multiple", 1)),
                           pipeline=pipeline, ema=bool(info.get("ema")), checkpoint=path)


def _checked_description(info: Any, where: Path) -> dict[str, Any]:
    """The img2img description of a safetensors export, every field it needs present and of its type."""
    if not isinstance(info, dict):
        raise Img2ImgError(f"{where} does not describe an img2img generator: its description is a JSON "
                           f"{type(info).__name__}, not an object")
    if info.get("format") != "img2img-generator":
        raise Img2ImgError(f"{where} does not describe an img2img generator")
    wrong = []
    for key, kind in (("generator", dict), ("pipeline", dict), ("direction", str), ("in_channels", int),
                      ("out_channels", int)):
        value = info.get(key)
        if key not in info:
            wrong.append(f"no '{key}'")
        elif not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            wanted = {int: "a positive whole number", dict: "a JSON object", str: "a string"}[kind]
            wrong.append(f"'{key}' is {json.dumps(value)[:40]}, not {wanted}")
    if not wrong and not isinstance(info["generator"].get("name"), str):
        wrong.append("'generator' has no 'name'")
    size_multiple = info.get("size_multiple", 1)
    if not isinstance(size_multiple, int) or isinstance(size_multiple, bool) or size_multiple < 1:
        wrong.append(f"'size_multiple' is {json.dumps(size_multiple)[:40]}, not a positive whole number")
    if wrong:
        raise Img2ImgError(f"{where} is not a valid img2img safetensors description: {'; '.join(wrong)}. "
                           "Export it again with `img2img export --format safetensors`")
    return info


def _builds_own_translator(task_cls: type) -> bool:
    """The task overrides ``build_translator`` (and is not an img2img 0.1 task): rebuild through it, as a
    checkpoint is, rather than through ``model.generator``."""
    from img2img.engine.translators import written_for_generator
    from img2img.tasks.base import Task

    return task_cls.build_translator is not Task.build_translator and not written_for_generator(task_cls)
