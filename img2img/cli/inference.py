"""`img2img translate` and `img2img export`."""
from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from img2img.cli.base import app, console, report_user_errors


DIRECTION_HELP = ("<from>2<to>: any direction the model's task translates (a2b, b2a, a2c, ...; img2img serve lists "
                  "them). Default: a2b, or the task's first direction.")


def direction_option() -> Optional[str]:
    return typer.Option(None, "--direction", "-d", help=DIRECTION_HELP, show_default=False)


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"

class NormStats(str, Enum):
    running = "running"
    batch = "batch"

BACKEND_HELP = ("What computes: torch (run folders, checkpoints), onnxruntime (.onnx files), openvino (either, "
                "compiled for this CPU; pip install 'img2img-pipeline[openvino]') or auto (the fastest way that agrees "
                "with float32 on this machine, measured once and cached). Default: torch, or onnxruntime for .onnx.")

NORM_STATS_HELP = ("Batch-norm statistics: running (eval mode, the default) or batch (each image's own, as the "
                   "reference's test.py without --eval; dropout stays off). See `img2img docs import`.")

class ImageFormat(str, Enum):
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tif = "tif"

@app.command()
@report_user_errors
def translate(
    inputs: List[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    model: Path = typer.Option(..., "--model", "-m",
                               help="Run folder, checkpoint (.pt), or an exported .onnx or .safetensors file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (mirrors the input's relative paths)."),
    direction: Optional[str] = direction_option(),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Images per batch (equal sizes batch together)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    precision: str = typer.Option("fp32", "--precision",
                                  help="fp32, bf16, fp16 (bf16-mixed and fp16-mixed too) or auto: bf16 only where "
                                       "this machine runs it faster (and, with --backend openvino or auto, where it "
                                       "agrees with fp32)."),
    channels_last: bool = typer.Option(False, "--channels-last",
                                       help="Run a torch model in channels_last (NHWC) layout; pays on CUDA."),
    tile: Optional[int] = typer.Option(None, "--tile", min=16, help="Translate in tiles of N x N pixels."),
    overlap: Optional[int] = typer.Option(None, "--overlap", min=0,
                                          help="Pixels shared by neighbouring tiles, blended (default 32 with "
                                               "--tile, 64 when --max-pixels tiles)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1,
                                             help="Tile automatically above this many pixels per image."),
    tile_norm: str = typer.Option("auto", "--tile-norm",
                                  help="Instance-norm statistics for tiles: auto (per image, whichever errs less), "
                                       "global (from a downscaled whole image) or local (each tile its own)."),
    fmt: Optional[ImageFormat] = typer.Option(None, "--format", help="Output format (default: keep the input's)."),
    resize: Optional[int] = typer.Option(None, "--resize", min=1,
                                         help="Resize the shorter side to N before translating."),
    keep_depth: bool = typer.Option(False, "--keep-depth", help="Write 16-bit output for 16-bit input."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any input could not be translated."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the trained generator, not its EMA."),
    norm_stats: Optional[NormStats] = typer.Option(None, "--norm-stats", help=NORM_STATS_HELP),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1,
                                        help="Translate on N processes on this machine (runs torchrun; the "
                                             "processes share the inputs). See `img2img docs distributed`."),
    backend: Optional[str] = typer.Option(None, "--backend", help=BACKEND_HELP),
) -> None:
    """Translate images or folders; every output has exactly its input's size."""
    from img2img.inference.translator import translate_inputs

    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        from img2img.cli.torchrun import exec_torchrun

        exec_torchrun(nproc, "translation", ended="ended")

    report = translate_inputs(
        inputs, model=model, out=out, direction=direction, batch_size=batch_size, device=device,
        precision=precision, tile=tile, overlap=overlap, max_pixels=max_pixels, tile_norm=tile_norm,
        fmt=fmt.value if fmt else None, resize=resize, keep_depth=keep_depth, overwrite=overwrite,
        use_ema=not no_ema, channels_last=channels_last, console=console,
        norm_stats=norm_stats.value if norm_stats else None, backend=backend,
    )
    if report.failed and strict:
        raise typer.Exit(1)

class ExportFormat(str, Enum):
    onnx = "onnx"
    safetensors = "safetensors"

@app.command()
@report_user_errors
def export(
    model: Path = typer.Argument(..., help="Run folder, checkpoint (.pt) or .safetensors export."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.onnx, or .safetensors with --format)."),
    direction: Optional[str] = direction_option(),
    opset: int = typer.Option(18, "--opset", min=17, help="ONNX opset."),
    half: bool = typer.Option(False, "--half", help="Store float16 weights (inputs and outputs stay float32)."),
    fmt: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="onnx or safetensors."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Export the trained generator, not its EMA."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the onnxruntime parity check."),
    norm_stats: NormStats = typer.Option(NormStats.running, "--norm-stats", help=NORM_STATS_HELP),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an existing --out that is not an earlier export of this format."),
    int8: bool = typer.Option(False, "--int8", help="Write a statically quantised int8 ONNX file (QDQ), calibrated on "
                                                   "--calibrate's images; runs in onnxruntime and --backend openvino."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate",
                                             help="With --int8: a folder of images like those to translate (up to "
                                                  "64 are used)."),
    min_psnr: Optional[float] = typer.Option(None, "--min-psnr", min=0,
                                             help="With --int8: refuse a file whose worst calibration image is below "
                                                  "this PSNR against float32 (default 30 dB)."),
    force: bool = typer.Option(False, "--force", help="With --int8: write the file even below --min-psnr."),
) -> None:
    """Export a generator to ONNX (checked against torch; float32, --half or --int8) or safetensors."""
    from img2img.inference.export import export as run_export

    run_export(model, out, direction=direction, opset=opset, half=half, fmt=fmt.value,
               use_ema=not no_ema, check=not no_check, console=console, norm_stats=norm_stats.value,
               overwrite=overwrite, int8=int8, calibrate=calibrate, force=force, min_psnr=min_psnr)


