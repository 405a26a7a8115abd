"""The `img2img` command line: parse, call the engine, render with rich.

User errors (`Img2ImgError`) print a message and exit 1 without a traceback; anything else is a
bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from img2img import __version__
from img2img.errors import Img2ImgError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="img2img",
    help="Image-to-image translation: train CycleGAN and pix2pix from YAML pipelines, translate folders, "
         "export ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
datasets_app = typer.Typer(help="Demo data sets (synthesised, no download) and the public archives.",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


def report_user_errors(fn: Callable) -> Callable:
    """Img2ImgError -> message + exit 1; a signal-stopped training keeps its 130/143."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from img2img.train import TrainingStopped

        try:
            return fn(*args, **kwargs)
        except TrainingStopped as stop:
            print_message(str(stop), style="yellow")
            raise typer.Exit(stop.code) from None
        except Img2ImgError as exc:
            print_message(str(exc), prefix="error:")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print_message("interrupted", style="yellow")
            raise typer.Exit(130) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" while writing {exc.filename}" if exc.filename else ""
            print_message(f"disk full{where}. Free some space and run the command again (a training continues "
                          "with --resume from its last complete checkpoint).", prefix="error:")
            raise typer.Exit(1) from None

    return wrapper


def print_message(text: str, *, prefix: str = "", style: str = "") -> None:
    """A message to stderr as plain text: file names such as ``img[1].png`` are not read as markup,
    and long paths are not broken across lines."""
    line = Text()
    if prefix:
        line.append(prefix, style="red")
        line.append(" ")
    line.append(text, style=style)
    err_console.print(line, highlight=False, soft_wrap=True)


def version_callback(value: bool) -> None:
    if value:
        console.print(f"img2img {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """img2img: plugin-based image-to-image translation."""


SetOption = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                         help="Override a pipeline field, e.g. --set train.max_steps=100 (value parsed as YAML).")


# ---------------------------------------------------------------------------------------------
# train / validate


@app.command()
@report_user_errors
def train(
    pipeline: Optional[Path] = typer.Argument(None, help="Pipeline YAML file (optional with --resume)."),
    set_: Optional[List[str]] = SetOption,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<name>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run folder or a checkpoint file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder at --out."),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1,
                                        help="Train on N processes on this machine (runs torchrun)."),
) -> None:
    """Train a pipeline; Ctrl-C checkpoints, --resume continues exactly."""
    from img2img import train as engine

    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        _exec_torchrun(nproc)
    engine.train(pipeline, overrides=set_ or [], out=out, resume=resume, overwrite=overwrite, console=console)


def _exec_torchrun(nproc: int) -> None:
    """Re-run this command under torchrun (single node); torchrun sets WORLD_SIZE for the workers."""
    args = [a for a in sys.argv[1:]]
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "img2img", *cleaned]
    os.execv(sys.executable, command)


@app.command()
@report_user_errors
def validate(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML file."),
    set_: Optional[List[str]] = SetOption,
    show: bool = typer.Option(False, "--show", help="Print the resolved pipeline (every default filled in)."),
) -> None:
    """Validate a pipeline without running it: every problem at once, with its YAML path."""
    import yaml

    from img2img.config import dump_pipeline, load_pipeline

    p = load_pipeline(pipeline, set_ or [])
    if show:
        console.print(yaml.safe_dump(dump_pipeline(p), sort_keys=False), highlight=False, markup=False,
                      soft_wrap=True)  # YAML to copy: no markup, no folded lines
    model = getattr(p, "model", None)
    parts = [f"task {p.task}", f"name {p.name}"]
    if model is not None:
        from img2img.config import ComponentSpec

        for fname in type(model).model_fields:
            value = getattr(model, fname)
            if isinstance(value, ComponentSpec):
                parts.append(f"{fname} {value.name}")
    console.print(f"[green]ok[/] {escape(str(pipeline))}: " + escape(", ".join(parts)), highlight=False)


# ---------------------------------------------------------------------------------------------
# translate / export


class Direction(str, Enum):
    a2b = "a2b"
    b2a = "b2a"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ImageFormat(str, Enum):
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tif = "tif"


@app.command()
@report_user_errors
def translate(
    inputs: List[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    model: Path = typer.Option(..., "--model", "-m", help="Run folder, checkpoint (.pt) or exported .onnx file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (mirrors the input's relative paths)."),
    direction: Direction = typer.Option(Direction.a2b, "--direction", "-d", help="a2b or b2a."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Images per batch (equal sizes batch together)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    precision: Precision = typer.Option(Precision.fp32, "--precision", help="fp32, bf16 or fp16."),
    channels_last: bool = typer.Option(False, "--channels-last",
                                       help="Run a torch model in channels_last (NHWC) layout; pays on CUDA."),
    tile: Optional[int] = typer.Option(None, "--tile", min=16, help="Translate in tiles of N x N pixels."),
    overlap: Optional[int] = typer.Option(None, "--overlap", min=0,
                                          help="Pixels shared by neighbouring tiles, blended (default 32 with "
                                               "--tile, 64 when --max-pixels tiles)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels",
                                             help="Tile automatically above this many pixels per image."),
    tile_norm: str = typer.Option("global", "--tile-norm",
                                  help="Instance-norm statistics for tiles: global (from a downscaled whole "
                                       "image, no seams) or local (each tile its own)."),
    fmt: Optional[ImageFormat] = typer.Option(None, "--format", help="Output format (default: keep the input's)."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Resize the shorter side to N before translating."),
    keep_depth: bool = typer.Option(False, "--keep-depth", help="Write 16-bit output for 16-bit input."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any input could not be translated."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the trained generator, not its EMA."),
) -> None:
    """Translate images or folders; every output has exactly its input's size."""
    from img2img.translate import translate_inputs

    report = translate_inputs(
        inputs, model=model, out=out, direction=direction.value, batch_size=batch_size, device=device,
        precision=precision.value, tile=tile, overlap=overlap, max_pixels=max_pixels, tile_norm=tile_norm,
        fmt=fmt.value if fmt else None, resize=resize, keep_depth=keep_depth, overwrite=overwrite,
        use_ema=not no_ema, channels_last=channels_last, console=console,
    )
    if report.failed and strict:
        raise typer.Exit(1)


class ExportFormat(str, Enum):
    onnx = "onnx"
    safetensors = "safetensors"


@app.command()
@report_user_errors
def export(
    model: Path = typer.Argument(..., help="Run folder or checkpoint (.pt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.onnx, or .safetensors with --format)."),
    direction: Direction = typer.Option(Direction.a2b, "--direction", "-d", help="a2b or b2a."),
    opset: int = typer.Option(18, "--opset", min=17, help="ONNX opset."),
    half: bool = typer.Option(False, "--half", help="Store float16 weights (inputs and outputs stay float32)."),
    fmt: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="onnx or safetensors."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Export the trained generator, not its EMA."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the onnxruntime parity check."),
) -> None:
    """Export a generator to ONNX (checked against torch) or safetensors."""
    from img2img.export import export as run_export

    run_export(model, out, direction=direction.value, opset=opset, half=half, fmt=fmt.value,
               use_ema=not no_ema, check=not no_check, console=console)


# ---------------------------------------------------------------------------------------------
# plugins / components


@app.command()
@report_user_errors
def plugins(
    all_: bool = typer.Option(False, "--all", help="Include the built-in plugins."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List installed plugins: distribution, version, hooks, components and any load error."""
    from img2img.plugins import plugin_infos

    infos = [i for i in plugin_infos() if all_ or not i.builtin]
    if as_json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    if not infos:
        console.print("no third-party plugins installed (use --all to list the built-ins)")
        return
    table = Table(title="img2img plugins")
    for col in ("name", "distribution", "version", "hooks", "components", "error"):
        table.add_column(col, overflow="fold")
    for i in infos:
        table.add_row(i.name, i.distribution or "", i.version or "", ", ".join(i.hooks), ", ".join(i.components),
                      "[red]" + "; ".join(i.errors) + "[/]" if i.errors else "")
    console.print(table)


@app.command()
@report_user_errors
def components(
    kind: Optional[str] = typer.Argument(None, help="generator, discriminator, loss or task."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List registered components with their parameters, types and defaults."""
    from img2img.registry import KINDS, get_registry, unknown_message

    if kind is not None and kind not in KINDS:
        raise Img2ImgError(unknown_message("kind", kind, list(KINDS)))
    items = [c.describe() for c in get_registry().all(kind)]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = Table(title="img2img components")
    for col in ("kind", "name", "plugin", "parameters", "description"):
        table.add_column(col, overflow="fold")
    for c in items:
        params = ", ".join(f"{p['name']}: {p['type']}" + ("" if p["required"] else f" = {p['default']!r}")
                           for p in c["parameters"])
        table.add_row(c["kind"], c["name"], c["plugin"], params, c["doc"])
    console.print(table)


# ---------------------------------------------------------------------------------------------
# datasets


@datasets_app.command("synth")
@report_user_errors
def datasets_synth(
    name: str = typer.Argument(..., help="shapes (unpaired) or outlines (paired)."),
    out: Path = typer.Argument(..., help="Folder to write."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same files)."),
    count: Optional[int] = typer.Option(None, "--count", min=1, help="Training images per domain."),
) -> None:
    """Generate a deterministic demo data set (no download)."""
    from img2img.synth import synthesize

    path = synthesize(name, out, seed=seed, count=count)
    console.print(f"[green]wrote[/] {escape(str(path))}")


@datasets_app.command("download")
@report_user_errors
def datasets_download(
    name: str = typer.Argument(..., help="e.g. horse2zebra, facades, maps."),
    out: Path = typer.Argument(Path("data"), help="Folder to extract into (default: data)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="cyclegan or pix2pix (when a name exists in both)."),
) -> None:
    """Download a public CycleGAN or pix2pix data set."""
    from img2img.synth import download

    path = download(name, out, kind=kind)
    console.print(f"[green]ready[/] {escape(str(path))}")


# ---------------------------------------------------------------------------------------------
# evaluate / report


@app.command()
@report_user_errors
def evaluate(
    pred_dir: Optional[Path] = typer.Argument(None, help="Folder of translated images."),
    target_dir: Optional[Path] = typer.Argument(None, help="Folder of reference images."),
    metrics: str = typer.Option("psnr,ssim", "--metrics", help="Comma list of psnr, ssim, mae, fid, kid."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object {summary, per_image}."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write per-image rows to this CSV file."),
    feature_weights: Optional[Path] = typer.Option(None, "--feature-weights",
                                                   help="Inception-v3 weights for FID/KID (a torchvision .pth)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Translate the pipeline's test folder with this run first."),
    data: Optional[Path] = typer.Option(None, "--data", help="Pipeline whose data.test_a/test_b to use with --model."),
    direction: Direction = typer.Option(Direction.a2b, "--direction", "-d"),
    channels: int = typer.Option(3, "--channels", help="Channels to compare (1, 3 or 4)."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Score translations against references: PSNR/SSIM/MAE per pair, FID/KID per folder."""
    from img2img import metrics as m

    if model is not None:
        pred_dir, target_dir = _translate_test_split(model, data, direction.value, pred_dir)
    if pred_dir is None or target_dir is None:
        raise Img2ImgError("give PRED_DIR and TARGET_DIR, or --model RUN --data PIPELINE")
    names = [x.strip() for x in metrics.split(",") if x.strip()]
    result = m.evaluate_folders(pred_dir, target_dir, names, feature_weights=feature_weights, channels=channels,
                                device=device)
    if csv_path is not None:
        m.write_csv(result, csv_path)
    if as_json:
        print(m.to_json(result))
    else:
        console.print(m.render_table(result))


def _translate_test_split(model: Path, data: Optional[Path], direction: str, out: Optional[Path]):
    from img2img.config import load_pipeline
    from img2img.translate import translate_inputs

    if data is None:
        raise Img2ImgError("--model needs --data PIPELINE (its data.test_a and data.test_b are used)")
    p = load_pipeline(data)
    src, ref = (p.data.test_a, p.data.test_b) if direction == "a2b" else (p.data.test_b, p.data.test_a)
    if src is None or ref is None:
        raise Img2ImgError(f"{data}: set data.test_a and data.test_b to evaluate with --model")
    out = out or Path("runs") / f"eval-{p.name}-{direction}"
    translate_inputs([src], model=model, out=out, direction=direction, overwrite=True, console=console)
    return out, ref


@app.command()
@report_user_errors
def report(
    run_dir: Path = typer.Argument(..., help="Run folder written by img2img train."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
) -> None:
    """Write a self-contained HTML report: curves, samples over time, timing."""
    from img2img.report import write_report

    path = write_report(run_dir, out)
    console.print(f"[green]wrote[/] {escape(str(path))}")


# ---------------------------------------------------------------------------------------------


def _add_plugin_commands() -> None:
    """Let plugins add commands; a plugin that fails here is recorded, the CLI keeps working."""
    from img2img import plugins as plugin_mod

    try:
        pm = plugin_mod.get_plugin_manager()
    except Img2ImgError as exc:
        print_message(str(exc), prefix="error:")
        raise SystemExit(1) from None
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(app=app)
        except Exception as exc:
            if plugin_mod.strict():
                raise
            info = plugin_mod.info_for(impl.plugin_name)
            if info is not None:
                info.errors.append(f"register: register_commands raised {type(exc).__name__}: {exc}")


def main() -> None:
    _add_plugin_commands()
    app()


if __name__ == "__main__":
    main()
