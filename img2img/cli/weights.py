"""`img2img weights list` and `img2img weights download NAME`: the files feature extractors load."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from img2img.cli.base import app, console, report_user_errors
from img2img.errors import Img2ImgError, did_you_mean

weights_app = typer.Typer(help="Weight files of feature extractors (FID/KID): where they are, and an explicit "
                               "download with a checksum. img2img never downloads on its own.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _with_weights() -> dict[str, object]:
    """Extractor name -> its WeightsFile, for every registered extractor that loads a file."""
    from img2img.registry import get_registry

    return {c.name: c.factory.weights for c in get_registry().all("feature_extractor")
            if getattr(c.factory, "weights", None) is not None}


@weights_app.command("list")
@report_user_errors
def list_(
    verify: bool = typer.Option(False, "--verify", help="Also check the sha256 of each file present (slow)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Feature extractors and their weight files: where each is looked for, and whether it is there."""
    from img2img.evaluation.weights import status
    from img2img.registry import get_registry

    rows = []
    for component in get_registry().all("feature_extractor"):
        weights = getattr(component.factory, "weights", None)
        if weights is None:
            rows.append({"name": component.name, "file": None, "path": None, "present": True, "bytes": None,
                         "note": "no weights file"})
        else:
            rows.append(status(weights, verify=verify))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="feature extractor weights")
    for col in ("extractor", "file", "present", "size", "looked for at"):
        table.add_column(col, overflow="fold")
    for row in rows:
        if row["file"] is None:
            table.add_row(row["name"], "-", "[green]not needed[/]", "", "")
            continue
        command = escape(f"img2img weights download {row['name']}")
        present = "[green]yes[/]" if row["present"] else f"[red]no[/]: {command}"
        if row.get("checksum_ok") is False:
            present = "[red]yes, but its sha256 does not match[/]"
        size = f"{row['bytes'] / 2**20:.1f} MiB" if row.get("bytes") else ""
        table.add_row(row["name"], escape(row["file"]), present, size, escape(row["path"]))
    console.print(table)


@weights_app.command("download")
@report_user_errors
def download(
    name: str = typer.Argument(..., help="Feature extractor whose weights to fetch, e.g. inception_v3."),
    url: Optional[str] = typer.Option(None, "--url", help="Download from this address instead (a mirror); the "
                                                          "checksum is still checked."),
    to: Optional[Path] = typer.Option(None, "--to", help="Write here (a file, or a folder for the usual file "
                                                         "name) instead of the torch hub cache."),
    force: bool = typer.Option(False, "--force", help="Download even when a good copy is already there."),
) -> None:
    """Download an extractor's weights, check the sha256, then move the file into place."""
    from img2img.evaluation.weights import download as fetch

    known = _with_weights()
    if name not in known:
        hint = did_you_mean(name, known)
        hint = f"{hint} " if hint else ""
        raise Img2ImgError(f"no feature extractor named '{name}' loads a weights file; {hint}those that do: "
                           f"{', '.join(sorted(known)) or 'none'} (see `img2img weights list`)")
    weights = known[name]
    path, downloaded = fetch(weights, url=url, to=to, console=console, force=force)
    if downloaded:
        console.print(f"[green]saved[/] {escape(str(path))} (sha256 checked)")
    else:
        console.print(f"[green]already there[/]: {escape(str(path))} (sha256 checked; --force downloads again)")
    if to is not None:
        console.print(f"use it with: train.val_extractor: {{name: {name}, weights: {escape(str(path.resolve()))}}} "
                      f"or img2img evaluate --extractor {name} --feature-weights {escape(str(path))}", highlight=False)
