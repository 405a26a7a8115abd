"""`img2img health RUN`: the training-health diagnosis of a finished or running run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from img2img.cli.base import app, console, report_user_errors

STATUS = {
    "not judged": "[yellow]not judged yet[/] (warm-up until step {warmup}): nothing is judged before",
    "healthy": "[green]healthy[/]: no warning",
    "recovered": "[yellow]recovered[/]: every warning has cleared",
    "unhealthy": "[red]unhealthy[/]: a warning is still active",
    "no signals": "[yellow]no signals[/]: no training-health values in metrics.jsonl (the run predates them)",
    "off": "[yellow]off[/]: the run was trained with train.health: off",
}


@app.command()
@report_user_errors
def health(
    run_dir: Path = typer.Argument(..., help="Run folder written by img2img train (or a checkpoint in it)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: status, signals, warnings."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the signals' curves to this PNG/SVG/PDF."),
) -> None:
    """Diagnose a run: mode collapse, a discriminator that wins, unstable convergence (see `img2img docs health`)."""
    from img2img.evaluation.health import plot as draw
    from img2img.evaluation.health import run_health

    result = run_health(run_dir)
    if plot is not None and result.signals:
        draw(result, plot)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    console.print(f"[bold]{escape(str(result.run))}[/]: step {result.last_step}, "
                  f"train.health {escape(str(result.mode or 'unset'))} - {STATUS[result.status].format(warmup=result.thresholds.warmup)}", highlight=False)
    if result.signals:
        table = Table(title="signals (metrics.jsonl)", title_justify="left")
        for col in ("signal", "last", "at step", "min", "max", "meaning"):
            numeric = col in ("last", "at step", "min", "max")
            table.add_column(col, overflow="fold", justify="right" if numeric else "left")
        for s in result.signals:
            sm = s.summary()
            table.add_row(s.name, f"{sm['last']:.4g}", str(sm["last_step"]), f"{sm['min']:.4g}", f"{sm['max']:.4g}",
                          escape(s.meaning))
        console.print(table)
    warnings = result.warnings
    if warnings:
        table = Table(title="warnings (health.jsonl)", title_justify="left", show_lines=True)
        for col in ("step", "since", "finding", "cleared", "what was seen, what to try"):
            table.add_column(col, overflow="fold")
        for w in warnings:
            table.add_row(str(w["step"]), str(w["since"]), f"{escape(w['finding'])} ({escape(w['direction'])})",
                          "no" if w["cleared_at"] is None else str(w["cleared_at"]), escape(w["message"]))
        console.print(table)
    if plot is not None:
        console.print(f"[green]wrote[/] {escape(str(plot))}" if result.signals else "no curves to draw")
