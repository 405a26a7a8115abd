"""Export a trained generator: ONNX (checked against torch in onnxruntime) or safetensors.

This module reads what to export, refuses outputs it must not replace and writes safetensors files;
the ONNX graph and its contract (a generator wrapped in `SizeAdapter` that takes any image down to
1 x 1 pixel, float32 NCHW in [-1, 1], ``metadata_props`` for deployers) live in
`img2img.inference.onnx_graph`, whose public names are importable from here as well.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from img2img import atomic
from img2img._version import __version__
from img2img.engine.checkpoint import LoadedGenerator, load_generator
from img2img.engine.checkpoint import size_multiple as multiple_of
from img2img.errors import Img2ImgError, first_line
from img2img.inference.normstats import apply_norm_stats, check_norm_stats
from img2img.inference.onnx_graph import MIN_SIZE, PARITY_FP16, PARITY_FP32, export_generator, onnx_metadata
from img2img.tensorfile import build_checked

__all__ = ["export", "export_generator", "load_safetensors_generator", "onnx_metadata", "PARITY_FP16",
           "PARITY_FP32", "MIN_SIZE"]


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
