"""`train()`: the entry point of ``img2img train`` -- read the pipeline or the checkpoint to resume,
join torchrun, prepare the run folder, and run the `Trainer` (img2img.engine.loop).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from rich.console import Console

from img2img.config import (
    PipelineBase,
    apply_overrides,
    dump_pipeline,
    validate_pipeline,
)
from img2img.data.folders import data_folders
from img2img.engine import checkpoint as ckpt_io
from img2img.engine.distributed import Dist, pick_device, setup_distributed
from img2img.engine.loop import Trainer, total_steps
from img2img.engine.run import RunFolder, prepare_run_folder
from img2img.engine.signals import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    StopRequest,
    TrainingStopped,
)
from img2img.errors import Img2ImgError, PeerFailed
from img2img.tasks.base import reference_decay as lr_factor

__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "Dist", "RunFolder", "StopRequest", "Trainer", "TrainingStopped",
           "lr_factor", "pick_device", "prepare_run_folder", "setup_distributed", "total_steps", "train"]


def train(pipeline_path: Path | None, *, overrides: list[str] | None = None, out: Path | None = None,
          resume: Path | None = None, overwrite: bool = False, console: Console | None = None) -> Path:
    """Train from a pipeline file, or continue a run; returns the path of `last.pt`."""
    from img2img.config import load_pipeline
    from img2img.datasets.given_data import use_given_data

    console = console or Console()
    overrides = list(overrides or [])
    resume_state = None
    given_data_note = None
    if resume is not None:
        resume_state = ckpt_io.load_checkpoint(resume)
        ckpt_path = Path(resume_state["path"])
        if resume_state.get("resumable") is False:  # e.g. `img2img import`: translators, no optimisers, no data
            source = resume_state.get("source") or {}
            kind = source.get("importer") or source.get("kind") or "imported"
            raise Img2ImgError(f"{ckpt_path} holds translators only ({kind}); it has no optimiser state to continue. "
                               "Translate, export or serve it; to train, start a new run from a pipeline")
        run_root = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
        if out is not None and Path(out).resolve() != run_root.resolve():
            raise Img2ImgError(f"--out {out} differs from the run being resumed ({run_root}); drop --out")
        overridden: set[str] = set()
        raw = apply_overrides(resume_state["pipeline"], overrides, overridden)
        pipeline = validate_pipeline(raw, source=f"{ckpt_path} (+ --set)", overridden=overridden)
        if pipeline_path is not None:
            _warn_if_changed(console, load_pipeline(pipeline_path), pipeline, pipeline_path)
        run = RunFolder(run_root)
    else:
        if pipeline_path is None:
            raise Img2ImgError("give a pipeline file, or --resume RUN_DIR")
        pipeline = load_pipeline(pipeline_path, overrides)
        given_data_note = use_given_data(pipeline.data)  # a demo pipeline on the user's own folders
        run = RunFolder(Path(out) if out else Path("runs") / pipeline.name)
        refuse_run_in_data(pipeline, run.root)
    timeout = float(os.environ.get("IMG2IMG_DIST_TIMEOUT", "300"))
    dist, device = setup_distributed(pipeline.train.device, timeout)
    new_folder = resume_state is None and not run.root.exists()
    try:
        failure = None
        if dist.main and resume_state is None:  # only rank 0 touches the run folder and the demo data
            if given_data_note:
                console.print(f"note: {given_data_note}", highlight=False, markup=False)
            try:
                _ensure_synth(pipeline, console)
                run = prepare_run_folder(run.root, resume=False, overwrite=overwrite)
            except Img2ImgError as exc:
                failure = exc
        if dist.agree(failure is not None):  # every rank stops; rank 0 says why, once
            raise failure if failure is not None else PeerFailed("rank 0 could not prepare the run")
        return _fit(pipeline, run, dist, device, console, resume_state)
    except RuntimeError as exc:
        if dist.enabled and _peer_gone(exc):  # another rank failed and printed its reason
            raise PeerFailed(f"rank {dist.rank}: another process of this job stopped") from exc
        raise
    except Img2ImgError:
        if new_folder and dist.main and run.root.is_dir() and not any(run.root.iterdir()):
            run.root.rmdir()  # stopped before writing anything (e.g. a missing data folder): leave no empty run
        raise
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _peer_gone(exc: RuntimeError) -> bool:
    """The error a collective raises in a process whose peer has exited (gloo, NCCL)."""
    dist_error = getattr(torch.distributed, "DistError", ())
    return isinstance(exc, dist_error) or any(text in str(exc) for text in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted"))


def refuse_run_in_data(pipeline: PipelineBase, root: Path) -> None:
    """A run folder inside a data folder would put its samples (PNG files) among the training images."""
    target = Path(root).expanduser().resolve()
    for where, folder in data_folders(pipeline.data):
        folder = folder.expanduser().resolve()
        if target == folder or target.is_relative_to(folder):
            raise Img2ImgError(f"--out {root} is inside {where} ({folder}); img2img never writes into an input "
                               "folder (the sample images it writes would be read as data). Choose an --out outside it")


def _fit(pipeline, run, dist, device, console, resume_state) -> Path:
    trainer = Trainer(pipeline, run, dist=dist, device=device, console=console, resume_from=resume_state)
    if trainer.dist.main:
        where = f"resuming at step {trainer.step}" if resume_state else "starting"
        ranks = f" x {dist.world} processes" if dist.enabled else ""
        console.print(f"[bold]{pipeline.task}[/] {pipeline.name}: {where} on {trainer.device}{ranks}, {trainer.train.precision} "
                      f"({trainer.data.steps_per_epoch} steps/epoch, "
                      f"{total_steps(pipeline.train, trainer.data.steps_per_epoch)} steps) -> {run.root}")
    trainer.fit()
    if trainer.dist.main:
        console.print(f"[green]done[/]: {run.root} (checkpoints/last.pt, samples/, metrics.jsonl)")
    return run.last


def _ensure_synth(pipeline: PipelineBase, console: Console) -> None:
    name = pipeline.data.synthesize
    if not name:
        return
    from img2img.datasets.synth import ensure_synth
    from img2img.datasets.synth_checks import synthesize_problems
    from img2img.registry import get_registry

    data_kind = get_registry().get("task", pipeline.task).factory.data_kind
    problems = synthesize_problems(pipeline.data, data_kind, pipeline.task)
    if problems:
        from img2img.config.pipeline import pipeline_error

        raise pipeline_error(pipeline, problems, "the pipeline")
    target = pipeline.data.folder("a") or pipeline.data.pairs
    if target is None:
        return
    root = target.parent
    if ensure_synth(name, root, seed=0):
        console.print(f"generated the '{name}' demo data set in {root}")


def _warn_if_changed(console: Console, from_file: PipelineBase, resumed: PipelineBase, path: Path) -> None:
    a, b = dump_pipeline(from_file), dump_pipeline(resumed)
    changed = sorted(_diff(a, b))
    changed = [c for c in changed if not c.startswith("train.")]
    if changed:
        console.print(f"[yellow]note: {path} differs from the checkpoint in {', '.join(changed)}; "
                      "the checkpoint's pipeline is used (change train.* settings with --set)[/]")


def _diff(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            out |= _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
