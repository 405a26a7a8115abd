"""`img2img evaluate` and `img2img report`."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from img2img.cli.base import app, console, print_message, report_user_errors, usage_error
from img2img.cli.inference import direction_option
from img2img.errors import Img2ImgError


class Protocol(str, Enum):
    torch = "torch"
    legacy_pytorch = "legacy_pytorch"
    legacy_tensorflow = "legacy_tensorflow"
    clean = "clean"


@app.command()
@report_user_errors
def evaluate(
    pred_dir: Optional[Path] = typer.Argument(None, help="Folder of translated images (with --save-stats: the "
                                                         "folder to write statistics of)."),
    target_dir: Optional[Path] = typer.Argument(None, help="Folder of reference images (or give --ref-stats)."),
    metrics: str = typer.Option("psnr,ssim", "--metrics", help="Comma list of psnr, ssim, mae, fid, kid."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object {summary, per_image}."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write per-image rows to this CSV file."),
    extractor: str = typer.Option("inception_v3", "--extractor",
                                  help="Feature extractor for FID/KID (img2img components feature_extractor); "
                                       "pytorch_fid is the network published FIDs use."),
    dims: Optional[int] = typer.Option(None, "--dims", help="pytorch_fid only: features of block 64, 192, 768 or "
                                                            "2048 (the default, the pool layer)."),
    feature_weights: Optional[Path] = typer.Option(None, "--feature-weights",
                                                   help="The extractor's weights file (default: the torch hub cache; "
                                                        "img2img weights download NAME)."),
    protocol: Optional[Protocol] = typer.Option(
        None, "--protocol", "--resize-protocol",
        help="How images reach the network: legacy_pytorch (pytorch-fid), legacy_tensorflow (TensorFlow FID, "
             "torch-fidelity), clean (clean-fid), torch (the extractor's own resize). Default: the extractor's "
             "(pytorch_fid: legacy_pytorch; others: torch)."),
    ref_stats: Optional[Path] = typer.Option(None, "--ref-stats", help="FID against these reference statistics "
                                                                      "(pytorch-fid's .npz: mu, sigma) instead of "
                                                                      "TARGET_DIR."),
    save_stats: Optional[Path] = typer.Option(None, "--save-stats", help="Write the statistics of PRED_DIR to this "
                                                                        ".npz (pytorch-fid's format) and stop."),
    kid_subset_size: Optional[int] = typer.Option(None, "--kid-subset-size", min=2,
                                                  help="Images per KID subset (default: min(1000, set sizes))."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per feature batch."),
    model: Optional[Path] = typer.Option(None, "--model", help="Translate the pipeline's test folder with this run first."),
    data: Optional[Path] = typer.Option(None, "--data", help="Pipeline whose test folders to use with --model (data.test_a/test_b, data.test.<domain>)."),
    direction: Optional[str] = direction_option(),
    channels: int = typer.Option(3, "--channels", help="Channels to compare (1, 3 or 4)."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Score translations against references: PSNR/SSIM/MAE per pair, FID/KID per folder."""
    from img2img.evaluation import metrics as m

    if channels not in (1, 3, 4):
        raise usage_error(f"{channels} is not 1 (grey), 3 (RGB) or 4 (RGBA)", "--channels")
    extractor_ref: str | dict = extractor
    if dims is not None:
        from img2img.registry import get_registry

        registry = get_registry()
        if registry.has("feature_extractor", extractor) and \
                "dims" not in registry.get("feature_extractor", extractor).params.model_fields:
            raise usage_error(f"the {extractor} extractor has no dims parameter (pytorch_fid has: 64, 192, 768 or "
                              "2048)", "--dims")
        extractor_ref = {"name": extractor, "dims": dims}
    if save_stats is not None:
        _save_stats(pred_dir, target_dir, save_stats, extractor_ref, feature_weights, protocol, channels, batch_size,
                    device, as_json)
        return
    if model is None and pred_dir is not None and target_dir is None and ref_stats is not None:
        pass  # PRED_DIR against reference statistics
    elif model is None and (pred_dir is None or target_dir is None):
        missing = "TARGET_DIR" if pred_dir is not None else "PRED_DIR"
        raise usage_error(f"Missing argument {missing}: give PRED_DIR and TARGET_DIR (or --ref-stats FILE.npz), or "
                          "--model RUN --data PIPELINE")
    if model is not None:
        pred_dir, target_dir = _translate_test_split(model, data, direction or "a2b", pred_dir)
        if ref_stats is not None:
            target_dir = None
    if pred_dir is None or (target_dir is None and ref_stats is None):
        raise Img2ImgError("give PRED_DIR and TARGET_DIR, or --model RUN --data PIPELINE")
    if csv_path is not None:
        for label, folder in (("prediction", pred_dir), ("target", target_dir)):
            if folder is not None and csv_path.resolve().is_relative_to(folder.resolve()):
                raise Img2ImgError(f"--csv {csv_path} is inside the {label} folder {folder}; img2img never writes into "
                                   "an input folder. Write the CSV elsewhere")
    names = [x.strip() for x in metrics.split(",") if x.strip()]
    result = m.evaluate_folders(pred_dir, target_dir, names, extractor=extractor_ref, feature_weights=feature_weights,
                                protocol=protocol.value if protocol else None, ref_stats=ref_stats,
                                channels=channels, device=device, kid_subset_size=kid_subset_size,
                                batch_size=batch_size)
    for note in result["warnings"]:
        print_message(note, prefix="warning:", style="yellow")
    if csv_path is not None:
        m.write_csv(result, csv_path)
    if as_json:
        print(m.to_json(result))
    else:
        console.print(m.render_table(result))

def _save_stats(folder: Optional[Path], extra: Optional[Path], out: Path, extractor, weights, protocol, channels: int,
                batch_size: int, device: str, as_json: bool) -> None:
    import json

    from img2img.evaluation import distribution as dist
    from img2img.evaluation.folder_stats import save_folder_stats

    if folder is None:
        raise usage_error("Missing argument PRED_DIR: the folder whose statistics --save-stats writes")
    if extra is not None:
        raise usage_error(f"--save-stats writes the statistics of one folder; drop {extra}", "--save-stats")
    info = save_folder_stats(folder, out, extractor=extractor, feature_weights=weights,
                             protocol=protocol.value if protocol else None, channels=channels,
                             batch_size=batch_size, device=device)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    console.print(f"[green]wrote[/] {escape(str(out))}: mu and sigma of {info['count']} images "
                  f"({escape(dist.setup_text(info))}, {info['features']} features)", highlight=False)


def _translate_test_split(model: Path, data: Optional[Path], direction: str, out: Optional[Path]):
    from img2img.config import load_pipeline
    from img2img.config.domains import split_direction
    from img2img.inference.translator import translate_inputs

    if data is None:
        raise Img2ImgError("--model needs --data PIPELINE (its data.test_a and data.test_b are used)")
    p = load_pipeline(data)
    try:
        source, target = split_direction(direction)
    except ValueError as exc:
        raise Img2ImgError(f"--direction {exc}") from None
    src, ref = p.data.test_folder(source), p.data.test_folder(target)
    if src is None or ref is None:
        wanted = " and ".join(p.data.test_path(d) for d in (source, target))
        raise Img2ImgError(f"{data}: set {wanted} to evaluate {direction} with --model")
    out = out or Path("runs") / f"eval-{p.name}-{direction}"
    translate_inputs([src], model=model, out=out, direction=direction, overwrite=True, console=console)
    return out, ref

@app.command()
@report_user_errors
def report(
    run_dir: Path = typer.Argument(..., help="Run folder written by img2img train."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
) -> None:
    """Write a self-contained HTML report: curves, validation and the best checkpoint, samples, timing."""
    from img2img.evaluation.report import write_report

    from img2img.engine.run import read_metrics
    from img2img.evaluation.run_data import setup_warning, val_setups

    path = write_report(run_dir, out)
    note = setup_warning(val_setups(read_metrics(run_dir / "metrics.jsonl")[0]))
    if note:
        print_message(note, prefix="warning:", style="yellow")
    console.print(f"[green]wrote[/] {escape(str(path))}")


