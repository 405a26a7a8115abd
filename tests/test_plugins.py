"""The plugin contract: every hook works for a throwaway plugin, broken plugins are isolated."""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import img2img
from img2img import hookspecs, plugins
from img2img.cli import app
from img2img.registry import get_registry

runner = CliRunner()
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("register_"))


class Echo(nn.Module):
    def __init__(self, out_channels: int, width: int):
        super().__init__()
        self.width = width
        self.conv = nn.Conv2d(out_channels, out_channels, 1)

    def forward(self, x):
        return torch.tanh(self.conv(x))


def test_every_hook_is_documented():
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc) > 40, f"{name} needs a docstring saying what the plugin passes and gets"


def test_every_hook_is_tested():
    source = Path(__file__).read_text()
    for name in HOOKS:
        assert f"def test_hook_{name}" in source, f"no test for hook {name}"


def test_hook_register_generators(plugin_manager):
    class Plugin:
        @img2img.hookimpl
        def register_generators(self, register):
            def echo(in_channels: int, out_channels: int, *, width: int = 8) -> nn.Module:
                """Echo: a 1x1 convolution."""
                return Echo(out_channels, width)

            register("echo", echo)

    plugin_manager.register(Plugin(), name="echo-plugin")
    registry = get_registry()
    component = registry.get("generator", "echo")
    assert component.plugin == "echo-plugin" and component.doc == "Echo: a 1x1 convolution."
    net = registry.build("generator", {"name": "echo", "width": 3}, in_channels=3, out_channels=3)
    assert net.width == 3 and net(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_hook_register_discriminators(plugin_manager):
    class Plugin:
        @img2img.hookimpl
        def register_discriminators(self, register):
            def flat(in_channels: int, *, hidden: int = 4) -> nn.Module:
                """One logit per image."""
                return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.Linear(hidden, 1))

            register("flat", flat)

    plugin_manager.register(Plugin(), name="flat-plugin")
    d = get_registry().build("discriminator", {"name": "flat", "hidden": 2}, in_channels=3)
    assert d(torch.zeros(2, 3, 8, 8)).shape == (2, 1)


def test_hook_register_losses(plugin_manager):
    class Plugin:
        @img2img.hookimpl
        def register_losses(self, register):
            class Softplus(img2img.AdversarialLoss):
                def d_loss(self, real, fake):
                    return nn.functional.softplus(-real).mean() + nn.functional.softplus(fake).mean()

                def g_loss(self, fake):
                    return nn.functional.softplus(-fake).mean()

            def softplus() -> nn.Module:
                """Non-saturating GAN loss."""
                return Softplus()

            register("softplus", softplus)

    plugin_manager.register(Plugin(), name="softplus-plugin")
    loss = get_registry().build("loss", "softplus")
    assert isinstance(loss, img2img.AdversarialLoss)
    assert loss.g_loss(torch.zeros(3)).item() == pytest.approx(0.6931, abs=1e-4)


def test_hook_register_tasks(plugin_manager):
    from img2img.tasks.cyclegan import CycleGAN, CycleGANPipeline

    class MirrorPipeline(CycleGANPipeline):
        task: str = "mirror"

    class Mirror(CycleGAN):
        name = "mirror"
        Pipeline = MirrorPipeline

    class Plugin:
        @img2img.hookimpl
        def register_tasks(self, register):
            register("mirror", Mirror)

    plugin_manager.register(Plugin(), name="mirror-plugin")
    assert get_registry().get("task", "mirror").factory is Mirror
    from img2img.config import validate_pipeline

    p = validate_pipeline({"task": "mirror", "data": {"a": "x", "b": "y"}})
    assert isinstance(p, MirrorPipeline) and p.model.generator.name == "resnet_9blocks"


def test_hook_register_feature_extractors(plugin_manager):
    class MeanColour(nn.Module):
        input_size = 8

        def forward(self, x):
            return nn.functional.interpolate(x, size=(8, 8)).mean((2, 3))

    class Plugin:
        @img2img.hookimpl
        def register_feature_extractors(self, register):
            def mean_colour(*, scale: float = 1.0) -> nn.Module:
                """The mean colour of the image."""
                return MeanColour()

            register("mean_colour", mean_colour)

    plugin_manager.register(Plugin(), name="extractor-plugin")
    from img2img.evaluation.distribution import build_extractor, features

    net = build_extractor({"name": "mean_colour", "scale": 2.0})
    assert features([torch.zeros(2, 1, 5, 5)], net, "cpu").shape == (2, 3)  # grey arrives as RGB
    listed = json.loads(runner.invoke(app, ["components", "feature_extractor", "--json"]).output)
    assert {c["name"] for c in listed} >= {"mean_colour", "inception_v3", "random_conv"}
    assert next(c for c in listed if c["name"] == "mean_colour")["plugin"] == "extractor-plugin"


def test_hook_register_commands(plugin_manager):
    class Plugin:
        @img2img.hookimpl
        def register_commands(self, app):
            @app.command("hello-plugin")
            def hello():
                print("hello from a plugin")

    plugin_manager.register(Plugin(), name="cmd-plugin")
    from img2img import cli

    cli._add_plugin_commands()
    result = runner.invoke(cli.app, ["hello-plugin"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output


def test_hook_register_pipelines(plugin_manager, tmp_path):
    from img2img.config import load_pipeline
    from img2img.config.builtin import builtin_pipelines

    path = tmp_path / "shipped" / "mine.yaml"
    path.parent.mkdir()
    path.write_text("task: cyclegan\nname: mine\ndata: {a: folder/A, b: folder/B}\n")

    class Plugin:
        @img2img.hookimpl
        def register_pipelines(self, register):
            register("mine", path)

    plugin_manager.register(Plugin(), name="pipelines-plugin")
    entry = builtin_pipelines()["mine"]
    assert entry.path == path.resolve() and entry.plugin == "pipelines-plugin" and entry.task == "cyclegan"
    assert load_pipeline("mine").data.a == Path.cwd() / "folder" / "A"  # a built-in's data is the user's
    assert "mine" in runner.invoke(app, ["pipelines"]).output


def test_builtin_names_cannot_be_shadowed(plugin_manager):
    class Plugin:
        @img2img.hookimpl
        def register_generators(self, register):
            register("resnet_9blocks", lambda in_channels, out_channels: nn.Identity())

    plugin_manager.register(Plugin(), name="shadow-plugin")
    registry = get_registry()
    assert registry.get("generator", "resnet_9blocks").plugin == "img2img.default_plugins.resnet"
    info = plugins.info_for("shadow-plugin")
    assert any("'resnet_9blocks' is a built-in name" in e for e in info.errors)


def _small(width: int):
    def factory(in_channels: int, out_channels: int) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, 1) if width else nn.Identity()
    return factory


@pytest.mark.parametrize("order", [("aaa-plugin", "zzz-plugin"), ("zzz-plugin", "aaa-plugin")])
def test_a_name_two_plugins_register_goes_to_neither_whatever_the_order(plugin_manager, order):
    made = {}
    for name in order:
        class Plugin:
            @img2img.hookimpl
            def register_generators(self, register, _name=name):
                register("shared_gen", _small(1 if _name == "aaa-plugin" else 0))

        made[name] = Plugin()
        plugin_manager.register(made[name], name=name)
    registry = get_registry()
    assert not registry.has("generator", "shared_gen")
    for name, other in (("aaa-plugin", "zzz-plugin"), ("zzz-plugin", "aaa-plugin")):
        errors = " ".join(plugins.info_for(name).errors)
        assert f"also registered by {other}" in errors and f"'{name}:shared_gen'" in errors
    # each stays reachable by its qualified name, and the pipeline validator accepts it
    net = registry.build("generator", {"name": "aaa-plugin:shared_gen"}, in_channels=3, out_channels=3)
    assert isinstance(net, nn.Conv2d)
    assert isinstance(registry.build("generator", "zzz-plugin:shared_gen", in_channels=3, out_channels=3),
                      nn.Identity)
    from img2img.config import validate_pipeline

    p = validate_pipeline({"task": "cyclegan", "data": {"a": "x", "b": "y"},
                           "model": {"generator": {"name": "aaa-plugin:shared_gen"}}})
    assert p.model.generator.name == "aaa-plugin:shared_gen"


def test_unannotated_parameter_is_a_plugin_problem(plugin_manager):
    class Plugin:
        @img2img.hookimpl
        def register_generators(self, register):
            def loose(in_channels: int, out_channels: int, *, width=8):
                return nn.Identity()

            register("loose", loose)

    plugin_manager.register(Plugin(), name="loose-plugin")
    registry = get_registry()
    assert not registry.has("generator", "loose")
    assert any("'width' has no type annotation" in e for e in plugins.info_for("loose-plugin").errors)


def test_unknown_hook_name_is_an_error(plugin_manager):
    from img2img.plugins import PluginInfo, _register

    class Typo:
        @img2img.hookimpl
        def register_generator(self, register):  # missing "s"
            pass

    info = PluginInfo(name="typo", module="typo")
    assert not _register(plugin_manager, Typo(), info)
    assert "unknown hook(s) register_generator" in info.errors[0]
    assert not plugin_manager.has_plugin("typo")


GOOD_PLUGIN = '''
import torch
from torch import nn
import img2img

class Widen(nn.Module):
    size_multiple = 1
    def __init__(self, cin, cout, width):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, cout, 3, padding=1))
    def forward(self, x):
        return torch.tanh(self.body(x))

def widen(in_channels: int, out_channels: int, *, width: int = 8):
    """A two-layer convolutional generator."""
    return Widen(in_channels, out_channels, width)

@img2img.hookimpl
def register_generators(register):
    register("widen", widen)
'''


def test_entry_point_plugin_is_found_and_usable(fake_distribution):
    fake_distribution("img2img-widen", "img2img_widen", GOOD_PLUGIN, version="0.3.1")
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0
    listed = {p["name"]: p for p in json.loads(result.output)}
    assert listed["img2img_widen"]["distribution"] == "img2img-widen"
    assert listed["img2img_widen"]["version"] == "0.3.1"
    assert listed["img2img_widen"]["components"] == ["generator:widen"]
    from img2img.config import validate_pipeline

    p = validate_pipeline({"task": "cyclegan", "data": {"a": "x", "b": "y"},
                           "model": {"generator": {"name": "widen", "width": 4}}})
    assert p.model.generator.params == {"width": 4}


def test_broken_entry_point_is_isolated(fake_distribution):
    fake_distribution("img2img-broken", "img2img_broken", "import does_not_exist_anywhere\n")
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0
    listed = {p["name"]: p for p in json.loads(result.output)}
    assert "No module named 'does_not_exist_anywhere'" in listed["img2img_broken"]["error"]
    assert runner.invoke(app, ["components", "--json"]).exit_code == 0
    assert get_registry().has("generator", "resnet_9blocks")


def test_strict_plugins_raise(fake_distribution, monkeypatch):
    fake_distribution("img2img-broken", "img2img_broken", "raise ImportError('nope')\n")
    monkeypatch.setenv("IMG2IMG_STRICT_PLUGINS", "1")
    monkeypatch.setenv("IMG2IMG_LOAD_PLUGINS", "img2img-broken")
    with pytest.raises(img2img.errors.PluginError, match="nope"):
        plugins.get_plugin_manager()


def test_load_plugins_restricts_distributions(fake_distribution, monkeypatch):
    fake_distribution("img2img-widen", "img2img_widen", GOOD_PLUGIN)
    monkeypatch.setenv("IMG2IMG_LOAD_PLUGINS", "")
    plugins.reset()
    assert not get_registry().has("generator", "widen")
    monkeypatch.setenv("IMG2IMG_LOAD_PLUGINS", "img2img-widen")
    plugins.reset()
    assert get_registry().has("generator", "widen")


def test_entry_point_name_clash_is_reported(fake_distribution):
    fake_distribution("img2img-widen", "img2img_widen", GOOD_PLUGIN, entry_name="widen")
    fake_distribution("img2img-other", "img2img_other", GOOD_PLUGIN.replace('"widen"', '"other"'), entry_name="widen")
    infos = plugins.plugin_infos()
    errors = [e for i in infos for e in i.errors if "already used" in e]
    assert len(errors) == 1 and re.search(r"entry point name 'widen' is already used by img2img-(widen|other)", errors[0])
