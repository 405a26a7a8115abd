"""IMG2IMG_LOAD_PLUGINS as plugins/README.md describes it: distribution or entry-point names, spaces
allowed, unknown names reported, and a checkpoint whose plugin is left out saying so; and the
documented rule for names two plugins register."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from img2img import plugins
from img2img.cli import app
from img2img.errors import Img2ImgError
from img2img.registry import get_registry

from img2img.testing import tiny_pipeline, write_images

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

WIDEN = '''
import torch
from torch import nn
import img2img


def widen(in_channels: int, out_channels: int, *, width: int = 8) -> nn.Module:
    """Two convolutions."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, out_channels, 3, padding=1), nn.Tanh())


@img2img.hookimpl
def register_generators(register):
    register("widen", widen)
'''


@pytest.fixture
def widen(fake_distribution, monkeypatch):
    """Distribution img2img-widen, entry point `wide`, module img2img_widen."""
    monkeypatch.delenv("IMG2IMG_LOAD_PLUGINS", raising=False)
    fake_distribution("img2img-widen", "img2img_widen", WIDEN, entry_name="wide", version="0.2.0")


def load(monkeypatch, value: str | None):
    if value is None:
        monkeypatch.delenv("IMG2IMG_LOAD_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("IMG2IMG_LOAD_PLUGINS", value)
    plugins.reset()
    return get_registry()


@pytest.mark.parametrize("value", ["img2img-widen", "wide", " wide , img2img-cut ", "IMG2IMG_WIDEN"])
def test_distribution_or_entry_point_names_with_spaces(widen, monkeypatch, value):
    assert load(monkeypatch, value).has("generator", "widen")
    assert "wide" not in plugins.unknown_load_names()


def test_unknown_names_are_reported_in_plugins(widen, monkeypatch):
    load(monkeypatch, "wide,widn")
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: IMG2IMG_LOAD_PLUGINS names no installed plugin: widn" in text
    assert "img2img-widen (wide)" in text  # what is installed, by both names
    assert plugins.unknown_load_names() == ["widn"]


def test_unknown_names_are_reported_once_when_the_cli_loads_plugins():
    env = {**os.environ, "IMG2IMG_LOAD_PLUGINS": "no-such-plugin", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "img2img", "components", "loss", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("IMG2IMG_LOAD_PLUGINS names no installed plugin: no-such-plugin") == 1
    assert done.stdout.lstrip().startswith("[")  # stdout stays the JSON


def test_nothing_loaded_says_why(widen, monkeypatch):
    load(monkeypatch, "")
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "no third-party plugins loaded: IMG2IMG_LOAD_PLUGINS='' leaves out" in text and "img2img-widen" in text


def test_a_checkpoint_whose_plugin_is_left_out_says_not_loaded(widen, monkeypatch, tmp_path):
    from img2img.engine.checkpoint import load_checkpoint
    from img2img.engine.train import train

    pipeline = tiny_pipeline(tmp_path)
    load(monkeypatch, None)
    run = tmp_path / "run"
    train(pipeline, out=run, overrides=["model.generator={name: widen, width: 4}", "train.max_steps=1"],
          console=Console(file=io.StringIO()))
    load(monkeypatch, "")
    with pytest.raises(Img2ImgError) as caught:
        load_checkpoint(run)
    message = str(caught.value)
    assert ("needs plugins that are installed but not loaded (IMG2IMG_LOAD_PLUGINS=''): generator 'widen' from "
            "img2img-widen 0.2.0") in message
    assert "not installed" not in message and "Add them to IMG2IMG_LOAD_PLUGINS or unset it" in message
    load(monkeypatch, "img2img-cut")
    with pytest.raises(Img2ImgError, match=r"installed but not loaded \(IMG2IMG_LOAD_PLUGINS='img2img-cut'\)"):
        load_checkpoint(run)
    load(monkeypatch, "wide")
    assert load_checkpoint(run)["step"] == 1


def test_the_clash_rule_is_documented_for_components_and_pipelines():
    text = " ".join((ROOT / "plugins" / "README.md").read_text().split())
    assert "the first registration wins" not in text
    assert "when two plugins register the same name, **neither** gets it" in text
    assert "`<plugin>:<name>`" in text and "a name two plugins ship is used by neither" in text


def test_the_testing_snippet_in_plugins_readme_runs(tmp_path):
    """plugins/README.md's fixture and test, with the template plugin in place of img2img_mything."""
    import re

    text = (ROOT / "plugins" / "README.md").read_text()
    snippet = next(code for code in re.findall(r"```python\n(.*?)```", text.replace("\n  ", "\n"), re.S)
                   if "def my_plugin" in code)
    (tmp_path / "test_snippet.py").write_text(snippet.replace("img2img_mything", "img2img_template")
                                              .replace('"my_gen"', '"small_conv"'))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "plugins" / "img2img-template"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


def test_the_more_than_two_domains_snippet_runs(tmp_path):
    """plugins/README.md's "More than two domains": its task and its YAML as written train, validate kid in
    every direction and translate night2dusk."""
    import importlib.util
    import json
    import re

    import yaml

    from img2img.inference.translator import Translator
    from img2img.testing import registered, train_steps, write_images

    text = (ROOT / "plugins" / "README.md").read_text()
    code = next(c for c in re.findall(r"```python\n(.*?)```", text, re.S) if "class Recolour" in c)
    pipeline = next(c for c in re.findall(r"```yaml\n(.*?)```", text, re.S) if "task: recolour" in c)
    (tmp_path / "recolour_plugin.py").write_text(code)
    spec = importlib.util.spec_from_file_location("recolour_plugin", tmp_path / "recolour_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    raw = yaml.safe_load(pipeline)
    for i, (folder, kind) in enumerate((f, k) for k in ("domains", "val") for f in raw["data"][k].values()):
        write_images(tmp_path / folder, 3, 24, seed=i, colour=(40 * i, 200 - 20 * i, 90))
    (tmp_path / "recolour.yaml").write_text(pipeline)
    with registered(module):
        run = train_steps(tmp_path / "recolour.yaml", 2, out=tmp_path / "run", overrides=[
            "data.num_workers=0", "train.val_every=2", "train.checkpoint_every=2", "train.sample_every=2"])
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        val = next(r for r in rows if "val_kid" in r)
        assert {"val_kid_day2dusk", "val_kid_night2dusk", "val_kid_dusk2day"} <= set(val)
        translator = Translator.load(run, "night2dusk", device="cpu")
        assert translator.direction == "night2dusk"
        with pytest.raises(Exception, match="did you mean 'night2dusk'"):
            Translator.load(run, "nite2dusk", device="cpu")
