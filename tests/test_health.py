"""Training health: the signals, the diagnoses, runs made to fail on purpose, and healthy runs that
must stay quiet; `img2img health`, the report's panel, `train.health: stop` and resume."""
from __future__ import annotations

import io
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

import img2img
from img2img.cli import app
from img2img.config.health import HealthThresholds
from img2img.engine.diagnosis import Diagnoser, Names, trend_and_swing
from img2img.engine.health import mean_pairwise_distance, probe, separation
from img2img.engine.train import train
from img2img.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.generator.ngf=8", "model.discriminator.ndf=8", "model.discriminator.n_layers=2",
        "train.sample_every=1000", "train.checkpoint_every=1000"]
T32 = ("data.transforms=[{Resize: {height: 36, width: 36}}, {RandomCrop: {height: 32, width: 32}}, "
       "{HorizontalFlip: {p: 0.5}}]")


# ---------------------------------------------------------------------------------------------
# helpers: textures, a generator that ignores its input, tiny runs


def _value_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1]: random grids of growing resolution, smoothly upsampled."""
    out, total, amp = np.zeros((size, size)), 0.0, 1.0
    for octave in range(octaves):
        cells = 2 ** (octave + 2)
        grid = rng.random((cells + 1, cells + 1))
        x = np.linspace(0, cells, size, endpoint=False)
        i, f = x.astype(int), x - x.astype(int)
        f = f * f * (3 - 2 * f)
        fx, fy = f[None, :], f[:, None]
        top = grid[i][:, i] * (1 - fx) + grid[i][:, i + 1] * fx
        bottom = grid[i + 1][:, i] * (1 - fx) + grid[i + 1][:, i + 1] * fx
        out += amp * (top * (1 - fy) + bottom * fy)
        total += amp
        amp *= 0.5
    return out / total


def _wood(rng: np.random.Generator, size: int) -> np.ndarray:
    cx, cy = rng.uniform(-0.5, 1.5, 2) * size
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - cx, y - cy) / size
    rings = np.sin((r * rng.uniform(8, 14) + 2.5 * _value_noise(rng, size)) * 2 * np.pi) * 0.5 + 0.5
    light, dark = np.array([205, 150, 95]), np.array([120, 70, 35])
    return dark + (light - dark) * rings[..., None] ** 1.5 + rng.normal(0, 6, (size, size, 1))


def _marble(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, np.pi)
    s = x * np.cos(angle) + y * np.sin(angle)
    veins = np.abs(np.sin((s * rng.uniform(3, 6) + 3.0 * _value_noise(rng, size, 5)) * np.pi)) ** 0.4
    base, vein = np.array([225, 228, 235]), np.array([70, 80, 105])
    return vein + (base - vein) * veins[..., None] + rng.normal(0, 4, (size, size, 1))


def write_textures(folder: Path, kind: str, count: int, size: int = 40, seed: int = 0) -> Path:
    """Wood grain or marble veins: procedural textures with structure at several scales."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    make = {"wood": _wood, "marble": _marble}[kind]
    for i in range(count):
        Image.fromarray(np.clip(make(rng, size), 0, 255).astype(np.uint8)).save(folder / f"{kind}{i:03d}.png")
    return folder


class Ignorer(nn.Module):
    """A generator that (nearly) ignores its input: one learned image, plus 2% of the input."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.image = nn.Parameter(torch.randn(1, out_channels, 16, 16) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = nn.functional.interpolate(self.conv(self.image), size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)
        return torch.tanh(base.expand(x.shape[0], -1, -1, -1) + 0.02 * x[:, : base.shape[1]])


class CollapsePlugin:
    @img2img.hookimpl
    def register_generators(self, register):
        def ignorer(in_channels: int, out_channels: int) -> nn.Module:
            """Ignores its input: the same image whatever comes in."""
            return Ignorer(out_channels)

        register("ignorer", ignorer)


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("textures")
    write_textures(root / "wood", "wood", 24, seed=1)
    write_textures(root / "marble", "marble", 24, seed=2)
    (root / "pipeline.yaml").write_text(yaml.safe_dump({
        "task": "cyclegan", "name": "wood2marble", "seed": 0,
        "data": {"a": "wood", "b": "marble", "num_workers": 0},
        "model": {"generator": {"name": "resnet_6blocks"}, "discriminator": {"name": "patchgan"}},
        "train": {"batch_size": 2, "log_every": 10},
    }))
    return root / "pipeline.yaml"


def quiet() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=200), text


def events(run: Path) -> list[dict]:
    path = run / "health.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def judged_long_enough(run: Path) -> None:
    """A run that says nothing must have run past the point where a warning could have come."""
    t = HealthThresholds()
    rows = metric_rows(run)
    assert rows[-1]["step"] >= t.warmup + t.patience + t.every
    assert sum("health/diversity_a2b" in r for r in rows if r["step"] > t.warmup + t.patience) >= 2


# ---------------------------------------------------------------------------------------------
# the measurements


def test_separation_is_the_share_of_pairs_ranked_right():
    assert separation(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert separation(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    assert separation(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)) == 0.5  # cannot tell: ties count half
    # real 1, 3 against fake 2: one pair of two ranked right
    assert separation(torch.tensor([1.0, 3.0]), torch.tensor([2.0])) == 0.5
    logits = torch.randn(4, 1, 5, 5)
    assert separation(logits + 100, logits) == 1.0


def test_mean_pairwise_distance_compares_images_at_a_coarse_scale():
    same = torch.zeros(3, 3, 64, 64)
    assert mean_pairwise_distance(same) == 0
    two = torch.stack([torch.zeros(3, 8, 8), torch.full((3, 8, 8), 0.5)])
    assert mean_pairwise_distance(two).item() == pytest.approx(0.5)
    noise = torch.randn(1, 3, 128, 128).sign() * 0.5  # pixel noise averages out at 32 px
    assert mean_pairwise_distance(torch.cat([noise, -noise])) < mean_pairwise_distance(two)
    assert mean_pairwise_distance(torch.zeros(1, 3, 8, 8)) is None


def test_trend_and_swing_tell_a_slow_oscillation_from_noise_and_drift():
    rng = random.Random(0)
    noisy = [(s, 0.25 + rng.gauss(0, 0.03)) for s in range(10, 310, 10)]
    trend, swing = trend_and_swing(noisy)
    assert abs(trend) < 0.2 and swing < 0.3
    drift = [(s, 0.5 - 0.001 * s) for s in range(10, 310, 10)]
    trend, swing = trend_and_swing(drift)
    assert trend == pytest.approx(-0.29 / statistics_median([v for _, v in drift]), rel=0.05) and swing < 1e-9
    wave = [(s, 0.25 + 0.15 * math.sin(2 * math.pi * s / 100)) for s in range(10, 310, 10)]
    assert trend_and_swing(wave)[1] > 2 * HealthThresholds().swing
    # one change of level, or one spike, is not a swing: it has to go up and down twice
    step_change = [(s, 0.02 if s < 150 else 0.3) for s in range(10, 310, 10)]
    spike = [(s, 0.6 if 140 <= s <= 170 else 0.25) for s in range(10, 310, 10)]
    assert trend_and_swing(step_change)[1] == 0 and trend_and_swing(spike)[1] == 0
    # a loss that settled near zero is judged against its early level, not against zero
    settled = [(s, 0.002 + rng.gauss(0, 0.001)) for s in range(10, 310, 10)]
    assert trend_and_swing(settled)[1] > HealthThresholds().swing > 10 * trend_and_swing(settled, level=0.25)[1]


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


# ---------------------------------------------------------------------------------------------
# the diagnoses, on rows made up to the point


NAMES = {"a2b": Names("a2b", "g_ab", "d_b", "g_ab", "d_b")}
SETTINGS = {"task": "cyclegan", "lr": 2e-4, "lr_d": 2e-4, "adversarial": "lsgan", "d_norm": "instance",
            "pool_size": 50, "content_weights": {"cycle": 10.0, "identity": 5.0}}


def made_up_rows(steps: int, *, diversity=lambda s: 0.8, separation=lambda s: 0.7, d=lambda s: 0.25,
                 cycle=lambda s: 2.0 - s / 1000, every: int = 10):
    for step in range(every, steps + 1, every):
        yield {"step": step, "epoch": 0, "lr": 2e-4, "d_b": d(step), "g_ab": 0.3, "cycle_a": cycle(step),
               "seconds_per_step": 0.1, "health/grad_a2b": 1.0,
               "health/diversity_a2b": diversity(step), "health/d_separation_a2b": separation(step),
               "health/d_gap_a2b": 0.2}


def diagnose(rows, thresholds=None, diagnoser=None):
    diagnoser = diagnoser or Diagnoser(thresholds or HealthThresholds(), NAMES, SETTINGS)
    found = []
    for row in rows:
        found += diagnoser.observe(row)[1]
    return found, diagnoser


def test_a_lasting_collapse_is_reported_once_after_warmup_and_patience_then_cleared():
    t = HealthThresholds(warmup=100, patience=150)
    collapsed = lambda s: 0.02 if s <= 600 else 0.7  # noqa: E731
    found, _ = diagnose(made_up_rows(1000, diversity=collapsed), t)
    assert [(f.kind, f.finding, f.since, f.step) for f in found] == [
        ("warning", "mode_collapse", 110, 260), ("cleared", "mode_collapse", 110, 760)]
    message = found[0].message
    assert "g_ab" in message and "since step 110" in message and "2%" in message and "Try" in message


def test_a_condition_that_breaks_off_is_not_reported():
    t = HealthThresholds(warmup=100, patience=150)
    flickering = lambda s: 0.02 if (s // 100) % 2 else 0.7  # noqa: E731  100 steps on, 100 off
    assert diagnose(made_up_rows(1000, diversity=flickering), t)[0] == []


def test_a_winning_discriminator_is_reported_only_while_the_generator_stops_improving():
    t = HealthThresholds(warmup=100, patience=150)
    wins = lambda s: 1.0  # noqa: E731
    improving, _ = diagnose(made_up_rows(800, separation=wins), t)  # pix2pix-like: D wins, L1 still falls
    assert improving == []
    stalled, _ = diagnose(made_up_rows(800, separation=wins, cycle=lambda s: 2.0), t)
    assert [(f.kind, f.finding) for f in stalled] == [("warning", "vanishing_gradients")]
    assert "d_b separates 100%" in stalled[0].message and "lr_d" in stalled[0].message


def test_a_discriminator_loss_that_oscillates_is_unstable_and_one_change_of_level_is_not():
    t = HealthThresholds(warmup=100, patience=150)
    wave = lambda s: 0.25 + 0.15 * math.sin(2 * math.pi * s / 150)  # noqa: E731
    found, _ = diagnose(made_up_rows(1200, d=wave), t)
    assert [(f.kind, f.finding) for f in found] == [("warning", "unstable")]
    assert found[0].step - found[0].since >= t.patience and "again and again" in found[0].message
    step_change = lambda s: 0.02 if s < 500 else 0.3  # noqa: E731  once, as when a generator breaks through
    assert diagnose(made_up_rows(1200, d=step_change), t)[0] == []
    rng = random.Random(1)
    noisy = lambda s: 0.25 + rng.gauss(0, 0.04)  # noqa: E731
    assert diagnose(made_up_rows(1200, d=noisy), t)[0] == []


def test_the_diagnosis_state_resumes_exactly_mid_episode():
    t = HealthThresholds(warmup=100, patience=150)
    rows = list(made_up_rows(900, diversity=lambda s: 0.02 if 150 < s < 700 else 0.7,
                             d=lambda s: 0.25 + 0.1 * math.sin(s / 30)))
    straight, _ = diagnose(rows, t)
    first, saved = diagnose(rows[:20], t)
    state = json.loads(json.dumps(saved.state_dict()))  # what a checkpoint keeps survives a round trip
    resumed = Diagnoser(t, NAMES, SETTINGS)
    resumed.load_state_dict(state)
    second, _ = diagnose(rows[20:], diagnoser=resumed)
    assert [f.to_dict() for f in first + second] == [f.to_dict() for f in straight]
    assert any(f.finding == "mode_collapse" for f in straight)


# ---------------------------------------------------------------------------------------------
# what a probe leaves behind, and the task contract


def _tiny_task(task_name: str, tmp_path: Path, **train):
    from img2img.config import validate_pipeline
    from img2img.registry import get_registry

    write_images_pair(tmp_path)
    model = {"generator": {"name": "unet", "num_downs": 5, "ngf": 8}, "discriminator": {"name": "patchgan", "ndf": 8,
                                                                                       "n_layers": 2, "norm": "batch"}}
    if task_name != "pix2pix":
        model = {"generator": {"name": "resnet_6blocks", "ngf": 4}, "discriminator": {"name": "patchgan", "ndf": 8}}
    pipeline = validate_pipeline({"task": task_name, "data": {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")},
                                  "model": model, "train": train})
    return get_registry().get("task", task_name).factory(pipeline)


def write_images_pair(root: Path) -> None:
    for side, seed in (("a", 1), ("b", 2)):
        (root / side).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / side / f"{i}.png")


def test_a_probe_leaves_running_statistics_and_random_numbers_as_they_were(tmp_path):
    task = _tiny_task("pix2pix", tmp_path)  # batch norm in both networks, dropout in the generator
    batch = {"a": torch.rand(4, 3, 32, 32) * 2 - 1, "b": torch.rand(4, 3, 32, 32) * 2 - 1}
    task.train_step(batch)
    before = {k: v.clone() for k, v in task.nets.state_dict().items()}
    rng = torch.get_rng_state()
    signals = probe(task, batch)
    assert set(signals) == {"health/diversity_a2b", "health/d_separation_a2b", "health/d_gap_a2b"}
    assert torch.equal(torch.get_rng_state(), rng)
    after = task.nets.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(net.training for net in task.nets.values())


def test_health_on_or_off_trains_the_same_numbers(tiny_pix2pix, tmp_path):
    """Every step measured: the probe's forward passes change nothing the training computes."""
    common = ["train.max_steps=6", "train.log_every=1", "train.health_thresholds.every=1"]
    train(tiny_pix2pix, out=tmp_path / "on", overrides=common + ["train.health=warn"])
    train(tiny_pix2pix, out=tmp_path / "off", overrides=common + ["train.health=off"])
    on, off = metric_rows(tmp_path / "on"), metric_rows(tmp_path / "off")
    losses = lambda rows: [{k: v for k, v in r.items() if k in ("step", "d", "g_adv", "rec")} for r in rows]  # noqa: E731
    assert losses(on) == losses(off)
    assert all("health/diversity_a2b" in r and "health/grad_a2b" in r for r in on)
    assert not any(k.startswith("health/") for r in off for k in r)


def test_a_task_without_the_health_attributes_gets_the_signals_that_apply(tmp_path, plugin_manager):
    from typing import Literal

    from img2img.tasks.cyclegan import CycleGAN, CycleGANPipeline

    class UnnamedPipeline(CycleGANPipeline):
        task: Literal["unnamed"] = "unnamed"

    class BlindPipeline(CycleGANPipeline):
        task: Literal["blind"] = "blind"

    class Unnamed(CycleGAN):  # a third party's task that never heard of training health
        name = "unnamed"
        Pipeline = UnnamedPipeline
        discriminators = {}
        adversarial_terms = {}

    class Blind(CycleGAN):  # no discriminator at all, and a signal of its own
        name = "blind"
        Pipeline = BlindPipeline

        def build(self):
            super().build()
            del self.nets["d_a"], self.nets["d_b"]

        def discriminator_key(self, direction):
            return None

        def health_signals(self, batch, translators):
            return {"sharpness_a2b": 0.5, "health/diversity_a2b": 0.25}

    class Plugin:
        @img2img.hookimpl
        def register_tasks(self, register):
            register("unnamed", Unnamed)
            register("blind", Blind)

    plugin_manager.register(Plugin(), name="health-tasks")
    batch = {"a": torch.rand(4, 3, 32, 32) * 2 - 1, "b": torch.rand(4, 3, 32, 32) * 2 - 1}
    unnamed = _tiny_task("unnamed", tmp_path)
    assert unnamed.discriminator_key("a2b") == "d_b" and unnamed.discriminator_key("b2a") == "d_a"
    assert {"health/d_separation_a2b", "health/d_separation_b2a"} <= set(probe(unnamed, batch))
    from img2img.engine.health import names_of

    assert names_of(unnamed)["b2a"].d_term == "d_a" and names_of(unnamed)["b2a"].generator == "g_ba"
    blind = _tiny_task("blind", tmp_path)
    signals = probe(blind, batch)
    assert not any("separation" in k for k in signals)
    assert signals["health/diversity_a2b"] == 0.25 and signals["health/sharpness_a2b"] == 0.5
    assert "health/diversity_b2a" in signals


def test_health_settings_are_validated_like_every_key(tiny_cyclegan):
    from img2img.config import load_pipeline

    with pytest.raises(PipelineError) as err:
        load_pipeline(tiny_cyclegan, ["train.health=maybe", "train.health_thresholds.patiense=10",
                                      "train.health_thresholds.d_separation=2"])
    text = str(err.value)
    assert "train.health (--set)" in text and "'warn', 'stop' or 'off'" in text
    assert "train.health_thresholds.patiense" in text and "patience" in text
    assert "train.health_thresholds.d_separation" in text
    p = load_pipeline(tiny_cyclegan, ["train.health=stop", "train.health_thresholds.patience=50"])
    assert p.train.health == "stop" and p.train.health_thresholds.patience == 50


# ---------------------------------------------------------------------------------------------
# runs made to fail on purpose (default thresholds)

FAILING = ["data.transforms=[{RandomCrop: {height: 32, width: 32}}]", "model.discriminator.ndf=8",
           "model.discriminator.n_layers=2", "train.sample_every=10000", "train.checkpoint_every=10000"]
STARVED = FAILING + ["model.generator.ngf=4", "train.lr=1e-7", "train.lr_d=2e-3", "train.max_steps=520"]


@pytest.fixture(scope="module")
def collapsed_run(textures, tmp_path_factory):
    """wood -> marble with a generator that ignores its input, 500 steps, train.health: warn."""
    from img2img.testing import registered

    with registered(CollapsePlugin(), name="health-collapse"):  # only while it trains
        console, text = quiet()
        run = tmp_path_factory.mktemp("collapsed") / "run"
        train(textures, out=run, console=console,
              overrides=FAILING + ["model.generator={name: ignorer}", "train.max_steps=500"])
    return run, text.getvalue()


@pytest.fixture(scope="module")
def starved_run(textures, tmp_path_factory):
    """wood -> marble with the generator's lr at 1e-7 and the discriminator's at 10x the default."""
    console, text = quiet()
    run = tmp_path_factory.mktemp("starved") / "run"
    train(textures, out=run, console=console, overrides=STARVED)
    return run, text.getvalue()


@pytest.mark.slow
def test_a_generator_that_ignores_its_input_is_flagged_as_mode_collapse(collapsed_run):
    run, console = collapsed_run
    warnings = [e for e in events(run) if e["kind"] == "warning" and e["finding"] == "mode_collapse"]
    assert {w["direction"] for w in warnings} == {"a2b", "b2a"}
    t = HealthThresholds()
    for w in warnings:
        assert t.warmup < w["since"] <= t.warmup + t.every + 10 and w["step"] <= 500
        assert w["evidence"]["diversity"] < 0.05
    # printed once per direction, on one line each, not on every log row
    assert console.count("training health") == len(events(run))
    assert sum("g_ab's outputs for different inputs are nearly the same" in line for line in console.splitlines()) <= 1
    rows = metric_rows(run)
    assert all(r["health/diversity_a2b"] < 0.05 for r in rows if "health/diversity_a2b" in r)


@pytest.mark.slow
def test_a_discriminator_made_to_win_is_flagged_as_vanishing_gradients(starved_run):
    run, console = starved_run
    found = [e for e in events(run) if e["kind"] == "warning"]
    assert {(e["finding"], e["direction"]) for e in found} == {("vanishing_gradients", "a2b"),
                                                               ("vanishing_gradients", "b2a")}
    a2b = next(e for e in found if e["direction"] == "a2b")
    assert a2b["step"] <= 520 and a2b["evidence"]["separation"] > 0.97
    assert abs(a2b["evidence"]["trend_content"]) < HealthThresholds().progress
    assert "discriminator d_b separates" in a2b["message"] and "train.lr_d (now 0.002)" in a2b["message"]
    assert "the generator is starving" in console


@pytest.mark.slow
def test_stop_checkpoints_exits_1_and_resume_continues(textures, starved_run, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "img2img", "train", str(textures), "--out", str(run)]
    for item in STARVED + ["train.health=stop"]:
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    first = next(e for e in events(starved_run[0]) if e["kind"] == "warning")
    stopped_at = first["step"]
    assert f"Stopped after step {stopped_at}" in done.stderr and "img2img train --resume" in done.stderr
    assert "starving" in done.stderr
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == stopped_at and ckpt["health"]["diagnoser"]["episodes"]
    assert (run / "samples" / f"step-{stopped_at}.png").is_file()
    # the stopped run logged exactly what the warn-mode run logged up to there
    timing = ("seconds_per_step", "images_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    warn_rows = [r for r in metric_rows(starved_run[0]) if r["step"] <= stopped_at]
    assert strip(metric_rows(run)) == strip(warn_rows)
    resumed = subprocess.run([sys.executable, "-m", "img2img", "train", "--resume", str(run),
                              "--set", f"train.max_steps={stopped_at + 30}"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert metric_rows(run)[-1]["step"] == stopped_at + 30


@pytest.mark.slow
def test_resume_diagnoses_exactly_as_an_uninterrupted_run(textures, collapsed_run, tmp_path, plugin_manager):
    """Stopped mid-episode (the collapse began, not yet reported) and resumed: the same rows, the same warnings."""
    plugin_manager.register(CollapsePlugin(), name="health-collapse-resume")
    common = FAILING + ["model.generator={name: ignorer}", "train.checkpoint_every=300"]
    console, _ = quiet()
    train(textures, out=tmp_path / "run", console=console, overrides=common + ["train.max_steps=300"])
    assert events(tmp_path / "run") == []
    train(None, resume=tmp_path / "run", console=console, overrides=["train.max_steps=500"])
    timing = ("seconds_per_step", "images_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(metric_rows(tmp_path / "run")) == strip(metric_rows(collapsed_run[0]))
    assert events(tmp_path / "run") == events(collapsed_run[0]) != []


# ---------------------------------------------------------------------------------------------
# healthy runs stay quiet (default thresholds, long enough for a warning to be possible)

DEMO_SETTINGS = {
    "demo-cyclegan": ["model.generator.ngf=8", "model.discriminator.ndf=8", T32],
    "demo-pix2pix": ["model.generator={name: unet, num_downs: 5, ngf: 8}", "model.discriminator.ndf=8",
                     "data.transforms=[{Resize: {height: 32, width: 32}}, {HorizontalFlip: {p: 0.5}}]"],
    "demo-cut": ["model.generator.ngf=8", "model.discriminator.ndf=8", T32, "nce.num_patches=64",
                 "nce.head_units=32"],
    "demo-pix2pixhd": ["model.generator.ngf=8", "model.generator.n_blocks=2", "model.discriminator.ndf=8"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DEMO_SETTINGS))
def test_the_demo_pipelines_at_tiny_settings_raise_no_warning(name, tmp_path):
    from img2img.config.builtin import builtin_pipelines

    if name not in builtin_pipelines():
        pytest.skip(f"the {name} pipeline's plugin is not installed (pip install -e plugins/img2img-*)")
    source = builtin_pipelines()[name].path
    (tmp_path / "pipelines").mkdir()
    pipeline = tmp_path / "pipelines" / source.name
    pipeline.write_text(source.read_text())  # its data is made beside it, in ../data
    console, text = quiet()
    train(pipeline, out=tmp_path / "run", console=console,
          overrides=DEMO_SETTINGS[name] + ["train.batch_size=2", "train.max_steps=600", "train.log_every=10",
                                           "data.num_workers=0", "train.sample_every=10000"])
    assert events(tmp_path / "run") == [], text.getvalue()
    assert "training health" not in text.getvalue()
    judged_long_enough(tmp_path / "run")


@pytest.mark.slow
def test_a_healthy_run_on_textures_raises_no_warning(textures, tmp_path):
    console, text = quiet()
    train(textures, out=tmp_path / "run", console=console,
          overrides=["model.generator.ngf=8", "model.discriminator.ndf=8", T32.replace("36", "40"),
                     "train.max_steps=600", "train.sample_every=10000"])
    assert events(tmp_path / "run") == [], text.getvalue()
    judged_long_enough(tmp_path / "run")
    rows = metric_rows(tmp_path / "run")
    late = [r for r in rows if r["step"] > HealthThresholds().warmup and "health/diversity_a2b" in r]
    assert min(r["health/diversity_a2b"] for r in late) > 2 * HealthThresholds().collapse_diversity


# ---------------------------------------------------------------------------------------------
# reading a run: img2img health, the report's panel


@pytest.mark.slow
def test_health_command_shows_signals_and_warnings(collapsed_run, tmp_path):
    run = collapsed_run[0]
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1")
    shown = subprocess.run([sys.executable, "-m", "img2img", "health", str(run), "--plot", str(tmp_path / "h.png")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "unhealthy" in out and "health/diversity_a2b" in out and "mode_collapse (a2b)" in out
    assert "g_ab's outputs for different inputs" in out
    assert Image.open(tmp_path / "h.png").size[0] > 400
    last = str(run / "checkpoints" / "last.pt")
    as_json = subprocess.run([sys.executable, "-m", "img2img", "health", last, "--json"],
                             capture_output=True, text=True, env=env, timeout=300)
    data = json.loads(as_json.stdout)
    assert data["status"] == "unhealthy" and data["health"] == "warn" and data["last_step"] == 500
    names = {s["name"] for s in data["signals"]}
    assert {"health/diversity_a2b", "health/d_separation_b2a", "health/grad_a2b", "health/swing_d_b"} <= names
    assert {w["finding"] for w in data["warnings"]} >= {"mode_collapse"}
    missing = subprocess.run([sys.executable, "-m", "img2img", "health", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_health_of_a_run_without_signals_says_so(tiny_cyclegan, tmp_path):
    from img2img.evaluation.health import run_health

    train(tiny_cyclegan, out=tmp_path / "off", overrides=["train.health=off", "train.max_steps=2"])
    assert run_health(tmp_path / "off").status == "off"
    train(tiny_cyclegan, out=tmp_path / "on", overrides=["train.max_steps=2"])
    health = run_health(tmp_path / "on")
    assert health.status == "not judged" and health.warnings == []  # 2 steps, all inside the 200-step warm-up
    assert not (tmp_path / "on" / "health.jsonl").exists()  # written when there is something to say
    shown = " ".join(CliRunner().invoke(app, ["health", str(tmp_path / "on")]).output.split())
    assert "not judged yet (warm-up until step 200)" in shown and "healthy" not in shown
    health.thresholds.warmup = 1
    assert health.status == "healthy"  # judged from step 2 on, and nothing found


@pytest.mark.slow
def test_report_has_a_health_panel_with_the_warnings(collapsed_run, tmp_path):
    from img2img.evaluation.health import health_panel
    from img2img.evaluation.report import write_report

    data, fragment = health_panel(collapsed_run[0])
    assert data["status"] == "unhealthy" and "<svg" in fragment and "Training health" in fragment
    page = write_report(collapsed_run[0], tmp_path / "report.html").read_text()
    assert "Training health" in page and "mode collapse (a2b)" in page
    assert "g_ab&#39;s outputs for different inputs" in page  # autoescaped
    # the signals are not drawn among the losses
    losses = page[page.index("<h2>Losses</h2>"):page.index("Training health")]
    assert "health/" not in losses


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_stop_under_torchrun_stops_every_rank_after_one_checkpoint(tiny_cyclegan, tmp_path):
    run = tmp_path / "run"
    sets = ["train.lr=1e-7", "train.lr_d=2e-3", "train.health=stop", "train.max_steps=300", "train.log_every=5",
            "train.checkpoint_every=1000", "train.sample_every=1000",
            "train.health_thresholds={warmup: 20, patience: 30, every: 10, trend_window: 60}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "img2img",
           "train", str(tiny_cyclegan), "--out", str(run)]
    for item in sets:
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", IMG2IMG_DIST_TIMEOUT="60", COLUMNS="200")
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, done.stderr[-3000:]
    warning = next(e for e in events(run) if e["kind"] == "warning")
    assert warning["finding"] == "vanishing_gradients" and warning["step"] < 300
    assert f"Stopped after step {warning['step']}" in done.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == warning["step"]
    assert metric_rows(run)[-1]["step"] == warning["step"]
    assert done.stderr.count("training health:") <= 3  # rank 0's warning and each rank's stop line, once


def test_every_threshold_is_documented_with_its_default():
    doc = (REPO / "docs" / "health.md").read_text()
    for name, field in HealthThresholds.model_fields.items():
        assert f"| `train.health_thresholds.{name}` | {field.default:g} |" in doc, name
    readme = (REPO / "README.md").read_text()
    assert "`health` (`warn`, `stop`, `off`) and `health_thresholds`" in readme and "img2img health runs/" in readme


@pytest.mark.slow
def test_the_cost_benchmark_reports_the_throughput_ratio():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "health.py"), "--size", "32", "--ngf", "4",
                           "--steps", "12", "--rounds", "1", "--log-every", "4", "--every", "4", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["throughput_on_over_off"] > 0 and result["probe_ms"] > 0 and result["modelled_overhead"] >= 0
    assert len(result["seconds_on"]) == len(result["seconds_off"]) == 1 and result["every"] == 4


def test_a_task_whose_judge_fails_still_trains_and_says_so_once(tiny_cyclegan, tmp_path, plugin_manager):
    from typing import Literal

    from img2img.tasks.cyclegan import CycleGAN, CycleGANPipeline

    class BrokenPipeline(CycleGANPipeline):
        task: Literal["broken-judge"] = "broken-judge"

    class BrokenJudge(CycleGAN):
        name = "broken-judge"
        Pipeline = BrokenPipeline

        def judge(self, direction, source, output):
            raise RuntimeError("expected 6 channels")

    class Plugin:
        @img2img.hookimpl
        def register_tasks(self, register):
            register("broken-judge", BrokenJudge)

    plugin_manager.register(Plugin(), name="broken-judge")
    text = tiny_cyclegan.read_text().replace("task: cyclegan", "task: broken-judge")
    tiny_cyclegan.write_text(text)
    console, out = quiet()
    train(tiny_cyclegan, out=tmp_path / "run", console=console, overrides=["train.max_steps=4"])
    assert out.getvalue().count("the measurement on the sample batch failed at step 1") == 1
    assert "RuntimeError: expected 6 channels" in out.getvalue()
    rows = metric_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("health/grad_a2b" in r for r in rows)
    assert not any("health/diversity_a2b" in r for r in rows)
