"""The report's plots as inline SVG (matplotlib, imported inside the functions: the CLI starts without it)."""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
BEST_COLOUR = "#555555"


@dataclass
class Series:
    """One logged quantity against the step; non-finite values are counted, not plotted."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    hidden: int = 0

    def at(self, step: int) -> float | None:
        return self.values[self.steps.index(step)] if step in self.steps else None


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


def fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


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


def _note(series: Series) -> str:
    return f"  ({series.hidden} non-finite hidden)" if series.hidden else ""


def smoothed_curves_svg(curves: dict[str, Series]) -> str:
    """Small multiples, one per curve: the raw values faint, the EMA on top."""
    with _rc():
        fig, axes = _figure(len(curves))
        for i, (ax, (key, series)) in enumerate(zip(axes, curves.items())):
            color = PALETTE[i % len(PALETTE)]
            weight = smoothing_weight(len(series.values))
            ax.plot(series.steps, series.values, color=color, alpha=0.25, linewidth=0.9)
            ax.plot(series.steps, ema(series.values, weight), color=color, linewidth=2.0)
            _style(ax, f"{key}{_note(series)}")
            if series.values:
                ax.annotate(f"last {fmt(series.values[-1])}", xy=(1, 1), xycoords="axes fraction",
                            ha="right", va="bottom", fontsize=8, color="#555555")
        return _svg(fig)


def lines_svg(curves: dict[str, Series], title: str) -> str:
    """Plain lines in one axes (learning rates): dashes keep equal curves visible."""
    with _rc():
        fig, axes = _figure(1, width=8.0)
        for i, (key, series) in enumerate(curves.items()):
            axes[0].plot(series.steps, series.values, color=PALETTE[i % len(PALETTE)], linewidth=1.8, label=key,
                         linestyle=("-", "--", ":", "-.")[i % 4])
        _style(axes[0], title)
        if len(curves) > 1:
            axes[0].legend(fontsize=8, frameon=False)
        return _svg(fig)


def validation_svg(curves: dict[str, Series], spreads: dict[str, Series], best_step: int | None,
                   best_key: str | None) -> str:
    """One panel per validation metric: markers, a band of +-1 std where logged (val_kid_std), and
    the step best.pt holds as a dashed line, starred on the metric that chose it."""
    with _rc():
        fig, axes = _figure(len(curves))
        for i, (ax, (key, series)) in enumerate(zip(axes, curves.items())):
            color = PALETTE[i % len(PALETTE)]
            ax.plot(series.steps, series.values, color=color, linewidth=1.8, marker="o", markersize=3.5)
            spread = spreads.get(key)
            if spread is not None and spread.steps:
                pairs = [(s, v, spread.at(s)) for s, v in zip(series.steps, series.values) if spread.at(s) is not None]
                if pairs:
                    steps, values, stds = zip(*pairs)
                    ax.fill_between(steps, [v - d for v, d in zip(values, stds)],
                                    [v + d for v, d in zip(values, stds)], color=color, alpha=0.15, linewidth=0)
            title = f"{key}{_note(series)}"
            if best_step is not None:
                ax.axvline(best_step, color=BEST_COLOUR, linestyle="--", linewidth=1.0)
                if key == best_key and series.at(best_step) is not None:
                    ax.plot([best_step], [series.at(best_step)], marker="*", markersize=13, color=BEST_COLOUR,
                            zorder=5)
                    title += "  ★ best.pt"
            _style(ax, title)
        return _svg(fig)
