"""The run folder a training writes and everything else reads, and its ``metrics.jsonl``.

``metrics.jsonl`` holds one strict JSON object per line: a non-finite value (a loss that became NaN
under ``train.on_nan: skip``) is written as ``null``, so any JSON reader takes every line.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from img2img import atomic
from img2img.errors import Img2ImgError

METRICS_FILE = "metrics.jsonl"


@dataclass
class RunFolder:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    def is_run(self) -> bool:
        return (self.root / "pipeline.yaml").exists() or self.checkpoints.exists()


def prepare_run_folder(out: Path, *, resume: bool, overwrite: bool) -> RunFolder:
    """The folder for a new run: refuses to mix runs, replaces one only with `overwrite`."""
    run = RunFolder(Path(out))
    if resume:
        return run
    if run.root.exists() and any(run.root.iterdir()):
        if not run.is_run():
            raise Img2ImgError(f"{run.root} exists and is not an img2img run folder; choose another --out")
        if not overwrite:
            if run.last.is_file():
                how = f"continue it with --resume {run.root}, start over with --overwrite"
            else:  # stopped before its first checkpoint: there is nothing to resume
                how = "it stopped before its first checkpoint, so start it over with --overwrite"
            raise Img2ImgError(f"{run.root} already holds a run; {how}, or choose another --out")
        shutil.rmtree(run.root)
    run.root.mkdir(parents=True, exist_ok=True)
    return run


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


def jsonable(value: Any) -> Any:
    """Non-finite floats become None (JSON has no NaN or infinity); containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row; a crash can cut only this line, which readers skip."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(jsonable(row), allow_nan=False) + "\n")
        fh.flush()


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of ``metrics.jsonl`` (objects with a numeric ``step``) and how many lines were unreadable
    (a crash can cut the last one)."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return rows, 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, (int, float)) and not isinstance(step, bool):
            rows.append(row)
        else:
            skipped += 1
    return rows, skipped


def truncate_metrics(path: Path, step: int, *, drop_loss_row: bool = False) -> None:
    """On resume, drop rows logged after `step` (the checkpoint) so every step is logged once.

    `drop_loss_row` also drops the training row of `step` itself (a row logged early, at the end of a
    run that stopped between log steps; the resumed run logs its steps again in the next row).
    """
    if not Path(path).exists():
        return
    rows, _ = read_metrics(path)
    kept = [row for row in rows if row["step"] < step or row["step"] == step
            and not (drop_loss_row and "seconds_per_step" in row)]
    atomic.write_text(path, "".join(json.dumps(jsonable(row), allow_nan=False) + "\n" for row in kept))
