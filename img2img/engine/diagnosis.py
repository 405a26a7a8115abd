"""From training-health signals to findings: a condition that lasts becomes one warning with a remedy.

Plain Python over log rows (no tensors), so its whole state goes into the checkpoint and a resumed
run diagnoses exactly as an uninterrupted one. Three findings, each per translation direction:

- ``mode_collapse``: ``health/diversity_<dir>`` below ``collapse_diversity``;
- ``vanishing_gradients``: ``health/d_separation_<dir>`` above ``d_separation``: the discriminator
  tells real from translated nearly always, so its verdict no longer guides the generator;
- ``unstable``: the discriminator's loss goes up and down, again and again, by more than ``swing``
  of its level within ``trend_window`` steps.

A condition is judged after ``warmup`` steps, reported once it held on every measurement for
``patience`` steps, and cleared (also reported) once it has been absent as long.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

PREFIX = "health/"
RECORD_FILE = "health.jsonl"  # the findings, one JSON object a line, in the run folder
EARLY_ROWS = 3  # a loss's level at the start (an undecided discriminator): the first rows, at most
BLOCK_STEPS = 25  # the swing compares means over blocks of at least this many steps (noise of one step averages out)
SWING_LEGS = 4  # up, down, up, down: a swing that happened twice, not one change of level or one spike


@dataclass(frozen=True)
class Names:
    direction: str
    generator: str
    discriminator: str | None
    g_term: str | None
    d_term: str | None


@dataclass
class Finding:
    """One event: a condition that started (``warning``) or ended (``cleared``)."""

    kind: str  # "warning" | "cleared"
    finding: str  # "mode_collapse" | "vanishing_gradients" | "unstable"
    direction: str
    step: int
    since: int
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TITLES = {
    "mode_collapse": "mode collapse",
    "vanishing_gradients": "the discriminator wins (vanishing gradients)",
    "unstable": "unstable convergence",
}


@dataclass
class _Episode:
    since: int | None = None  # first step of the current run of measurements with the condition
    clear_since: int | None = None  # first step of the current run without it, while active
    active: bool = False


class Diagnoser:
    def __init__(self, thresholds, names: dict[str, Names], settings: dict[str, Any] | None = None) -> None:
        self.t = thresholds
        self.names = names
        self.settings = settings or {}
        self.episodes: dict[str, _Episode] = {}
        self.series: dict[str, list[tuple[int, float]]] = {}  # loss terms after warm-up, over the trend window
        self.early: dict[str, list[float]] = {}  # the first rows of each loss term: the level swings are measured by
        self.grad_peak: dict[str, tuple[int, float]] = {}  # the largest input-layer gradient so far, and its step

    # -- signals derived from the rows ----------------------------------------------------------
    def _adversarial_terms(self) -> list[str]:
        terms = []
        for n in self.names.values():
            terms += [t for t in (n.g_term, n.d_term) if t and t not in terms]
        return terms

    def _content(self, row: dict[str, Any]) -> float | None:
        """The sum of the loss terms that are not adversarial (cycle, identity, reconstruction, NCE...)."""
        adversarial = set(self._adversarial_terms())
        values = [v for k, v in row.items() if is_loss_term(k) and k not in adversarial and _finite(v)]
        return float(sum(values)) if values else None

    def _update_series(self, row: dict[str, Any]) -> dict[str, float]:
        step = int(row["step"])
        out = {}
        current = {t: row.get(t) for t in self._adversarial_terms()}
        current["content"] = self._content(row)
        for term, value in current.items():
            if not _finite(value):
                continue
            if len(self.early.setdefault(term, [])) < EARLY_ROWS:
                self.early[term].append(float(value))
            if step <= self.t.warmup:
                continue
            series = self.series.setdefault(term, [])
            series.append((step, float(value)))
            while series and series[0][0] <= step - self.t.trend_window:
                series.pop(0)
            level = max(abs(v) for v in self.early[term])
            trend, swing = trend_and_swing(series, level)
            if trend is not None:
                out[f"{PREFIX}trend_{term}"] = trend
            if swing is not None and term != "content":
                out[f"{PREFIX}swing_{term}"] = swing
        for d in self.names:
            value = row.get(f"{PREFIX}grad_{d}")
            if _finite(value) and (d not in self.grad_peak or value > self.grad_peak[d][1]):
                self.grad_peak[d] = (step, float(value))
        return out

    def progressing(self, d: str, row: dict[str, Any]) -> bool | None:
        """Whether the generator still improves: its content losses (without any, its adversarial
        loss) fell by more than `progress` over the trend window. None while that is unknown."""
        trend = row.get(f"{PREFIX}trend_content")
        if not _finite(trend):
            trend = row.get(f"{PREFIX}trend_{self.names[d].g_term}")
        return None if not _finite(trend) else trend < -self.t.progress

    # -- the conditions ---------------------------------------------------------------------------
    def observe(self, row: dict[str, Any]) -> tuple[dict[str, float], list[Finding]]:
        """Add this row's derived signals; return them and the events this row caused."""
        derived = self._update_series(row)
        row = {**row, **derived}
        step = int(row["step"])
        events: list[Finding] = []
        for d, n in self.names.items():
            diversity = row.get(f"{PREFIX}diversity_{d}")
            if _finite(diversity):
                events += self._judge("mode_collapse", d, step, diversity < self.t.collapse_diversity,
                                      {"diversity": diversity, "separation": row.get(f"{PREFIX}d_separation_{d}")})
            sep = row.get(f"{PREFIX}d_separation_{d}")
            if _finite(sep):
                progressing = self.progressing(d, row)
                grad, peak = row.get(f"{PREFIX}grad_{d}"), self.grad_peak.get(d)
                content = self.series.get("content") or [(step, 0.0)]
                evidence = {"separation": sep, "d_gap": row.get(f"{PREFIX}d_gap_{d}"), "grad": grad,
                            "grad_peak": peak[1] if peak else None, "grad_peak_step": peak[0] if peak else None,
                            "trend_content": row.get(f"{PREFIX}trend_content"), "trend_steps": step - content[0][0]}
                events += self._judge("vanishing_gradients", d, step,
                                      sep > self.t.d_separation and progressing is False, evidence)
            swing = row.get(f"{PREFIX}swing_{n.d_term}") if n.d_term else None
            if _finite(swing):  # the discriminator's loss: its level means something for every adversarial loss
                events += self._judge("unstable", d, step, swing > self.t.swing, {"term": n.d_term, "swing": swing})
        return derived, events

    def _judge(self, finding: str, d: str, step: int, present: bool, evidence: dict[str, Any]) -> list[Finding]:
        ep = self.episodes.setdefault(f"{finding}:{d}", _Episode())
        if step <= self.t.warmup:
            return []
        if present:
            ep.clear_since = None
            if ep.since is None:
                ep.since = step
            if not ep.active and step - ep.since >= self.t.patience:
                ep.active = True
                latest = {k: v for k, v in evidence.items() if v is not None}
                return [Finding("warning", finding, d, step, ep.since, self._message(finding, d, ep, latest), latest)]
            return []
        if not ep.active:
            ep.since = None
            return []
        if ep.clear_since is None:
            ep.clear_since = step
        if step - ep.clear_since >= self.t.patience:
            since = ep.since
            self.episodes[f"{finding}:{d}"] = _Episode()
            return [Finding("cleared", finding, d, step, since,
                            f"{TITLES[finding]} of {self.names[d].generator} (since step {since:,}) "
                            f"has cleared by step {step:,}.", {k: v for k, v in evidence.items() if v is not None})]
        return []

    # -- the words ----------------------------------------------------------------------------------
    def _message(self, finding: str, d: str, ep: _Episode, now: dict[str, Any]) -> str:
        n, s, since = self.names[d], self.settings, ep.since
        disc = n.discriminator or "the discriminator"
        lr_now, lr_d_now = f"train.lr (now {_num(s.get('lr'))})", f"train.lr_d (now {_num(s.get('lr_d'))})"
        loss = s.get("adversarial")
        weights = s.get("content_weights") or {}
        if finding == "mode_collapse":
            sep = now.get("separation")
            why = (f"{disc} still tells them from real images ({sep:.0%} of patches), so they do not even fool it"
                   if _finite(sep) and sep > 0.9 else f"they pass {disc} whatever the input")
            tries = [f"a lower {lr_now}"]
            tries += [f"a higher losses.{k}.weight (now {_num(w)})" for k, w in weights.items() if w]
            if (s.get("pool_size") or 0) < 50 and s.get("task") == "cyclegan":
                tries.append(f"train.pool_size: 50 (now {s.get('pool_size')})")
            if loss not in (None, "lsgan"):
                tries.append(f"losses.adversarial: lsgan (now {loss})")
            return (f"{n.generator}'s outputs for different inputs are nearly the same since step {since:,}: their "
                    f"diversity is {now['diversity']:.0%} of the inputs' (threshold {self.t.collapse_diversity:.0%}) "
                    f"and {why}. This is mode collapse: the generator has stopped using its input. Try "
                    f"{_options(tries)}; or resume from a checkpoint saved before step {since:,} with a change.")
        if finding == "vanishing_gradients":
            grad, peak = now.get("grad"), now.get("grad_peak")
            fell = ""
            if _finite(grad) and _finite(peak) and grad > 0 and peak / grad >= 2:
                fell = (f"; {n.generator}'s input-layer gradient fell {peak / grad:,.0f}x from its peak "
                        f"({peak:.3g} at step {now['grad_peak_step']:,}, now {grad:.3g})")
            trend = now.get("trend_content")
            stalled = (f"its content losses changed {trend:+.1%} over the last {now.get('trend_steps', 0):,} steps"
                       if _finite(trend) else "it no longer improves")
            tries = [f"a lower {lr_d_now}", f"a higher {lr_now}"]
            if loss not in ("lsgan", "vanilla"):
                tries.insert(0, f"losses.adversarial: lsgan (now {loss})")
            else:  # one-sided label smoothing (Salimans et al. 2016) keeps D's verdict from saturating
                tries.append(f"label smoothing (losses.adversarial: {{name: {loss}, real_label: 0.9}})")
            if s.get("d_norm") not in (None, "instance"):
                tries.append(f"instance norm in the discriminator (model.discriminator.norm: instance, now "
                             f"{s.get('d_norm')})")
            else:
                tries.append("a smaller discriminator (model.discriminator.n_layers or ndf)")
            return (f"discriminator {disc} separates {now['separation']:.0%} of real and translated patches since "
                    f"step {since:,} and {n.generator} has stopped improving ({stalled}{fell}): the generator is "
                    f"starving (vanishing gradients). Try {_options(tries)}.")
        tries = [f"a lower {lr_now} and {lr_d_now}", "train.betas: [0.5, 0.999]"]
        if loss not in (None, "lsgan"):
            tries.append(f"losses.adversarial: lsgan (now {loss})")
        return (f"since step {since:,} the discriminator's loss {now['term']} has gone up and down by "
                f"{now['swing']:.0%} of its level again and again (at least twice in every {self.t.trend_window:,} "
                f"steps; threshold {self.t.swing:.0%}): unstable convergence; samples may look right "
                f"one moment and broken the next. Try {_options(tries)}, or train.ema: 0.999 to keep an average of "
                f"the generator; compare samples/ across steps before choosing a checkpoint.")

    # -- checkpoint state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"episodes": {k: asdict(v) for k, v in self.episodes.items()},
                "series": {k: [list(p) for p in v] for k, v in self.series.items()},
                "early": {k: list(v) for k, v in self.early.items()},
                "grad_peak": {k: list(v) for k, v in self.grad_peak.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes = {k: _Episode(**v) for k, v in (state.get("episodes") or {}).items()}
        self.series = {k: [(int(s), float(v)) for s, v in pts] for k, pts in (state.get("series") or {}).items()}
        self.early = {k: [float(x) for x in v] for k, v in (state.get("early") or {}).items()}
        self.grad_peak = {k: (int(v[0]), float(v[1])) for k, v in (state.get("grad_peak") or {}).items()}


def trend_and_swing(series: list[tuple[int, float]], level: float | None = None) -> tuple[float | None, float | None]:
    """Over a window of (step, value): the trend, the change of a fitted line across the window, and
    the swing, the largest amount the loss went up and down by at least twice (`SWING_LEGS` moves of
    the means over blocks of BLOCK_STEPS or more). Both are relative to the larger of the window's
    median magnitude and `level` (the loss's level at the start), so a loss that settles near zero
    does not make noise look large. A loss that drifts, or changes its level once, has no swing."""
    if len(series) < 4:
        return None, None
    steps = [s for s, _ in series]
    values = [v for _, v in series]
    scale = max(statistics.median(abs(v) for v in values), level or 0.0)
    if scale <= 1e-12:
        return None, None
    mean_s, mean_v = statistics.fmean(steps), statistics.fmean(values)
    var_s = sum((s - mean_s) ** 2 for s in steps)
    slope = sum((s - mean_s) * (v - mean_v) for s, v in series) / var_s if var_s > 0 else 0.0
    trend = slope * (steps[-1] - steps[0]) / scale
    blocks: list[list[float]] = []
    start = None
    for s, v in series:
        if start is None or s - start >= BLOCK_STEPS:
            blocks.append([])
            start = s
        blocks[-1].append(v)
    means = [statistics.fmean(b) for b in blocks]
    if len(means) <= SWING_LEGS:
        return trend, None
    return trend, recurring_swing(means) / scale


def zigzag_moves(values: list[float], size: float) -> int:
    """How many alternating moves (up, down, up...) of at least `size` the values make."""
    low = high = values[0]
    moves, direction, extreme = 0, 0, values[0]
    for v in values[1:]:
        if direction == 0:
            low, high = min(low, v), max(high, v)
            if v - low >= size:
                moves, direction, extreme = 1, 1, v
            elif high - v >= size:
                moves, direction, extreme = 1, -1, v
        elif direction > 0:
            if v > extreme:
                extreme = v
            elif extreme - v >= size:
                moves, direction, extreme = moves + 1, -1, v
        else:
            if v < extreme:
                extreme = v
            elif v - extreme >= size:
                moves, direction, extreme = moves + 1, 1, v
    return moves


def recurring_swing(values: list[float]) -> float:
    """The largest size of moves the values make at least SWING_LEGS times, alternating."""
    sizes = sorted({abs(a - b) for i, a in enumerate(values) for b in values[i + 1:]}, reverse=True)
    return next((size for size in sizes if size > 0 and zigzag_moves(values, size) >= SWING_LEGS), 0.0)


NOT_LOSSES = {"step", "epoch", "lr", "skipped_steps"}


def is_loss_term(key: str) -> bool:
    """Whether a metrics row key is a loss term of the task (the row also holds step, lr, timing...)."""
    return not (key in NOT_LOSSES or key.startswith(("lr_", "val_", PREFIX)) or key.endswith(("_per_step", "_per_s")))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _options(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)
