"""The template plugin: listed by `img2img plugins`, validated, and trainable by name.

Works whether or not the distribution is installed: when it is not, the module is registered for
the duration of each test with `img2img.testing.registered`, the way any plugin can be tested
before packaging.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from img2img.cli import app
from img2img.config import load_pipeline
from img2img.errors import PipelineError
from img2img.testing import registered, tiny_pipeline, train_steps

PLUGIN_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def template_plugin():
    """The plugin module, registered: by its entry point if installed, else for this test only."""
    if importlib.util.find_spec("img2img_template") is None:
        sys.path.insert(0, str(PLUGIN_ROOT))
    module = importlib.import_module("img2img_template")
    with registered(module, name="img2img-template"):
        yield module


@pytest.fixture
def pipeline_file(tmp_path) -> Path:
    return tiny_pipeline(tmp_path, "cyclegan", name="template-demo", generator={"name": "small_conv", "width": 4})


def test_listed_by_img2img_plugins(template_plugin):
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = [p for p in json.loads(result.output) if "generator:small_conv" in p["components"]]
    assert len(listed) == 1
    assert listed[0]["error"] is None and listed[0]["hooks"] == ["register_generators"]


def test_generator_keeps_size_and_range(template_plugin):
    net = template_plugin.small_conv(3, 1, width=4)
    out = net(torch.randn(2, 3, 20, 34))
    assert out.shape == (2, 1, 20, 34) and out.abs().max() <= 1
    assert net.size_multiple == 2


def test_trains_two_steps_in_a_cyclegan_pipeline(template_plugin, pipeline_file, tmp_path):
    run = train_steps(pipeline_file, steps=2, out=tmp_path / "run")
    assert (run / "checkpoints" / "last.pt").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["cycle_a"]) for r in rows)


def test_parameters_are_validated(template_plugin, pipeline_file):
    with pytest.raises(PipelineError) as info:
        load_pipeline(pipeline_file, ["model.generator.width=0", "model.generator.depth=3"])
    problems = dict(info.value.problems)
    assert "greater than or equal to 1" in problems["model.generator.width"]
    assert "unknown" in problems["model.generator.depth"]
