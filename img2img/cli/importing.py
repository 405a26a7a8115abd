"""`img2img import reference|cut`: other projects' generator checkpoints as img2img runs."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from img2img.cli.base import app, console, report_user_errors

import_app = typer.Typer(
    help="Turn generator checkpoints of the reference CycleGAN/pix2pix repository or of CUT into an img2img run "
         "folder that translate, export, evaluate and serve use like any other.",
    no_args_is_help=True)
app.add_typer(import_app, name="import")


class Arch(str, Enum):
    resnet_9blocks = "resnet_9blocks"
    resnet_6blocks = "resnet_6blocks"
    unet_256 = "unet_256"
    unet_128 = "unet_128"
    unet = "unet"


class NormChoice(str, Enum):
    instance = "instance"
    batch = "batch"


class ImportDirection(str, Enum):
    a2b = "a2b"
    b2a = "b2a"


class ImportTask(str, Enum):
    cyclegan = "cyclegan"
    pix2pix = "pix2pix"


OutOption = typer.Option(..., "--out", "-o", help="The run folder to write.")
ArchOption = typer.Option(None, "--arch", help="Generator architecture (default: read from the keys).")
NgfOption = typer.Option(None, "--ngf", min=1, help="Filters of the first layer (default: read from the keys).")
NormOption = typer.Option(None, "--norm", help="instance or batch (default: read from the keys).")
DropoutOption = typer.Option(None, "--dropout/--no-dropout",
                             help="Dropout in the residual or U-Net blocks (default: read from the keys; a U-Net's "
                                  "keys do not show it, pix2pix's 0.5 is assumed).")
ChannelsOption = typer.Option(None, "--channels", metavar="A[,B]",
                              help="Image channels of domain A and B, e.g. 3 or 1,3 (default: read from the keys).")
NameOption = typer.Option(None, "--name", help="Pipeline name recorded in the run (default: the folder's name).")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace an existing run folder at --out.")


def _run(kind: str, files: List[Path], out: Path, arch: Optional[Arch], ngf: Optional[int],
         norm: Optional[NormChoice], dropout: Optional[bool], channels: Optional[str], direction: Optional[str],
         task: Optional[str], name: Optional[str], overwrite: bool) -> None:
    from img2img.importing import import_checkpoints

    result = import_checkpoints(kind, files, out, arch=arch.value if arch else None, ngf=ngf,
                                norm=norm.value if norm else None, dropout=dropout, channels=channels,
                                direction=direction, task=task, name=name, overwrite=overwrite)
    table = Table(title=f"img2img import {kind} -> {result.run_dir} ({result.task})")
    for col in ("file", "direction", "net", "what the keys say", "notes"):
        table.add_column(col, overflow="fold")
    for direction_, conv in result.files:
        table.add_row(escape(str(conv.state.path)), direction_, f"{result.task}.{_net(result, direction_)}",
                      escape(conv.detected.describe()), escape("; ".join(conv.notes)))
    console.print(table)
    spec = ", ".join(f"{k}: {v}" for k, v in result.generator.items())
    first = result.directions[0]
    hint = "" if first == "a2b" else f" --direction {first}"
    console.print(f"[green]imported[/] {escape(str(result.run_dir))} (generator {{{escape(spec)}}}; sources in "
                  f"source.json). Use it like a trained run:\n"
                  f"  img2img translate IMAGES --model {escape(str(result.run_dir))} --out OUT{hint}\n"
                  f"  img2img export {escape(str(result.run_dir))} --out generator.onnx{hint}", highlight=False)


def _net(result, direction: str) -> str:
    from img2img.importing.run import NET_KEYS

    return NET_KEYS[(result.task, direction)]


@import_app.command("reference")
@report_user_errors
def reference(
    files: List[Path] = typer.Argument(..., help="latest_net_G.pth (pix2pix), or latest_net_G_A.pth and "
                                                 "latest_net_G_B.pth (CycleGAN, both directions into one run)."),
    out: Path = OutOption,
    arch: Optional[Arch] = ArchOption,
    ngf: Optional[int] = NgfOption,
    norm: Optional[NormChoice] = NormOption,
    dropout: Optional[bool] = DropoutOption,
    channels: Optional[str] = ChannelsOption,
    direction: Optional[ImportDirection] = typer.Option(
        None, "--direction", help="For one file: the direction it translates (default: G_B -> b2a, else a2b)."),
    task: Optional[ImportTask] = typer.Option(
        None, "--task", help="Task recorded in the run (default: pix2pix for one U-Net file, else cyclegan)."),
    name: Optional[str] = NameOption,
    overwrite: bool = OverwriteOption,
) -> None:
    """Import generators of the reference CycleGAN/pix2pix repository (junyanz/pytorch-CycleGAN-and-pix2pix)."""
    _run("reference", files, out, arch, ngf, norm, dropout, channels, direction.value if direction else None,
         task.value if task else None, name, overwrite)


@import_app.command("cut")
@report_user_errors
def cut(
    files: List[Path] = typer.Argument(..., help="CUT's or FastCUT's latest_net_G.pth."),
    out: Path = OutOption,
    arch: Optional[Arch] = ArchOption,
    ngf: Optional[int] = NgfOption,
    norm: Optional[NormChoice] = NormOption,
    dropout: Optional[bool] = DropoutOption,
    channels: Optional[str] = ChannelsOption,
    name: Optional[str] = NameOption,
    overwrite: bool = OverwriteOption,
) -> None:
    """Import a CUT/FastCUT generator (taesungp/contrastive-unpaired-translation); needs img2img-cut."""
    _run("cut", files, out, arch, ngf, norm, dropout, channels, None, None, name, overwrite)
