"""`img2img pipelines`: the built-in pipelines (core and plugins), shown and copied for editing."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from img2img.cli.base import app, console, report_user_errors

pipelines_app = typer.Typer(help="Built-in pipelines, found by name: `img2img train NAME` runs one; `show` prints "
                                 "it; `init` writes a copy to edit.", invoke_without_command=True)
app.add_typer(pipelines_app, name="pipelines")


@pipelines_app.callback()
@report_user_errors
def pipelines(ctx: typer.Context,
              as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in pipelines: name, task and the distribution that ships it, one line each."""
    if ctx.invoked_subcommand is not None:
        return
    from img2img.config.builtin import builtin_pipelines, catalogue

    found = builtin_pipelines()
    clashes = catalogue().clashes
    if as_json:
        print(json.dumps({"pipelines": [p.as_dict() for p in found.values()],
                          "clashes": {n: [e.as_dict() for e in es] for n, es in clashes.items()}}, indent=2))
        return
    width = max((len(n) for n in [*found, *clashes]), default=4)
    for name, entry in found.items():
        console.print(f"{name:<{width}}  {entry.task:<10} {escape(entry.source)}", highlight=False)
    for name, entries in clashes.items():
        console.print(f"[yellow]{name:<{width}}  not used: registered by "
                      f"{escape(', '.join(e.source for e in entries))}[/]", highlight=False)
    if not found and not clashes:
        console.print("no built-in pipelines")


@pipelines_app.command("show")
@report_user_errors
def show(name: str = typer.Argument(..., help="A built-in pipeline's name.")) -> None:
    """Print a built-in pipeline's YAML."""
    from img2img.config.builtin import find_builtin

    print(find_builtin(name).text(), end="")


@pipelines_app.command("init")
@report_user_errors
def init(
    name: str = typer.Argument(..., help="A built-in pipeline's name."),
    out: Path = typer.Argument(..., help="The YAML file to write."),
    data: Optional[str] = typer.Option(None, "--data", metavar="DIR",
                                       help="The folder that holds the data (replaces e.g. data/horse2zebra)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Write a copy of a built-in pipeline to edit; its data paths then resolve against the copy's folder."""
    from img2img.config.builtin import init_pipeline

    changes = init_pipeline(name, out, data=data, overwrite=overwrite)
    console.print(f"[green]wrote[/] {escape(str(out))} (a copy of the built-in pipeline '{escape(name)}')",
                  highlight=False)
    for old, new in changes.items():
        where = "" if Path(new).is_absolute() else f" (relative to {escape(str(out))}'s folder)"
        console.print(f"  data path {escape(old)} -> {escape(new)}{where}", highlight=False, soft_wrap=True)
    console.print(f"Edit it, then: img2img train {escape(str(out))}", highlight=False)
