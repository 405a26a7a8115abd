"""`img2img plugins` and `img2img components`."""
from __future__ import annotations

import json
import os
from typing import Optional

import typer
from rich.table import Table

from img2img.cli.base import app, console, report_user_errors
from img2img.errors import Img2ImgError


@app.command()
@report_user_errors
def plugins(
    all_: bool = typer.Option(False, "--all", help="Include the built-in plugins."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List installed plugins: distribution, version, hooks, components and any load error."""
    from img2img import plugins as plugin_mod
    from img2img.cli.base import print_message
    from img2img.config.builtin import catalogue
    from img2img.registry import plugin_listing

    from img2img.cli import _add_plugin_commands

    plugin_mod.warn_unknown_names_once(lambda line: print_message(line, prefix="warning:", style="yellow"))
    _add_plugin_commands()  # records a register_commands that raises on its plugin's entry
    catalogue()  # records problems with the plugins' built-in pipelines on their entries
    infos = [i for i in plugin_listing() if all_ or not i.builtin]
    if as_json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    if not infos:
        left_out = sorted(set(plugin_mod.not_loaded().values()))
        if left_out:
            console.print(f"no third-party plugins loaded: {plugin_mod.LOAD_ENV}="
                          f"{os.environ.get(plugin_mod.LOAD_ENV, '')!r} leaves out {', '.join(left_out)} "
                          "(use --all to list the built-ins)", highlight=False, markup=False)
        else:
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
    kind: Optional[str] = typer.Argument(None, help="generator, discriminator, loss, task or feature_extractor."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List registered components with their parameters, types and defaults."""
    from img2img.errors import did_you_mean
    from img2img.registry import KINDS, get_registry

    if kind is not None and kind not in KINDS:
        hint = did_you_mean(kind, KINDS)
        raise Img2ImgError(f"unknown kind '{kind}'; {hint + ' ' if hint else ''}the kinds are {', '.join(KINDS)}: "
                           "`img2img components generator` lists the generators, plain `img2img components` "
                           "lists everything")
    items = [c.describe() for c in get_registry().all(kind)]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = Table(title="img2img components")
    for col in ("kind", "name", "plugin", "parameters", "description"):
        table.add_column(col, overflow="fold")
    for c in items:
        params = ", ".join(f"{p['name']}: {p['type']}" + ("" if p["required"] else f" = {p['default']!r}")
                           + (f" ({', '.join(p['constraints'])})" if p["constraints"] else "")
                           for p in c["parameters"])
        table.add_row(c["kind"], c["name"], c["plugin"], params, c["doc"])
    console.print(table)


