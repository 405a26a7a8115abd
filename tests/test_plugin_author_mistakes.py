"""Mistakes a plugin author makes on a first task, written from the documented contract only: each
gets a clear error (exit 1, no traceback) before the first step instead of a broken run."""
from __future__ import annotations

from typing import Literal

import pytest
from torch import nn
from typer.testing import CliRunner

import img2img
from img2img.cli import app
from img2img.config import DiscriminatorSpec, GeneratorSpec, PipelineBase, StrictModel
from img2img.tasks import Task, unwrap
from img2img.testing import registered, tiny_pipeline

runner = CliRunner()


class PainterModel(StrictModel):
    painter: GeneratorSpec = GeneratorSpec(name="resnet_6blocks", ngf=4)
    judge: DiscriminatorSpec = DiscriminatorSpec(name="patchgan", ndf=4, n_layers=1)


class PainterPipeline(PipelineBase):
    task: Literal["painter_judge", "painter_hides_judge", "painter_hides_translator", "painter_no_builder",
                  "painter_renamed_builder", "painter_stray_tensor", "painter_no_translator"] = "painter_judge"
    model: PainterModel = PainterModel()


class PainterTask(Task):
    """One direction, a generator called painter and a discriminator called judge."""
    name = "painter_judge"
    Pipeline = PainterPipeline
    translator_nets = {"a2b": "painter"}
    discriminators = {"a2b": "judge"}
    adversarial_terms = {"a2b": ("fool", "spot")}

    def build(self):
        m = self.pipeline.model
        self.nets["painter"] = self.registry.build("generator", m.painter.ref(), in_channels=3, out_channels=3)
        self.nets["judge"] = self.registry.build("discriminator", m.judge.ref(), in_channels=3)
        self.optimizers["paint"] = self.adam(self.nets["painter"].parameters(), "g")
        self.optimizers["spot"] = self.adam(self.nets["judge"].parameters(), "d")

    def build_translator(self, direction):
        with self.plain_nets():
            return self.build_net("generator", self.pipeline.model.painter, in_channels=3, out_channels=3)

    def train_step(self, batch):
        batch = self.to_device(batch)
        fake = self.nets["painter"](batch["a"])
        spot = (self.nets["judge"](fake.detach()) ** 2).mean() + ((self.nets["judge"](batch["b"]) - 1) ** 2).mean()
        self.optimise(spot, self.optimizers["spot"])
        fool = ((unwrap(self.nets["judge"])(fake) - 1) ** 2).mean()
        self.optimise(fool, self.optimizers["paint"])
        return {"fool": fool.detach(), "spot": spot.detach()}

    def sample_columns(self, batch, translators):
        return [batch["a"], translators["a2b"](batch["a"])]


class HidesJudge(PainterTask):
    """Keeps the discriminator as `self.judge`, which hides `Task.judge()` (training health calls it)."""
    name = "painter_hides_judge"

    def build(self):
        super().build()
        self.judge = self.nets["judge"]


class HidesTranslator(PainterTask):
    name = "painter_hides_translator"

    def build(self):
        super().build()
        self.translator = self.nets["painter"]


class NoBuilder(PainterTask):
    """Its generator is model.painter, not model.generator, and it forgot build_translator()."""
    name = "painter_no_builder"
    build_translator = Task.build_translator


class Renamed(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class RenamedBuilder(PainterTask):
    """build_translator() wraps the painter, so its tensor names differ from translator()'s."""
    name = "painter_renamed_builder"

    def build_translator(self, direction):
        return Renamed(super().build_translator(direction))


class StrayTensor(PainterTask):
    """translator() adds a layer that lives in none of self.nets: it would be neither trained nor saved."""
    name = "painter_stray_tensor"

    def translator(self, direction):
        return nn.Sequential(self.nets["painter"], nn.Conv2d(3, 3, 1))

    def build_translator(self, direction):
        return nn.Sequential(super().build_translator(direction), nn.Conv2d(3, 3, 1))


class NoTranslator(PainterTask):
    name = "painter_no_translator"
    translator_nets = {}
    directions = ("a2b",)


class Plugin:
    @img2img.hookimpl
    def register_tasks(self, register):
        register("painter_judge", PainterTask)
        register("painter_hides_judge", HidesJudge)
        register("painter_hides_translator", HidesTranslator)
        register("painter_no_builder", NoBuilder)
        register("painter_renamed_builder", RenamedBuilder)
        register("painter_stray_tensor", StrayTensor)
        register("painter_no_translator", NoTranslator)


@pytest.fixture
def plugin():
    with registered(Plugin(), name="painter-plugin"):
        yield


def test_the_correct_task_trains(plugin, tmp_path):
    pipeline = tiny_pipeline(tmp_path, task="painter_judge")
    result = runner.invoke(app, ["train", str(pipeline), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("task, attribute", [("painter_hides_judge", "judge"),
                                             ("painter_hides_translator", "translator")])
def test_an_attribute_hiding_a_task_method_is_refused_by_name(plugin, tmp_path, task, attribute):
    pipeline = tiny_pipeline(tmp_path, task=task)
    result = runner.invoke(app, ["train", str(pipeline), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    out = " ".join(result.output.split())
    assert f"self.{attribute}" in out and f"Task.{attribute}()" in out and "rename" in out, out
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("ema", [None, 0.9])
@pytest.mark.parametrize("task, expected", [
    ("painter_no_builder", ["task 'painter_no_builder' has no model.generator", "override build_translator"]),
    ("painter_renamed_builder", ["build_translator('a2b') does not have the tensors of translator('a2b')",
                                 "inner.model"]),
    ("painter_stray_tensor", ["the a2b translator uses tensors that are in none of task.nets", "1.weight"]),
    ("painter_no_translator", ["names no translator for a2b", "translator_nets"]),
])
def test_a_translator_that_breaks_the_contract_is_refused_before_the_first_step(plugin, tmp_path, task, expected,
                                                                                  ema):
    train = {"ema": ema} if ema else {}
    pipeline = tiny_pipeline(tmp_path, task=task, train=train)
    result = runner.invoke(app, ["train", str(pipeline), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a message, not an exception
    out = " ".join(result.output.split())
    assert "error:" in out and "Traceback" not in out, out
    for text in expected:
        assert text in out, out
    assert "step 1/" not in out
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_the_smallest_task_of_plugins_readme_works_as_written(tmp_path):
    """The snippet under "The smallest task" in plugins/README.md, executed as it is written."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "plugins" / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The smallest task", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {"__name__": "painter_snippet"}
    exec(compile(code, "plugins/README.md", "exec", dont_inherit=True), namespace)

    class Snippet:
        @img2img.hookimpl
        def register_tasks(self, register):
            register("painter", namespace["PainterTask"])

    with registered(Snippet(), name="painter-snippet"):
        pipeline = tiny_pipeline(tmp_path, task="painter", model={"painter": {"name": "resnet_6blocks", "ngf": 4},
                                                                   "judge": {"name": "patchgan", "ndf": 4}},
                                 data={"val": {"a": str(tmp_path / "A"), "b": str(tmp_path / "B")}},
                                 train={"val_every": 2, "ema": 0.9})
        assert runner.invoke(app, ["validate", str(pipeline)]).exit_code == 0
        bad = runner.invoke(app, ["validate", str(pipeline), "--set", "model.painter.ngf=0"])
        assert bad.exit_code == 1 and "model.painter.ngf" in bad.output
        result = runner.invoke(app, ["train", str(pipeline), "--out", str(tmp_path / "run")])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
        out = runner.invoke(app, ["translate", str(tmp_path / "A"), "--model", str(tmp_path / "run"),
                                  "--out", str(tmp_path / "out")])
        assert out.exit_code == 0, out.output
        assert len(list((tmp_path / "out").glob("*.png"))) == len(list((tmp_path / "A").glob("*.png")))


class Halves(nn.Module):
    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x):
        return self.second(self.first(x))


class TwoNets(PainterTask):
    """A translator composed of two networks (encoder-decoder style), neither of them model.generator."""
    name = "painter_two_nets"

    def build(self):
        super().build()
        self.nets["finish"] = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())
        self.optimizers["paint"] = self.adam(list(self.nets["painter"].parameters())
                                             + list(self.nets["finish"].parameters()), "g")

    def translator(self, direction):
        return Halves(self.nets["painter"], self.nets["finish"])

    def build_translator(self, direction):
        with self.plain_nets():
            return Halves(super().build_translator(direction),
                          self.setup(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())))


class TwoNetsPipeline(PainterPipeline):
    task: Literal["painter_two_nets"] = "painter_two_nets"


TwoNets.Pipeline = TwoNetsPipeline


@pytest.mark.parametrize("task", ["painter_judge", "painter_two_nets"])
def test_a_safetensors_export_of_a_plugin_translator_translates_like_its_run(tmp_path, task):
    """The translator is rebuilt by the task's build_translator, as from a checkpoint, when its generator
    is not model.generator (before: 'needs the generator ResnetGenerator, which no installed plugin provides')."""
    import numpy as np
    from PIL import Image

    class Plugin2:
        @img2img.hookimpl
        def register_tasks(self, register):
            register(task, TwoNets if task == "painter_two_nets" else PainterTask)

    with registered(Plugin2(), name="painter-two-nets"):
        pipeline = tiny_pipeline(tmp_path, task=task)
        assert runner.invoke(app, ["train", str(pipeline), "--out", str(tmp_path / "run")]).exit_code == 0
        st = tmp_path / "g.safetensors"
        result = runner.invoke(app, ["export", str(tmp_path / "run"), "--format", "safetensors", "--out", str(st)])
        assert result.exit_code == 0, result.output
        for model, out in ((tmp_path / "run", "from_run"), (st, "from_file")):
            result = runner.invoke(app, ["translate", str(tmp_path / "A"), "--model", str(model),
                                         "--out", str(tmp_path / out)])
            assert result.exit_code == 0, result.output
        names = sorted(p.name for p in (tmp_path / "A").glob("*.png"))
        assert names and names == sorted(p.name for p in (tmp_path / "from_file").glob("*.png"))
        for name in names:
            a = np.asarray(Image.open(tmp_path / "from_run" / name))
            b = np.asarray(Image.open(tmp_path / "from_file" / name))
            assert np.array_equal(a, b), name
