"""The training health of a run, read from its folder: signals from ``metrics.jsonl``, warnings from
``health.jsonl``. Used by ``img2img health RUN`` and by the health panel of ``img2img report``.

Works on a finished, crashed or still running run (a partial last line is skipped).
"""
from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from img2img.config.health import HealthThresholds
from img2img.engine.diagnosis import PREFIX, RECORD_FILE, TITLES
from img2img.errors import Img2ImgError

KINDS = ("diversity", "d_separation", "d_gap", "grad", "trend", "swing")
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
@dataclass
class Signal:
    """One ``health/*`` series: where it stands and its range."""

    name: str
    meaning: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    threshold: float | None = None

    @property
    def kind(self) -> str:
        return signal_kind(self.name)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "meaning": self.meaning, "last_step": self.steps[-1], "last": self.values[-1],
                "min": min(self.values), "max": max(self.values), "count": len(self.values),
                "threshold": self.threshold}


@dataclass
class RunHealth:
    run: Path
    mode: str | None  # train.health of the run (None: the run predates it)
    thresholds: HealthThresholds
    last_step: int
    signals: list[Signal]
    events: list[dict[str, Any]]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        """Each warning, with ``cleared_at`` set where a later event says it ended."""
        out = []
        for i, event in enumerate(self.events):
            if event.get("kind") != "warning":
                continue
            same = (event.get("finding"), event.get("direction"))
            cleared = next((e for e in self.events[i + 1:]
                            if e.get("kind") == "cleared" and (e.get("finding"), e.get("direction")) == same), None)
            out.append({**event, "cleared_at": cleared["step"] if cleared else None})
        return out

    @property
    def status(self) -> str:
        """``off``, ``no signals``, ``not judged`` (still in the warm-up, nothing is judged before its end),
        ``healthy``, ``recovered`` (every warning cleared) or ``unhealthy``."""
        if self.mode == "off":
            return "off"
        if not self.signals:
            return "no signals"
        warnings = self.warnings
        if not warnings:
            return "not judged" if self.last_step <= self.thresholds.warmup else "healthy"
        return "recovered" if all(w["cleared_at"] is not None for w in warnings) else "unhealthy"

    def to_dict(self) -> dict[str, Any]:
        return {"run": str(self.run), "health": self.mode, "status": self.status, "last_step": self.last_step,
                "judged_from_step": self.thresholds.warmup + 1,
                "thresholds": self.thresholds.model_dump(), "signals": [s.summary() for s in self.signals],
                "warnings": self.warnings, "events": self.events}


def signal_kind(name: str) -> str:
    bare = name.removeprefix(PREFIX)
    return next((k for k in KINDS if bare.startswith(k + "_")), bare)


def describe(name: str, t: HealthThresholds) -> tuple[str, float | None]:
    """What a signal measures, and the threshold it is judged against (if any)."""
    kind = signal_kind(name)
    rest = name.removeprefix(PREFIX).removeprefix(kind + "_")
    return {
        "diversity": (f"{rest}: output diversity over input diversity (below {t.collapse_diversity:g}: mode collapse)",
                      t.collapse_diversity),
        "d_separation": (f"{rest}: share of real/translated patch pairs the discriminator ranks right "
                         f"(above {t.d_separation:g}: it wins)", t.d_separation),
        "d_gap": (f"{rest}: discriminator's mean logit on real minus on translated images", None),
        "grad": (f"{rest}: gradient norm at the translator's first layer", None),
        "trend": (f"{rest}: change over the last {t.trend_window} steps, relative to the loss's level", None),
        "swing": (f"{rest}: how far the loss went up and down, twice, in that window, relative (a "
                  f"discriminator's above {t.swing:g}: unstable)", t.swing),
    }.get(kind, ("a signal added by the task", None))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The readable object lines of a JSON-lines file (a crash can cut the last one)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def run_health(run_dir: Path, rows: list[dict[str, Any]] | None = None) -> RunHealth:
    """Read a run folder (or a checkpoint inside one); `rows` saves reading metrics.jsonl again."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.parent.name == "checkpoints":
        run_dir = run_dir.parent.parent
    if not run_dir.is_dir():
        raise Img2ImgError(f"run folder {run_dir} does not exist; pass the folder a training wrote (--out of train)")
    metrics = run_dir / "metrics.jsonl"
    if rows is None:
        if not metrics.is_file():
            raise Img2ImgError(f"{metrics} is missing: {run_dir} is not a run folder, or its training has not "
                               "logged a step yet")
        rows = read_jsonl(metrics)
    mode, thresholds = _settings(run_dir / "pipeline.yaml")
    by_name: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(PREFIX) and isinstance(value, (int, float)) and math.isfinite(value):
                by_name.setdefault(key, {})[int(row["step"])] = float(value)  # a resumed step keeps its last value
    order = {k: i for i, k in enumerate(KINDS)}
    signals = []
    for name in sorted(by_name, key=lambda n: (order.get(signal_kind(n), len(KINDS)), n)):
        meaning, threshold = describe(name, thresholds)
        points = sorted(by_name[name].items())
        signals.append(Signal(name, meaning, [s for s, _ in points], [v for _, v in points], threshold))
    last_step = max((int(r["step"]) for r in rows), default=0)
    return RunHealth(run_dir, mode, thresholds, last_step, signals, read_jsonl(run_dir / RECORD_FILE))


def _settings(path: Path) -> tuple[str | None, HealthThresholds]:
    try:
        train = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("train") or {}
        return train.get("health"), HealthThresholds(**(train.get("health_thresholds") or {}))
    except (OSError, yaml.YAMLError, TypeError, ValueError, AttributeError):
        return None, HealthThresholds()


# ---------------------------------------------------------------------------------------------
# curves (matplotlib is imported only here)


def plot(health: RunHealth, out: Path | None = None, *, fmt: str | None = None) -> str | None:
    """One panel per kind of signal, thresholds dashed, warnings as red lines (cleared: green).

    Writes `out` (PNG, SVG or PDF by its suffix) or, without it, returns SVG text.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = [k for k in KINDS if any(s.kind == k for s in health.signals)]
    if not kinds:
        return None
    cols = min(3, len(kinds))
    rows = math.ceil(len(kinds) / cols)
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 8}):
        fig = Figure(figsize=(4.2 * cols, 2.6 * rows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes[len(kinds):]:
            ax.set_visible(False)
        status = {"healthy": "no warning", "recovered": "every warning cleared",
                  "not judged": f"not judged yet (warm-up until step {health.thresholds.warmup})"}.get(health.status, "")
        fired = ", ".join(f"{TITLES.get(w['finding'], w['finding'])} ({w['direction']}) at step {w['step']}"
                          for w in health.warnings)
        fig.suptitle(f"{health.run.name}: {fired or status or health.status}", fontsize=9, x=0.01, ha="left")
        for ax, kind in zip(axes, kinds):
            series = [s for s in health.signals if s.kind == kind]
            for i, s in enumerate(series):
                ax.plot(s.steps, s.values, color=COLOURS[i % len(COLOURS)], linewidth=1.3,
                        label=s.name.removeprefix(PREFIX).removeprefix(kind + "_"))
            threshold = series[0].threshold
            if threshold is not None:
                ax.axhline(threshold, color="#555555", linestyle="--", linewidth=0.9)
            if kind == "grad":
                ax.set_yscale("log")
            for w in health.warnings:
                if _concerns(w, kind):
                    ax.axvline(w["step"], color="#d62728", linewidth=1.1)
                    ax.axvspan(w["since"], w["step"], color="#d62728", alpha=0.08)
                    if w["cleared_at"] is not None:
                        ax.axvline(w["cleared_at"], color="#2ca02c", linewidth=1.1)
            ax.set_title(kind.replace("_", " "), loc="left", fontsize=9, fontweight="bold")
            ax.set_xlabel("step", fontsize=8)
            ax.grid(True, color="#e6e6e6", linewidth=0.6)
            ax.legend(fontsize=7, frameon=False)
        if out is not None:
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, format=fmt, dpi=110)
            return None
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)


def _concerns(warning: dict[str, Any], kind: str) -> bool:
    return {"mode_collapse": ("diversity",), "vanishing_gradients": ("d_separation", "d_gap", "grad"),
            "unstable": ("trend", "swing")}.get(warning.get("finding"), ()).__contains__(kind)


# ---------------------------------------------------------------------------------------------
# the report's panel

PANEL_TEMPLATE = """\
<section class="health">
<h2>Training health</h2>
{% if h.status == "off" %}<p class="sub">train.health was off: no signals were measured.</p>
{% elif h.status == "no signals" %}<p class="sub">No training-health signals logged (the run predates them, or has
not logged a step yet).</p>
{% else %}
<p class="sub">{% if h.status == "healthy" %}No warning up to step {{ h.last_step }}.{% elif h.status == "not judged" %}
Not judged yet: nothing is judged during the warm-up, until step {{ h.thresholds.warmup }}.{% else %}
{{ h.warnings|length }} warning(s){% if h.status == "recovered" %}, all cleared{% endif %}; red lines mark where each
fired (shaded from the step its condition began), green where it cleared. See `img2img docs health`.{% endif %}</p>
{% if h.warnings %}<table>
<tr><th>step</th><th>since</th><th>finding</th><th>cleared</th><th>what was seen, what to try</th></tr>
{% for w in h.warnings %}<tr><td>{{ w.step }}</td><td>{{ w.since }}</td>
<td>{{ titles.get(w.finding, w.finding) }} ({{ w.direction }})</td>
<td>{{ w.cleared_at if w.cleared_at is not none else "no" }}</td><td>{{ w.message }}</td></tr>
{% endfor %}</table>{% endif %}
{% if svg %}<figure>{{ svg }}</figure>{% endif %}
<table><tr><th>signal</th><th>last</th><th>min</th><th>max</th><th>meaning</th></tr>
{% for s in signals %}<tr><td><code>{{ s.name }}</code></td>
<td>{{ "%.4g"|format(s.last) }} (step {{ s.last_step }})</td>
<td>{{ "%.4g"|format(s.min) }}</td><td>{{ "%.4g"|format(s.max) }}</td><td>{{ s.meaning }}</td></tr>
{% endfor %}</table>
{% endif %}
</section>
"""


def health_panel(run_dir: Path, rows: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], str]:
    """The report's health panel: its data (as ``img2img health --json`` prints it) and its HTML."""
    from jinja2 import Environment
    from markupsafe import Markup

    health = run_health(run_dir, rows)
    data = health.to_dict()
    svg = plot(health) if health.signals else None
    env = Environment(autoescape=True)
    html = env.from_string(PANEL_TEMPLATE).render(h=health, titles=TITLES, signals=data["signals"],
                                                  svg=Markup(svg) if svg else None)  # our own matplotlib SVG
    return data, html

