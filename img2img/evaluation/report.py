"""One self-contained HTML page describing a training run: curves, validation, samples, checkpoints.

Everything is inlined (SVG plots, base64 PNG samples, CSS, a few lines of JS), so the file can be mailed,
archived or opened offline. Reads the run folder the trainer writes and tolerates a run that is still
going or crashed mid-write (a partial last line of ``metrics.jsonl``). The page is the Jinja2 template
``templates/report.html.j2`` (autoescaped); this module only gathers the data. Each part of the page
is a `Section` made by one function in `SECTIONS`: a new panel is one more function and template.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from img2img import atomic
from img2img._version import __version__
from img2img.errors import Img2ImgError
from img2img.evaluation.plots import PALETTE, Series, ema, fmt, smoothing_weight
from img2img.evaluation.run_data import (
    Run,
    dig,
    inline,
    load_run,
    read_metrics,
    size_text,
    split_series,
    timing_summary,
)

__all__ = ["PALETTE", "MAX_SAMPLES", "SECTIONS", "Run", "Section", "Series", "ema", "load_run", "read_metrics",
           "render_html", "smoothing_weight", "split_series", "timing_summary", "write_report"]

MAX_SAMPLES = 48  # more would make the page heavy; evenly spaced ones are kept, first and last included
TEMPLATES = Path(__file__).with_name("templates")


def write_report(run_dir: Path, out: Path) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (complete or not at all) and return ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise Img2ImgError(f"run folder {run_dir} does not exist; pass the folder a training wrote (--out of train)")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise Img2ImgError(
            f"{metrics_path} is missing: {run_dir} is not a run folder, or its training has not logged a step yet"
        )
    page = render_html(load_run(run_dir))
    atomic.write_text(out, page)
    return out


# --------------------------------------------------------------------------------------------
# the page: sections of data, rendered by templates/


@dataclass
class Section:
    """One part of the page: ``templates/sections/<template>`` rendered with ``ctx`` = `context`."""

    id: str
    template: str
    context: dict[str, Any] = field(default_factory=dict)


def _svg(text: str):
    from markupsafe import Markup

    return Markup(text)  # matplotlib's own SVG output (it escapes the text it draws)


def losses_section(run: Run) -> Section:
    from img2img.evaluation.plots import smoothed_curves_svg

    weights = sorted({smoothing_weight(len(s.values)) for s in run.losses.values()})
    plot = _svg(smoothed_curves_svg(run.losses)) if run.losses else None
    return Section("losses", "losses.html.j2", {"plot": plot, "weights": ", ".join(f"{w:.2f}" for w in weights)})


def learning_rate_section(run: Run) -> Section | None:
    from img2img.evaluation.plots import lines_svg

    return Section("lr", "learning_rate.html.j2", {"plot": _svg(lines_svg(run.lrs, "learning rate"))}) \
        if run.lrs else None


def validation_section(run: Run) -> Section | None:
    from img2img.evaluation.plots import validation_svg

    if not run.vals:
        return None
    best = run.best
    def row(key: str, s: Series) -> dict[str, str]:
        at_best = s.at(best.step) if best else None
        if not s.values:
            return {"key": key, "last": "-", "min": "-", "max": "-", "best": "-"}
        return {"key": key, "last": fmt(s.values[-1]), "min": fmt(min(s.values)), "max": fmt(max(s.values)),
                "best": fmt(at_best) if at_best is not None else "-"}

    from img2img.evaluation.distribution import setup_text
    from img2img.evaluation.run_data import setup_warning

    rows = [row(key, s) for key, s in run.vals.items()]
    plot = validation_svg(run.vals, run.spreads, best.step if best else None, best.key if best else None)
    setups = [{"steps": f"{a}" if a == b else f"{a}-{b}", "text": setup_text(s)} for a, b, s in run.val_setups]
    return Section("validation", "validation.html.j2", {"plot": _svg(plot), "rows": rows, "best": best,
                                                       "best_value": fmt(best.value) if best and best.value is not None
                                                       else None, "spreads": sorted(run.spreads),
                                                       "setups": setups, "setup_warning": setup_warning(run.val_setups)})


def health_section(run: Run) -> Section:
    """Training health (img2img/evaluation/health.py): its signals and the steps where warnings fired."""
    from markupsafe import Markup

    from img2img.evaluation.health import health_panel

    _, html = health_panel(run.path, run.rows)
    return Section("health", "health.html.j2", {"panel": Markup(html)})  # rendered by its own autoescaped template


def timing_section(run: Run) -> Section:
    from img2img.evaluation.plots import smoothed_curves_svg

    curves = {key: series for key, series in (("seconds_per_step", run.seconds), ("images_per_s", run.throughput),
                                              ("val_seconds", run.val_seconds)) if series.values}
    return Section("timing", "timing.html.j2", {"rows": [(k, fmt(v)) for k, v in timing_summary(run).items()],
                                                "plot": _svg(smoothed_curves_svg(curves)) if curves else None})


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _display_width(path: Path) -> int:
    """Small grids are enlarged (pixelated) up to 4x, never beyond the page's 1024 px."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return min(1024, 4 * image.width)
    except OSError:
        return 1024


def samples_section(run: Run) -> Section:
    samples = run.samples
    shown = samples
    if len(samples) > MAX_SAMPLES:
        picks = sorted({round(i * (len(samples) - 1) / (MAX_SAMPLES - 1)) for i in range(MAX_SAMPLES)})
        shown = [samples[i] for i in picks]
    frames = [{"step": step, "uri": _data_uri(path)} for step, path in shown]
    return Section("samples", "samples.html.j2", {
        "frames": frames, "total": len(samples), "width": _display_width(shown[-1][1]) if shown else 0})


def checkpoints_section(run: Run) -> Section:
    rows = []
    for path in run.checkpoints:
        stat = path.stat()
        note = ""
        if path.name == "best.pt" and run.best is not None:
            value = f": {run.best.key} = {fmt(run.best.value)}" if run.best.key and run.best.value is not None else ""
            note = f"best validation, step {run.best.step}{value}"
        rows.append({"name": path.name, "size": size_text(stat.st_size), "note": note,
                     "when": datetime.fromtimestamp(stat.st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")})
    return Section("checkpoints", "checkpoints.html.j2", {"rows": rows})


def pipeline_section(run: Run) -> Section:
    p = run.pipeline
    rows: list[tuple[str, str]] = [(key, str(p[key])) for key in ("task", "name", "seed") if key in p]
    for part in ("data", "model", "losses", "train"):
        value = p.get(part)
        if isinstance(value, dict):
            for key, sub in value.items():
                if part == "data" and key.endswith("transforms") and isinstance(sub, list):
                    sub = " → ".join(inline(t) for t in sub) or "none"
                rows.append((f"{part}.{key}", inline(sub)))
    return Section("pipeline", "pipeline.html.j2", {"rows": rows, "text": run.pipeline_text})


SECTIONS: list[Callable[[Run], Section | None]] = [
    losses_section, learning_rate_section, validation_section, health_section,
    # Additional panels go here: a function of the Run returning a Section whose template lives in
    # templates/sections/. Return None to leave the panel out.
    timing_section, samples_section, checkpoints_section, pipeline_section,
]


def _headline(run: Run) -> list[tuple[str, str, bool]]:
    """The pipeline in one line: (label, value, bold) for networks, losses, batch and learning rate."""
    p = run.pipeline
    bits = [(key, inline(dig(p, "model", key)), True) for key in ("generator", "discriminator")
            if dig(p, "model", key) is not None]
    losses = p.get("losses")
    if isinstance(losses, dict) and losses:
        bits.append(("losses", ", ".join(f"{k}: {inline(v)}" for k, v in losses.items()), False))
    bits += [(label, str(dig(p, "train", key)), False) for key, label in (("batch_size", "batch"), ("lr", "lr"))
             if dig(p, "train", key) is not None]
    return bits


def _cards(run: Run) -> list[tuple[str, str]]:
    cards = [(fmt(v), k) for k, v in timing_summary(run).items()
             if k in ("total steps", "epoch", "images/s", "median s/step")]
    if run.best is not None:
        known = run.best.key and run.best.value is not None
        detail = f"{run.best.key} {fmt(run.best.value)}" if known else "validation"
        cards.append((f"step {run.best.step}", f"best.pt ({detail})"))
    cards += [(fmt(s.values[-1]), f"{key} (last)") for key, s in list(run.vals.items())[:4] if s.values]
    return cards


def _notes(run: Run) -> list[str]:
    notes = []
    if run.skipped_lines:
        notes.append(f"{run.skipped_lines} unreadable line(s) in metrics.jsonl were skipped "
                     "(a training that was stopped mid-write leaves a partial last line).")
    if run.pipeline_problem:
        notes.append(f"{run.pipeline_problem}; the pipeline summary is not available.")
    if not run.rows:
        notes.append("metrics.jsonl holds no logged step yet.")
    return notes


def render_html(run: Run) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True,
                      default_for_string=True), undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    sections = [s for s in (make(run) for make in SECTIONS) if s is not None]
    return env.get_template("report.html.j2").render(
        name=run.name, task=str(run.pipeline.get("task", "unknown")), path=str(run.path), version=__version__,
        written=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}", headline=_headline(run), cards=_cards(run),
        notes=_notes(run), sections=sections)
