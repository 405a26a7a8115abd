"""Progress of a training: a rich bar on a terminal, one line per logged row elsewhere (CI logs, files)."""
from __future__ import annotations

from rich.console import Console


class Progress:
    """A rich progress bar on a terminal, one line per log row elsewhere (CI logs, files)."""

    def __init__(self, console: Console, total: int, start: int, enabled: bool) -> None:
        self.console, self.total, self.enabled = console, total, enabled
        self.live = enabled and console.is_terminal
        self.progress = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.progress = RichProgress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                         TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                                         console=console, transient=False)
            self.task_id = self.progress.add_task("train", total=total, completed=start, rate="", losses="")

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        terms = {k: v for k, v in row.items() if k not in ("step", "epoch", "seconds_per_step", "images_per_s",
                                                             "skipped_steps") and not k.startswith(("lr", "health"))
                 and isinstance(v, (int, float))}
        text = " ".join(f"{k} {v:.3f}" for k, v in terms.items())
        lr = row.get("lr")
        lr_text = f" lr {lr:.2e}" if isinstance(lr, (int, float)) else ""
        rate = f"{1.0 / max(row['seconds_per_step'], 1e-9):.2f} it/s"
        if self.progress is not None:
            self.progress.update(self.task_id, rate=rate, losses=text)
        else:
            self.console.print(f"step {row['step']}/{self.total} epoch {row['epoch']} {rate}{lr_text} {text}",
                               highlight=False)

    def note(self, row: dict) -> None:
        if self.enabled:
            text = " ".join(f"{k} {v:.4f}" for k, v in row.items()
                            if k.startswith("val_") and isinstance(v, (int, float)))
            self.console.print(f"step {row['step']} validation: {text}", highlight=False)
