"""Validation during training through the task contract: kid/fid for any task, extractors from
plugins, best.pt at the best value, and the checks `img2img validate` runs before a training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from img2img.testing import write_images
from cli_support import flat
from img2img.errors import Img2ImgError, PipelineError

EXTRACTOR_PLUGIN = '''
"""A third party's feature extractor: colour statistics at two scales."""
import torch
import torch.nn.functional as F
from torch import nn

import img2img


class ColourStats(nn.Module):
    input_size = 32
    num_features = 12

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        small = F.avg_pool2d(x, 4)
        stats = [x.mean((2, 3)), x.std((2, 3)), small.mean((2, 3)), small.std((2, 3))]
        return torch.cat(stats, 1) * self.scale


def colour_stats(*, scale: float = 1.0) -> nn.Module:
    """Channel means and spreads at full and 1/4 resolution (a test plugin)."""
    return ColourStats(scale)


@img2img.hookimpl
def register_feature_extractors(register):
    register("colour_stats", colour_stats)
'''

TASK_PLUGIN = '''
"""A third party's one-direction task (a2b only): a generator and a discriminator, LSGAN."""
from typing import Literal

import torch
from pydantic import Field

import img2img
from img2img.config import DiscriminatorSpec, GeneratorSpec, LossSpec, PipelineBase, StrictModel
from img2img.tasks import Task, unwrap


class OneWayModel(StrictModel):
    generator: GeneratorSpec = Field(default_factory=lambda: GeneratorSpec(name="resnet_6blocks"))
    discriminator: DiscriminatorSpec = Field(default_factory=lambda: DiscriminatorSpec(name="patchgan"))


class OneWayLosses(StrictModel):
    adversarial: LossSpec = Field(default_factory=lambda: LossSpec(name="lsgan"))


class OneWayPipeline(PipelineBase):
    task: Literal["oneway"] = "oneway"
    model: OneWayModel = Field(default_factory=OneWayModel)
    losses: OneWayLosses = Field(default_factory=OneWayLosses)


class OneWay(Task):
    name = "oneway"
    Pipeline = OneWayPipeline
    data_kind = "unpaired"
    directions = ("a2b",)

    def build(self):
        p = self.pipeline
        self.nets["g"] = self.build_net("generator", p.model.generator, in_channels=3, out_channels=3)
        self.nets["d"] = self.build_net("discriminator", p.model.discriminator, in_channels=3)
        self.adversarial = self.build_loss(p.losses.adversarial)
        self.optimizers["g"] = self.adam(self.nets["g"].parameters(), "g")
        self.optimizers["d"] = self.adam(self.nets["d"].parameters(), "d")

    def generator(self, direction):
        return unwrap(self.nets["g"])

    def train_step(self, batch):
        batch = self.to_device(batch)
        a, b = batch["a"], batch["b"]
        fake = self.nets["g"](a)
        loss_d = self.adversarial.d_loss(self.nets["d"](b), self.nets["d"](fake.detach()))
        self.optimise(loss_d, self.optimizers["d"])
        loss_g = self.adversarial.g_loss(self.nets["d"](fake))
        self.optimise(loss_g, self.optimizers["g"])
        return {"d": loss_d.detach(), "g": loss_g.detach()}

    @torch.no_grad()
    def sample_columns(self, batch, generators):
        batch = self.to_device(batch)
        return [batch["a"], generators["a2b"](batch["a"])]


class Scheduled(OneWay):
    """Learns nothing: its output is its input shifted towards B by a fixed schedule, so the
    validation scores go down, up and down again in a known way."""

    name = "scheduled"
    SHIFTS = (0.1, 0.9, 0.3, 0.6)

    class Pipeline(OneWayPipeline):
        task: Literal["scheduled"] = "scheduled"

    def build(self):
        super().build()
        self.nets["g"] = Shift()
        self.steps = 0

    def train_step(self, batch):
        self.nets["g"].amount.fill_(self.SHIFTS[self.steps % len(self.SHIFTS)])
        self.steps += 1
        return {"g": torch.zeros(())}

    # a metric of its own, where higher is better: how far the translations move from the inputs
    val_higher_is_better = frozenset({"change"})

    @classmethod
    def val_metrics(cls, pipeline):
        return (*super().val_metrics(pipeline), "change")

    def validation_scores(self, translators, val):
        moved = [float((translators["a2b"](x[None].to(self.device)) - x).abs().mean()) for x in val.a]
        return {"change": sum(moved) / len(moved)}


class Shift(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("amount", torch.zeros(()))
        self.register_buffer("target", torch.tensor([-0.7, -0.3, 0.6]).view(1, 3, 1, 1))

    def forward(self, x):
        return x + self.amount * (self.target - x.mean((2, 3), keepdim=True))


@img2img.hookimpl
def register_tasks(register):
    register("oneway", OneWay)
    register("scheduled", Scheduled)
'''

TINY = """\
task: {task}
name: tiny-{task}
seed: 0
data:
  a: {root}/A
  b: {root}/B
  num_workers: 0
  val: {{a: {root}/valA, b: {root}/valB}}
model:
  generator: {{name: resnet_6blocks, ngf: 4}}
  discriminator: {{name: patchgan, ndf: 4, n_layers: 2}}
train:
  max_steps: 4
  batch_size: 2
  lr: 0.002
  log_every: 2
  sample_every: 100
  checkpoint_every: 100
  val_every: 1
"""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_images(tmp_path / "A", 6, 32, seed=1, colour=(220, 120, 60))
    write_images(tmp_path / "B", 6, 32, seed=2, colour=(40, 90, 200))
    write_images(tmp_path / "valA", 5, 32, seed=3, colour=(220, 120, 60))
    write_images(tmp_path / "valB", 5, 32, seed=4, colour=(40, 90, 200))
    return tmp_path


@pytest.fixture
def plugins_installed(fake_distribution):
    """Two separately installed distributions: a task (oneway, scheduled) and an extractor (colour_stats)."""
    fake_distribution("img2img-oneway", "img2img_oneway", TASK_PLUGIN)
    fake_distribution("img2img-colourstats", "img2img_colourstats", EXTRACTOR_PLUGIN)
    from img2img.registry import get_registry

    registry = get_registry()
    assert registry.get("feature_extractor", "colour_stats").distribution == "img2img-colourstats"
    assert registry.get("task", "oneway").distribution == "img2img-oneway"
    return registry


def pipeline(root: Path, task: str, **train) -> Path:
    raw = yaml.safe_load(TINY.format(task=task, root=root))
    if task == "cut":
        raw["nce"] = {"num_patches": 16, "head_units": 8}
    raw["train"].update(train)
    path = root / f"{task}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def val_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("val_") for k in r)]


@pytest.mark.parametrize("task", ["cyclegan", "cut", "oneway"])
def test_kid_with_a_plugin_extractor_keeps_best_at_the_minimum(task, data, plugins_installed, tmp_path):
    if task == "cut":
        pytest.importorskip("img2img_cut")
    from img2img.engine.train import train

    run = tmp_path / "run"
    train(pipeline(data, task, val_metric="kid", val_extractor="colour_stats"), out=run)
    rows = val_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"val_kid", "val_kid_std", "val_seconds"} <= set(r) and r["val_seconds"] > 0
        # every kid row says how it was computed: extractor, weights, protocol, features and image counts
        assert r["val_setup"] == {"extractor": "colour_stats", "weights": "none", "protocol": "torch",
                                  "features": r["val_setup"]["features"], "count": 5, "count_ref": 5}
    kids = [r["val_kid"] for r in rows]
    assert len(set(kids)) == 4  # the translations changed between validations
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    first_minimum = rows[kids.index(min(kids))]["step"]
    assert best["step"] == first_minimum
    assert best["best"] == {"metric": "kid", "value": min(kids), "step": first_minimum, "extractor": "colour_stats",
                            "protocol": "torch", "weights": "none"}
    assert best["plugins"][f"task:{task}"]["distribution"] == {
        "cyclegan": "img2img-pipeline", "cut": "img2img-cut", "oneway": "img2img-oneway"}[task]
    assert [r["step"] for r in rows if r.get("val_best")] == [
        r["step"] for i, r in enumerate(rows) if r["val_kid"] < min(kids[:i], default=float("inf"))]
    if task == "cyclegan":  # the task's own score is logged beside the engine's; the report marks best.pt
        from img2img.evaluation.report import write_report

        assert all("val_cycle_l1" in r for r in rows)
        page = write_report(run, tmp_path / "report.html").read_text()
        assert f"<b>step {first_minimum}</b><span>best.pt (val_kid " in page
    resolved = yaml.safe_load((run / "pipeline.yaml").read_text())
    assert resolved["train"]["val_metric"] == "kid" and resolved["train"]["val_extractor"] == {"name": "colour_stats"}


def test_a_worse_later_score_never_replaces_best(data, plugins_installed, tmp_path):
    """The scheduled task's outputs get closer to B, further, closer, further: best.pt stays at step 2."""
    from img2img.engine.train import train

    run = tmp_path / "run"
    train(pipeline(data, "scheduled", val_metric="kid", val_extractor={"name": "colour_stats", "scale": 2.0}),
          out=run)
    rows = val_rows(run)
    kids = [r["val_kid"] for r in rows]
    assert kids[1] < kids[3] < kids[2] < kids[0]  # the schedule 0.1, 0.9, 0.3, 0.6 towards B
    assert [r["step"] for r in rows if r.get("val_best")] == [1, 2]
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["step"] == 2


def test_a_task_offers_a_metric_of_its_own(data, plugins_installed, tmp_path):
    from img2img.engine.train import train

    run = tmp_path / "run"
    train(pipeline(data, "scheduled", val_metric="change"), out=run)
    rows = val_rows(run)
    changes = [r["val_change"] for r in rows]
    assert changes.index(max(changes)) == 1 and "val_kid" not in rows[0]  # the schedule peaks at step 2
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 2 and best["best"]["metric"] == "change" and best["best"]["value"] == max(changes)


def test_one_direction_tasks_validate_by_kid_with_random_conv_by_default(data, plugins_installed, tmp_path):
    from img2img.config import load_pipeline
    from img2img.engine.train import train
    from img2img.engine.validation import describe

    path = pipeline(data, "oneway", max_steps=2)
    assert describe(load_pipeline(path)) == "kid (random_conv)"
    run = tmp_path / "run"
    train(path, out=run)
    rows = val_rows(run)
    assert [r["step"] for r in rows] == [1, 2] and all("val_kid" in r for r in rows)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["best"]
    assert best["metric"] == "kid" and best["extractor"] == "random_conv"


def test_paired_validation_by_psnr_keeps_the_maximum(tiny_pix2pix, tmp_path):
    from img2img.engine.train import train

    data = tiny_pix2pix.parent
    run = tmp_path / "run"
    train(tiny_pix2pix, out=run, overrides=[f"data.val.a={data / 'inA'}", f"data.val.b={data / 'inB'}",
                                            "train.val_every=1", "train.val_metric=psnr", "train.lr=0.002"])
    rows = val_rows(run)
    psnrs = [r["val_psnr"] for r in rows]
    assert {"val_l1", "val_ssim"} <= set(rows[0])
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["best"]["value"] == max(psnrs) and best["step"] == rows[psnrs.index(max(psnrs))]["step"]


def test_paired_kid_compares_with_the_targets(tiny_pix2pix, tmp_path):
    from img2img.engine.train import train

    data = tiny_pix2pix.parent
    run = tmp_path / "run"
    train(tiny_pix2pix, out=run, overrides=[f"data.val.a={data / 'inA'}", "train.val_every=2",
                                            "train.val_metric=kid", "train.val_extractor=random_conv"])
    rows = val_rows(run)
    assert [r["step"] for r in rows] == [2, 4] and all(r["val_kid"] > 0 for r in rows)
    assert "val_l1" not in rows[0]  # without data.val.b there are no paired targets to score


# ---------------------------------------------------------------------------------------------
# checks before training


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "img2img", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("setting", ["default", "hub", "path"])
def test_validate_names_the_missing_inception_weights_and_the_command(setting, data, tmp_path):
    torch_home = tmp_path / "torch"
    path = pipeline(data, "cyclegan", val_metric="fid", **(
        {} if setting == "default" else {"val_extractor": "inception_v3"} if setting == "hub" else
        {"val_extractor": {"name": "inception_v3", "weights": str(tmp_path / "models" / "inception.pth")}}))
    result = run_cli("validate", str(path), env={"TORCH_HOME": str(torch_home)})
    assert result.returncode == 1, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and result.stdout == ""
    looked_for = tmp_path / "models" / "inception.pth" if setting == "path" else \
        torch_home / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    assert str(looked_for) in message and "img2img weights download inception_v3" in message
    assert "train.val_extractor" in message
    if setting == "default":
        assert "fid uses the inception_v3 extractor (the default" in message and "random_conv" in message

    # the same pipeline with the file in place validates, and says what picks best.pt
    looked_for.parent.mkdir(parents=True)
    looked_for.write_bytes(b"present")
    result = run_cli("validate", str(path), env={"TORCH_HOME": str(torch_home)})
    assert result.returncode == 0, result.stderr
    assert "validation fid (inception_v3)" in " ".join(result.stdout.split())


def test_training_refuses_before_the_first_step(data, tmp_path, monkeypatch):
    from img2img.engine.train import train

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run = tmp_path / "run"
    with pytest.raises(PipelineError, match="img2img weights download inception_v3"):
        train(pipeline(data, "cyclegan", val_metric="kid"), out=run)
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_pipeline_problems_of_validation_settings(data, plugins_installed):
    from img2img.config import load_pipeline

    from img2img.engine.validation import check_ready

    def problems(task: str, **train) -> dict[str, str]:
        """Every problem `img2img validate` reports: the pipeline's, then those of the setup."""
        try:
            check_ready(load_pipeline(pipeline(data, task, **train)))
        except PipelineError as err:
            return dict(err.problems)
        return {}

    assert "is not a metric the oneway task can score" in problems("oneway", val_metric="cycle_l1")["train.val_metric"]
    assert "did you mean 'kid'" in problems("cyclegan", val_metric="kd")["train.val_metric"]
    unknown = problems("oneway", val_metric="kid", val_extractor="colour_stat")["train.val_extractor.name"]
    assert "did you mean 'colour_stats'" in unknown and "install the plugin" in unknown
    bad = problems("oneway", val_metric="kid", val_extractor={"name": "colour_stats", "scale": "big"})
    assert list(bad) == ["train.val_extractor.scale"]
    assert "only kid and fid use a feature extractor" in problems("cyclegan", val_extractor="random_conv")[
        "train.val_extractor"]
    assert problems("oneway") == {} and problems("cyclegan", val_metric="fid", val_extractor="random_conv") == {}
    assert problems("oneway", val_metric="kid", val_protocol="legacy_tensorflow") == {}
    assert "only kid and fid resize images" in problems("cyclegan", val_protocol="clean")["train.val_protocol"]
    assert "legacy_tensorflow" in problems("oneway", val_metric="kid", val_protocol="tensorflow")["train.val_protocol"]


def test_validation_settings_without_data_val_are_reported(tiny_cyclegan):
    result = run_cli("validate", str(tiny_cyclegan), "--set", "train.val_metric=kid", "--set", "train.val_protocol=clean")
    assert result.returncode == 1
    assert "train.val_metric (--set): set, but there is no data.val to validate on" in " ".join(result.stderr.split())
    assert "train.val_protocol (--set): set, but there is no data.val to validate on" in " ".join(result.stderr.split())


def test_a_checkpoint_opens_without_the_validation_extractor(data, plugins_installed):
    """translate and export re-validate the stored pipeline: the extractor is not needed there."""
    from img2img.config import dump_pipeline, load_pipeline, pipeline_from_dict
    from img2img.engine.validation import check_ready

    stored = dump_pipeline(load_pipeline(pipeline(data, "cyclegan", val_metric="kid", val_extractor="colour_stats")))
    stored["train"]["val_extractor"] = {"name": "uninstalled_extractor"}
    reopened = pipeline_from_dict(stored)
    assert reopened.train.val_extractor.name == "uninstalled_extractor"
    with pytest.raises(Img2ImgError, match="unknown feature_extractor 'uninstalled_extractor'"):
        check_ready(reopened)


def test_logged_kid_is_what_evaluate_gives_for_the_translations_of_best_pt(data, tmp_path):
    """Validation scores the translations as translate writes them (8-bit), with the same code as evaluate."""
    from rich.console import Console

    from img2img.engine.train import train
    from img2img.evaluation.metrics import evaluate_folders
    from img2img.inference.translator import translate_inputs

    run = tmp_path / "run"
    train(pipeline(data, "cyclegan", max_steps=3, val_metric="kid", val_extractor="random_conv"), out=run)
    rows = val_rows(run)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    logged = next(r for r in rows if r["step"] == best["step"])
    translate_inputs([data / "valA"], model=run / "checkpoints" / "best.pt", out=tmp_path / "out", device="cpu",
                     console=Console(quiet=True))
    summary = evaluate_folders(tmp_path / "out", data / "valB", ["kid"], extractor="random_conv")["summary"]
    assert summary["kid"] == pytest.approx(logged["val_kid"], rel=1e-4, abs=1e-7)


def test_resuming_with_another_metric_starts_the_best_over(data, tmp_path):
    from img2img.engine.train import train

    run = tmp_path / "run"
    train(pipeline(data, "cyclegan", max_steps=2, val_metric="kid", val_extractor="random_conv"), out=run)
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["best"]["metric"] == "kid"
    train(None, resume=run, overrides=["train.max_steps=3", "train.val_metric=cycle_l1", "train.val_extractor=null"])
    rows = val_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3] and "val_kid" not in rows[-1]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    # a cycle_l1 value is never compared with a kid value: the first cycle_l1 validation is the best so far
    assert best["step"] == 3 and best["best"] == {"metric": "cycle_l1", "value": rows[-1]["val_cycle_l1"], "step": 3,
                                                  "extractor": None}


def test_resuming_with_another_protocol_starts_the_best_over_and_the_report_warns(data, tmp_path):
    """kid under clean-fid's resize is not kid under the extractor's own: never compared, and the report says so."""
    from img2img.engine.train import train

    run = tmp_path / "run"
    train(pipeline(data, "cyclegan", max_steps=2, val_metric="kid", val_extractor="random_conv"), out=run)
    train(None, resume=run, overrides=["train.max_steps=3", "train.val_protocol=clean"])
    rows = val_rows(run)
    assert [r["val_setup"]["protocol"] for r in rows] == ["torch", "torch", "clean"]
    assert {r["val_setup"]["weights"] for r in rows} == {"none"}
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 3 and best["best"]["protocol"] == "clean"  # not compared with the torch-protocol values

    result = subprocess.run([sys.executable, "-m", "img2img", "report", str(run), "--out", str(tmp_path / "report.html")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning: the validation rows were computed with different setups" in flat(result.stderr)
    assert "protocol torch vs clean (step 2 -> 3)" in flat(result.stderr)
    page = (tmp_path / "report.html").read_text()
    assert "steps 1-2: random_conv, weights none, protocol torch, 5 vs 5 images" in page
    assert "protocol torch vs clean (step 2 -&gt; 3)" in page
