"""`img2img train` and `img2img validate`."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from img2img.cli.base import SetOption, app, console, err_console, print_message, report_user_errors, usage_error
from img2img.cli.torchrun import exec_torchrun


@app.command()
@report_user_errors
def train(
    pipeline: Optional[Path] = typer.Argument(None, help="Pipeline YAML file or built-in pipeline name (see "
                                                         "`img2img pipelines`; optional with --resume)."),
    set_: Optional[List[str]] = SetOption,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<name>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run folder or a checkpoint file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder at --out."),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1,
                                        help="Train on N processes on this machine (runs torchrun)."),
) -> None:
    """Train a pipeline; Ctrl-C checkpoints, --resume continues exactly."""
    from img2img.engine import train as engine

    if pipeline is None and resume is None:
        raise usage_error("Missing argument PIPELINE: give a pipeline file or built-in pipeline name (see "
                          "`img2img pipelines`), or --resume RUN_DIR")
    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        exec_torchrun(nproc, "training")
    engine.train(pipeline, overrides=set_ or [], out=out, resume=resume, overwrite=overwrite, console=console)

@app.command()
@report_user_errors
def validate(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML file or built-in pipeline name."),
    set_: Optional[List[str]] = SetOption,
    show: bool = typer.Option(False, "--show", help="Print the resolved pipeline (every default filled in)."),
) -> None:
    """Validate a pipeline without running it: every problem at once, with its YAML path."""
    import yaml

    from img2img.config import dump_pipeline, load_pipeline
    from img2img.datasets.given_data import use_given_data
    from img2img.engine.validation import check_ready, data_notes, describe

    p = load_pipeline(pipeline, set_ or [])
    given_data_note = use_given_data(p.data)  # a demo pipeline on the user's own folders, as train takes it
    if given_data_note:
        print_message(given_data_note, prefix="note:")
    check_ready(p, str(pipeline))  # the validation extractor and its weights, before any training
    if show:  # stdout is the YAML alone (`--show > resolved.yaml`); the summary goes to stderr
        if p.data.val is not None and p.train.val_metric is None:  # as training records it in pipeline.yaml
            from img2img.registry import get_registry
            from img2img.tasks.validation import effective_metric

            p.train.val_metric = effective_metric(get_registry().get("task", p.task).factory, p)
        if p.data.val is not None and p.train.val_every is None and "val_every" not in p.train.model_fields_set:
            p.train.val_every = p.train.checkpoint_every  # as training records it (null given: off)
        sys.stdout.write(yaml.safe_dump(dump_pipeline(p), sort_keys=False, width=float("inf")))
        sys.stdout.flush()
    model = getattr(p, "model", None)
    parts = [f"task {p.task}", f"name {p.name}"]
    if model is not None:
        from img2img.config import ComponentSpec

        for fname in type(model).model_fields:
            value = getattr(model, fname)
            if isinstance(value, ComponentSpec):
                parts.append(f"{fname} {value.name}")
    if (scored := describe(p)) is not None:
        parts.append(f"validation {scored}")
    (err_console if show else console).print(f"[green]ok[/] {escape(str(pipeline))}: " + escape(", ".join(parts)),
                                             highlight=False)
    for note in data_notes(p):  # valid, but not trainable here yet: say what train would say
        print_message(f"{note} (`img2img train` needs it)", prefix="warning:")


