"""One self-contained HTML page describing a training run: curves, throughput, samples, checkpoints.

Everything is inlined (SVG plots, base64 PNG samples, CSS, a few lines of JS), so the file can be mailed,
archived or opened offline. Reads the run folder the trainer writes and tolerates a run that is still
going or crashed mid-write (a partial last line of ``metrics.jsonl``).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from img2img._version import __version__
from img2img.errors import Img2ImgError
from img2img.evaluation.health import PREFIX as HEALTH_PREFIX
from img2img.evaluation.health import health_panel

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
MAX_SAMPLES = 48  # more would make the page heavy; evenly spaced ones are kept, first and last included

_NOT_PLOTTED = {"step", "epoch"}
_COUNTERS = {"skipped_steps"}  # running totals the trainer logs; shown as numbers, not as loss curves
_STEP_FILE = re.compile(r"^step-(\d+)\.(png|pt)$")


def write_report(run_dir: Path, out: Path) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` and return ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise Img2ImgError(f"run folder {run_dir} does not exist; pass the folder a training wrote (--out of train)")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise Img2ImgError(
            f"{metrics_path} is missing: {run_dir} is not a run folder, or its training has not logged a step yet"
        )
    run = load_run(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(run), encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------
# reading the run folder


@dataclass
class Series:
    """One logged quantity against the step; non-finite values are counted, not plotted."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    hidden: int = 0


@dataclass
class Run:
    path: Path
    pipeline: dict[str, Any]
    pipeline_text: str
    pipeline_problem: str | None
    rows: list[dict[str, Any]]
    skipped_lines: int
    losses: dict[str, Series]
    lrs: dict[str, Series]
    vals: dict[str, Series]
    seconds: Series
    throughput: Series
    counters: dict[str, Series]
    samples: list[tuple[int, Path]]
    checkpoints: list[Path]

    @property
    def name(self) -> str:
        return str(self.pipeline.get("name") or self.path.name)


def load_run(run_dir: Path) -> Run:
    pipeline, text, problem = _read_pipeline(run_dir / "pipeline.yaml")
    rows, skipped = read_metrics(run_dir / "metrics.jsonl")
    groups = split_series(rows)
    return Run(
        path=run_dir,
        pipeline=pipeline,
        pipeline_text=text,
        pipeline_problem=problem,
        rows=rows,
        skipped_lines=skipped,
        losses=groups["loss"],
        lrs=groups["lr"],
        vals=groups["val"],
        seconds=groups["time"].get("seconds_per_step", Series()),
        throughput=groups["time"].get("images_per_s", Series()),
        counters=groups["counter"],
        samples=_step_files(run_dir / "samples", ".png"),
        checkpoints=_checkpoints(run_dir / "checkpoints"),
    )


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of ``metrics.jsonl`` and how many lines were unreadable (a crash can cut the last one)."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(row, dict) or not _is_number(row.get("step")):
            skipped += 1
            continue
        rows.append(row)
    return rows, skipped


def split_series(rows: list[dict[str, Any]]) -> dict[str, dict[str, Series]]:
    """Group the numeric keys into losses, learning rates, validation metrics, timing and counters.

    A step logged twice (a resumed run repeats the steps after its last checkpoint) keeps its last value.
    """
    by_key: dict[str, dict[int, float]] = {}
    for row in rows:
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and _is_number(value):
                by_key.setdefault(key, {})[step] = float(value)
    groups: dict[str, dict[str, Series]] = {"loss": {}, "lr": {}, "val": {}, "time": {}, "counter": {}}
    for key in by_key:
        if key in _NOT_PLOTTED or key.startswith(HEALTH_PREFIX):  # training health has its own panel
            continue
        if key.endswith(("_per_step", "_per_s")):
            group = "time"
        elif key == "lr" or key.startswith("lr_"):
            group = "lr"
        elif key.startswith("val_"):
            group = "val"
        elif key in _COUNTERS:
            group = "counter"
        else:
            group = "loss"
        series = Series()
        for step in sorted(by_key[key]):
            value = by_key[key][step]
            if math.isfinite(value):
                series.steps.append(step)
                series.values.append(value)
            else:
                series.hidden += 1
        groups[group][key] = series
    return groups


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_pipeline(path: Path) -> tuple[dict[str, Any], str, str | None]:
    if not path.is_file():
        return {}, "", f"{path.name} is missing"
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return {}, text, f"{path.name} is not valid YAML: {err}"
    if not isinstance(data, dict):
        return {}, text, f"{path.name} does not hold a mapping"
    return data, text, None


def _step_files(folder: Path, suffix: str) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_FILE.match(path.name)
        if match and path.suffix == suffix and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _checkpoints(folder: Path) -> list[Path]:
    """``step-N.pt`` in step order, then the named ones (``best.pt``, ``last.pt``)."""
    if not folder.is_dir():
        return []
    numbered = [path for _, path in _step_files(folder, ".pt")]
    named = sorted(p for p in folder.glob("*.pt") if p.is_file() and p not in numbered)
    return numbered + named


# --------------------------------------------------------------------------------------------
# numbers


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased at the start (TensorBoard's smoothing)."""
    out, last = [], 0.0
    for i, value in enumerate(values, start=1):
        last = weight * last + (1 - weight) * value
        out.append(last / (1 - weight**i) if weight > 0 else value)
    return out


def smoothing_weight(n: int) -> float:
    """Heavier smoothing for longer curves: about the last 10 points carry the average."""
    return 0.0 if n < 5 else min(0.97, max(0.6, 1 - 10 / n))


def timing_summary(run: Run) -> dict[str, Any]:
    steps = [int(row["step"]) for row in run.rows]
    out: dict[str, Any] = {"total steps": max(steps) if steps else 0}
    epochs = [row["epoch"] for row in run.rows if _is_number(row.get("epoch"))]
    if epochs:
        out["epoch"] = int(max(epochs)) if float(max(epochs)).is_integer() else round(max(epochs), 3)
    secs = run.seconds
    if secs.values:
        median = statistics.median(secs.values)
        out["median s/step"] = median
        batch = _dig(run.pipeline, "train", "batch_size")
        if run.throughput.values:  # logged by the trainer, which knows the number of processes
            out["images/s"] = statistics.median(run.throughput.values)
        elif _is_number(batch) and median > 0:
            out["images/s"] = batch / median
        # each logged value stands for the steps since the previous log
        total, previous = 0.0, 0
        for step, value in zip(secs.steps, secs.values):
            total += max(step - previous, 0) * value
            previous = step
        out["estimated training time"] = _duration(total)
    for key, series in run.counters.items():
        if series.values:
            out[key.replace("_", " ")] = int(series.values[-1]) if series.values[-1].is_integer() else series.values[-1]
    return out


def _dig(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


# --------------------------------------------------------------------------------------------
# plots (matplotlib is imported here only: the CLI starts without it)


def _figure(n_panels: int, width: float = 4.2, height: float = 2.7, max_cols: int = 3):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max(1, min(max_cols, n_panels))
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _style(ax, title: str) -> None:
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e6e6e6", linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def _rc():
    import matplotlib

    return matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "axes.titleweight": "bold"})


def smoothed_curves_svg(curves: dict[str, Series]) -> str:
    """Small multiples, one per curve: the raw values faint, the EMA on top."""
    with _rc():
        fig, axes = _figure(len(curves))
        for i, (ax, (key, series)) in enumerate(zip(axes, curves.items())):
            color = PALETTE[i % len(PALETTE)]
            weight = smoothing_weight(len(series.values))
            ax.plot(series.steps, series.values, color=color, alpha=0.25, linewidth=0.9)
            ax.plot(series.steps, ema(series.values, weight), color=color, linewidth=2.0)
            note = f"  ({series.hidden} non-finite hidden)" if series.hidden else ""
            _style(ax, f"{key}{note}")
            if series.values:
                ax.annotate(
                    f"last {_fmt(series.values[-1])}", xy=(1, 1), xycoords="axes fraction",
                    ha="right", va="bottom", fontsize=8, color="#555555",
                )
        return _svg(fig)


def lines_svg(curves: dict[str, Series], title: str, markers: bool = False, panels: bool = False) -> str:
    """Plain lines: all curves in one axes, or one axes each (``panels``)."""
    with _rc():
        fig, axes = _figure(len(curves) if panels else 1, width=4.2 if panels else 8.0)
        for i, (key, series) in enumerate(curves.items()):
            ax = axes[i] if panels else axes[0]
            color = PALETTE[i % len(PALETTE)]
            dash = "-" if panels else ("-", "--", ":", "-.")[i % 4]  # equal curves (lr, lr_d) stay visible
            ax.plot(series.steps, series.values, color=color, linewidth=1.8, label=key, linestyle=dash,
                    marker="o" if markers else None, markersize=3.5)
            note = f"  ({series.hidden} non-finite hidden)" if series.hidden else ""
            if panels:
                _style(ax, f"{key}{note}")
        if not panels:
            _style(axes[0], title)
            if len(curves) > 1:
                axes[0].legend(fontsize=8, frameon=False)
        return _svg(fig)


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
main{max-width:1240px;margin:0 auto;padding:18px 22px 60px}
h1{font-size:1.6em;margin:0.2em 0}
h2{font-size:1.15em;margin:1.6em 0 0.5em;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:0.9em}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:1.25em}
.card span{color:#666;font-size:0.8em}
.note{background:#fff7e0;border:1px solid #f0d890;border-radius:4px;padding:6px 10px;font-size:0.9em}
svg{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;font-size:0.9em;background:#fff}
td,th{border:1px solid #e2e2e2;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#fff;border:1px solid #e2e2e2;padding:10px;overflow:auto;font-size:0.85em}
.viewer img.large{max-width:100%;image-rendering:pixelated;border:1px solid #ddd;background:#fff}
.controls{display:flex;align-items:center;gap:12px;margin:8px 0}
.controls input{flex:1;max-width:720px}
.strip{display:flex;gap:6px;overflow-x:auto;padding:6px 0}
.strip figure{margin:0;text-align:center;font-size:0.75em;color:#666;cursor:pointer}
.strip img{height:72px;image-rendering:pixelated;border:2px solid transparent}
.strip img.active{border-color:#1f77b4}
"""

_JS = """
(function(){
  var slider=document.getElementById('sample-slider');
  if(!slider) return;
  var thumbs=Array.prototype.slice.call(document.querySelectorAll('.strip img'));
  var view=document.getElementById('sample-view'), label=document.getElementById('sample-label');
  function show(i){
    view.src=thumbs[i].src; label.textContent='step '+thumbs[i].dataset.step;
    thumbs.forEach(function(t,j){t.classList.toggle('active',j===i);});
  }
  slider.addEventListener('input',function(){show(+slider.value);});
  thumbs.forEach(function(t,i){t.addEventListener('click',function(){slider.value=i;show(i);});});
  show(+slider.value);
})();
"""


def render_html(run: Run) -> str:
    e = html.escape
    task = run.pipeline.get("task", "unknown")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(run.name)} · img2img run report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{e(run.name)}</h1>",
        f'<div class="sub">task <b>{e(str(task))}</b> · run folder <code>{e(str(run.path))}</code> · '
        f"report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by img2img {e(__version__)}</div>",
        _headline(run),
        _cards(run),
        _notes(run),
        _section_losses(run),
        _section_lr(run),
        _section_val(run),
        health_panel(run.path, run.rows)[1],
        _section_timing(run),
        _section_samples(run),
        _section_checkpoints(run),
        _section_pipeline(run),
        f"<script>{_JS}</script>",
        "</main></body></html>",
    ]
    return "\n".join(part for part in parts if part)


def _cards(run: Run) -> str:
    items = []
    for key, value in timing_summary(run).items():
        if key in ("total steps", "epoch", "images/s", "median s/step"):
            items.append(f'<div class="card"><b>{html.escape(_fmt(value))}</b><span>{html.escape(key)}</span></div>')
    for key, series in list(run.vals.items())[:4]:
        if series.values:
            items.append(
                f'<div class="card"><b>{html.escape(_fmt(series.values[-1]))}</b>'
                f"<span>{html.escape(key)} (last)</span></div>"
            )
    return f'<div class="cards">{"".join(items)}</div>' if items else ""


def _headline(run: Run) -> str:
    """The pipeline in one line: networks, losses, batch and learning rate."""
    p = run.pipeline
    bits = []
    for key in ("generator", "discriminator"):
        value = _dig(p, "model", key)
        if value is not None:
            bits.append(f"{key} <b>{html.escape(_inline(value))}</b>")
    losses = p.get("losses")
    if isinstance(losses, dict) and losses:
        bits.append("losses " + html.escape(", ".join(f"{k}: {_inline(v)}" for k, v in losses.items())))
    for key, label in (("batch_size", "batch"), ("lr", "lr")):
        value = _dig(p, "train", key)
        if value is not None:
            bits.append(f"{label} {html.escape(str(value))}")
    return f'<div class="sub">{" · ".join(bits)}</div>' if bits else ""


def _notes(run: Run) -> str:
    notes = []
    if run.skipped_lines:
        notes.append(
            f"{run.skipped_lines} unreadable line(s) in metrics.jsonl were skipped "
            "(a training that was stopped mid-write leaves a partial last line)."
        )
    if run.pipeline_problem:
        notes.append(f"{run.pipeline_problem}; the pipeline summary is not available.")
    if not run.rows:
        notes.append("metrics.jsonl holds no logged step yet.")
    return "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)


def _section_losses(run: Run) -> str:
    if not run.losses:
        return '<h2>Losses</h2><p class="sub">No loss values logged.</p>'
    weights = sorted({smoothing_weight(len(s.values)) for s in run.losses.values()})
    caption = f"Faint: raw values. Solid: exponential moving average (weight {', '.join(f'{w:.2f}' for w in weights)})."
    return f'<h2>Losses</h2><p class="sub">{caption}</p>{smoothed_curves_svg(run.losses)}'


def _section_lr(run: Run) -> str:
    if not run.lrs:
        return ""
    return f"<h2>Learning rate</h2>{lines_svg(run.lrs, 'learning rate')}"


def _section_val(run: Run) -> str:
    if not run.vals:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td class=num>{_fmt(s.values[-1]) if s.values else '-'}</td>"
        f"<td class=num>{_fmt(min(s.values)) if s.values else '-'}</td>"
        f"<td class=num>{_fmt(max(s.values)) if s.values else '-'}</td></tr>"
        for key, s in run.vals.items()
    )
    table = f"<table><tr><th>metric</th><th>last</th><th>min</th><th>max</th></tr>{rows}</table>"
    return f"<h2>Validation</h2>{lines_svg(run.vals, 'validation', markers=True, panels=True)}{table}"


def _section_timing(run: Run) -> str:
    summary = timing_summary(run)
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td class=num>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items()
    )
    curves = {key: series for key, series in (("seconds_per_step", run.seconds), ("images_per_s", run.throughput))
              if series.values}
    plot = smoothed_curves_svg(curves) if curves else ""
    return f"<h2>Timing and throughput</h2><table>{rows}</table>{plot}"


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


def _section_samples(run: Run) -> str:
    samples = run.samples
    if not samples:
        return '<h2>Samples</h2><p class="sub">No samples written yet (samples/step-N.png).</p>'
    shown = samples
    if len(samples) > MAX_SAMPLES:
        picks = sorted({round(i * (len(samples) - 1) / (MAX_SAMPLES - 1)) for i in range(MAX_SAMPLES)})
        shown = [samples[i] for i in picks]
    uris = [_data_uri(path) for _, path in shown]
    last_step = shown[-1][0]
    width = _display_width(shown[-1][1])
    note = f" Showing {len(shown)} of {len(samples)}, evenly spaced." if len(shown) < len(samples) else ""
    thumbs = "".join(
        f'<figure><img src="{uri}" data-step="{step}" alt="samples at step {step}">'
        f"<figcaption>{step}</figcaption></figure>"
        for (step, _), uri in zip(shown, uris)
    )
    return (
        f"<h2>Latest samples · step {last_step}</h2>"
        f'<div class="viewer"><img class="large" style="width:{width}px" src="{uris[-1]}" alt="latest samples"></div>'
        f'<h2>Samples over time</h2><p class="sub">Drag the slider or click a thumbnail.{note}</p>'
        '<div class="viewer"><div class="controls">'
        f'<input type="range" id="sample-slider" min="0" max="{len(shown) - 1}" value="{len(shown) - 1}" step="1">'
        f'<span id="sample-label">step {last_step}</span></div>'
        f'<div class="strip">{thumbs}</div>'
        f'<img class="large" id="sample-view" style="width:{width}px" src="{uris[-1]}" '
        'alt="samples at the selected step"></div>'
    )


def _section_checkpoints(run: Run) -> str:
    if not run.checkpoints:
        return '<h2>Checkpoints</h2><p class="sub">No checkpoints written yet.</p>'
    rows = []
    for path in run.checkpoints:
        stat = path.stat()
        when = datetime.fromtimestamp(stat.st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            f"<tr><td><code>checkpoints/{html.escape(path.name)}</code></td>"
            f"<td class=num>{_size(stat.st_size)}</td><td>{when} UTC</td></tr>"
        )
    return f"<h2>Checkpoints</h2><table><tr><th>file</th><th>size</th><th>written</th></tr>{''.join(rows)}</table>"


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} GiB"


def _inline(value: Any) -> str:
    """``{name: resnet_9blocks, ngf: 64}`` as ``resnet_9blocks (ngf=64)``."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(next(iter(value.values())), dict):  # an albumentations stage
            stage, params = next(iter(value.items()))
            return f"{stage}({_inline(params)})"
        params = ", ".join(f"{k}={_inline(v)}" for k, v in value.items() if k != "name")
        if "name" in value:
            return f"{value['name']} ({params})" if params else str(value["name"])
        return params
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return str(value)


def _section_pipeline(run: Run) -> str:
    p = run.pipeline
    rows: list[tuple[str, str]] = []
    for key in ("task", "name", "seed"):
        if key in p:
            rows.append((key, str(p[key])))
    for section in ("data", "model", "losses", "train"):
        value = p.get(section)
        if isinstance(value, dict):
            for key, sub in value.items():
                if section == "data" and key.endswith("transforms") and isinstance(sub, list):
                    sub = " → ".join(_inline(t) for t in sub) or "none"
                rows.append((f"{section}.{key}", _inline(sub)))
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    body = f"<table>{table}</table>" if rows else ""
    if run.pipeline_text:
        body += f"<details><summary>pipeline.yaml</summary><pre>{html.escape(run.pipeline_text)}</pre></details>"
    return f"<h2>Pipeline</h2>{body or '<p class=sub>No pipeline.yaml in the run folder.</p>'}"
