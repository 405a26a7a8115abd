"""Re-make the runs behind docs/health.md and their figures (docs/images/health-*.png).

Four runs of the demo CycleGAN (demo shapes, made on first use) at tiny settings: 32 px crops,
ngf/ndf 8, batch 2, the health measured every 10 steps; the thresholds are the defaults.

- healthy:  the demo recipe;
- collapse: a generator that ignores its input (registered by a throwaway plugin);
- starved:  the generator's learning rate at 1e-7, the discriminator's at 2e-3 (10x the default);
- unstable: the discriminator's learning rate jumps between 20x and 1/20x every 100 steps.

    PYTHONPATH=.:tests python docs/health_evidence.py /tmp/health-evidence

About 10 to 20 minutes on one CPU core. Prints one JSON object: per run, the warnings and the signals'
ranges after warm-up (the numbers docs/health.md quotes).
"""
from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path
from typing import Literal

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import img2img  # noqa: E402
from img2img import plugins  # noqa: E402
from img2img.config.health import HealthThresholds  # noqa: E402
from img2img.engine.train import train  # noqa: E402
from img2img.evaluation.health import plot, run_health  # noqa: E402
from img2img.tasks.cyclegan import CycleGAN, CycleGANPipeline  # noqa: E402
from test_health import CollapsePlugin  # noqa: E402

TINY = ["model.generator.ngf=8", "model.discriminator.ndf=8", "train.batch_size=2", "train.log_every=10",
        "train.health_thresholds.every=10", "train.sample_every=100", "train.checkpoint_every=10000",
        "data.num_workers=0",
        "data.transforms=[{Resize: {height: 36, width: 36}}, {RandomCrop: {height: 32, width: 32}}, "
        "{HorizontalFlip: {p: 0.5}}]"]


class SeesawPipeline(CycleGANPipeline):
    task: Literal["seesaw"] = "seesaw"


class Seesaw(CycleGAN):
    """CycleGAN whose discriminator learns 20x faster, then 20x slower, every other 100 steps."""

    name = "seesaw"
    Pipeline = SeesawPipeline

    def build(self) -> None:
        super().build()
        self.count = 0

    def train_step(self, batch):
        self.count += 1
        factor = 20.0 if (self.count // 100) % 2 else 1 / 20.0
        for group in self.optimizers["d"].param_groups:
            group["lr"] *= factor  # the loop sets the scheduled value before every step
        return super().train_step(batch)

    def extra_state(self) -> dict:
        return {**super().extra_state(), "count": self.count}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.count = state.get("count", 0)


class SeesawPlugin:
    @img2img.hookimpl
    def register_tasks(self, register):
        register("seesaw", Seesaw)


RUNS = {
    "healthy": ("cyclegan", ["train.max_steps=800"]),
    "collapse": ("cyclegan", ["model.generator={name: ignorer}", "train.max_steps=600"]),
    "starved": ("cyclegan", ["train.lr=1e-7", "train.lr_d=2e-3", "train.max_steps=600"]),
    "unstable": ("seesaw", ["train.max_steps=900"]),
}


def main(out: Path) -> dict:
    pm = plugins.get_plugin_manager()
    pm.register(CollapsePlugin(), name="evidence-collapse")
    pm.register(SeesawPlugin(), name="evidence-seesaw")
    out.mkdir(parents=True, exist_ok=True)
    source = (REPO / "pipelines" / "demo-cyclegan.yaml").read_text()
    (out / "pipelines").mkdir(exist_ok=True)
    t = HealthThresholds()
    summary = {}
    for name, (task, sets) in RUNS.items():
        pipeline = out / "pipelines" / f"{name}.yaml"
        pipeline.write_text(source.replace("task: cyclegan", f"task: {task}"))
        run = out / name
        print(f"training {name} ...", file=sys.stderr, flush=True)
        train(pipeline, overrides=TINY + sets, out=run, overwrite=True, console=Console(file=io.StringIO()))
        health = run_health(run)
        images = REPO / "docs" / "images"
        plot(health, images / f"health-{name}.png")
        last_sample = sorted(run.glob("samples/step-*.png"), key=lambda p: int(p.stem.split("-")[1]))[-1]
        shutil.copy(last_sample, out / f"{name}-{last_sample.name}")
        late = {s.name: [v for st, v in zip(s.steps, s.values) if st > t.warmup] for s in health.signals}
        summary[name] = {
            "warnings": [(w["finding"], w["direction"], w["since"], w["step"]) for w in health.warnings],
            "ranges_after_warmup": {k.removeprefix("health/"): [round(min(v), 3), round(max(v), 3)]
                                    for k, v in late.items() if v and not k.startswith("health/trend")},
        }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/health-evidence"))
