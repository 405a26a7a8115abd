"""`img2img datasets synth|download`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from img2img.cli.base import console, datasets_app, report_user_errors


@datasets_app.command("synth")
@report_user_errors
def datasets_synth(
    name: str = typer.Argument(..., help="shapes (unpaired) or outlines (paired)."),
    out: Path = typer.Argument(..., help="Folder to write."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same files)."),
    count: Optional[int] = typer.Option(None, "--count", min=1, help="Training images per domain."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace a synthetic dataset already in OUT (never a folder holding "
                                        "anything else)."),
) -> None:
    """Generate a deterministic demo data set (no download) into a new or empty folder."""
    from img2img.datasets.synth import synthesize

    path = synthesize(name, out, seed=seed, count=count, overwrite=overwrite)
    console.print(f"[green]wrote[/] {escape(str(path))}")

@datasets_app.command("download")
@report_user_errors
def datasets_download(
    name: str = typer.Argument(..., help="e.g. horse2zebra, facades, maps."),
    out: Path = typer.Argument(Path("data"), help="Folder to extract into (default: data)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="cyclegan or pix2pix (when a name exists in both)."),
) -> None:
    """Download a public CycleGAN or pix2pix data set."""
    from img2img.datasets.synth import download

    path = download(name, out, kind=kind)
    console.print(f"[green]ready[/] {escape(str(path))}")


