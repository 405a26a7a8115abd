"""Built-in pipelines: found by name (a path that exists wins), data resolved against the current folder,
listed, shown and copied for editing; plugins ship theirs through register_pipelines; clashes are reported."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import img2img
from img2img.cli import app
from img2img.config import load_pipeline
from img2img.config.builtin import builtin_pipelines, catalogue, find_builtin, init_pipeline
from img2img.errors import Img2ImgError
from img2img.plugins import plugin_infos

ROOT = Path(__file__).resolve().parents[1]
CORE = {"horse2zebra": "cyclegan", "facades": "pix2pix", "demo-cyclegan": "cyclegan", "demo-pix2pix": "pix2pix"}
runner = CliRunner()


def words(text: str) -> str:
    return " ".join(text.split())


def test_the_core_ships_its_pipelines_as_package_data():
    found = builtin_pipelines()
    package = Path(img2img.__file__).resolve().parent / "pipelines"
    for name, task in CORE.items():
        assert found[name].path == package / f"{name}.yaml"
        assert found[name].task == task and found[name].distribution == "img2img-pipeline"
    cut = found["horse2zebra-cut"]
    assert cut.distribution == "img2img-cut" and cut.task == "cut" and found["demo-cut"].distribution == "img2img-cut"


def test_the_checkout_link_is_the_package_folder():
    assert (ROOT / "pipelines").resolve() == Path(img2img.__file__).resolve().parent / "pipelines"


def test_listing_is_one_line_per_pipeline():
    result = runner.invoke(app, ["pipelines"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    rows = {parts[0]: parts[1:] for parts in lines if parts}
    for name, task in CORE.items():
        assert rows[name][:2] == [task, "img2img-pipeline"]
    assert rows["horse2zebra-cut"][:2] == ["cut", "img2img-cut"]
    as_json = runner.invoke(app, ["pipelines", "--json"])
    assert {p["name"] for p in yaml.safe_load(as_json.output)["pipelines"]} >= set(CORE) | {"demo-cut"}


def test_show_prints_the_yaml():
    result = runner.invoke(app, ["pipelines", "show", "facades"])
    assert result.exit_code == 0 and result.output == find_builtin("facades").path.read_text()
    result = runner.invoke(app, ["pipelines", "show", "horse2zeba"])
    assert result.exit_code == 1 and "did you mean 'horse2zebra'" in words(result.output)


def test_a_name_resolves_data_against_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_pipeline("horse2zebra").data.a == tmp_path / "data" / "horse2zebra" / "trainA"
    # the same file reached through the checkout's link is still the built-in
    assert load_pipeline(ROOT / "pipelines" / "horse2zebra.yaml").data.b == tmp_path / "data" / "horse2zebra" / "trainB"
    assert load_pipeline("facades").data.pairs == tmp_path / "data" / "facades" / "train"


def test_a_users_file_resolves_against_its_own_folder_and_an_existing_path_wins(tmp_path, monkeypatch):
    mine = tmp_path / "configs" / "horse2zebra"  # named like a built-in, and it exists
    mine.parent.mkdir()
    mine.write_text("task: cyclegan\nname: mine\ndata: {a: A, b: B}\n")
    monkeypatch.chdir(tmp_path / "configs")
    p = load_pipeline("horse2zebra")
    assert p.name == "mine" and p.data.a == tmp_path / "configs" / "A"
    monkeypatch.chdir(tmp_path)
    assert load_pipeline("configs/horse2zebra").data.a == tmp_path / "configs" / "A"


def test_unknown_names_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Img2ImgError, match="did you mean 'demo-cyclegan'"):
        load_pipeline("demo-cycelgan")
    with pytest.raises(Img2ImgError, match=r"no such pipeline file: pipelines/horse2zebra.yaml \(the built-in "
                                           r"pipeline is `horse2zebra`\)"):
        load_pipeline("pipelines/horse2zebra.yaml")
    result = runner.invoke(app, ["validate", "nothing-like-it"])
    assert result.exit_code == 1 and "no pipeline file or built-in pipeline named 'nothing-like-it'" in words(
        result.output)
    result = runner.invoke(app, ["validate", "demo-pix2pix"])
    assert result.exit_code == 0 and "ok demo-pix2pix" in words(result.output)


def test_init_writes_a_copy_whose_paths_mean_the_same(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["pipelines", "init", "horse2zebra", "configs/h2z.yaml"])
    assert result.exit_code == 0, result.output
    copy = tmp_path / "configs" / "h2z.yaml"
    text = copy.read_text()
    assert "a: ../data/horse2zebra/trainA" in text and "# albumentations stages" in text  # comments kept
    assert load_pipeline(copy).data.a == load_pipeline("horse2zebra").data.a
    again = runner.invoke(app, ["pipelines", "init", "horse2zebra", "configs/h2z.yaml"])
    assert again.exit_code == 1 and "--overwrite" in again.output and copy.read_text() == text


def test_init_data_replaces_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    changes = init_pipeline("horse2zebra", tmp_path / "h.yaml", data="/srv/images/zebras")
    assert changes["data/horse2zebra/trainA"] == "/srv/images/zebras/trainA"
    p = load_pipeline(tmp_path / "h.yaml")
    assert (p.data.a, p.data.test_b) == (Path("/srv/images/zebras/trainA"), Path("/srv/images/zebras/testB"))
    init_pipeline("facades", tmp_path / "sub" / "f.yaml", data="my photos")
    assert load_pipeline(tmp_path / "sub" / "f.yaml").data.pairs == tmp_path / "my photos" / "train"
    result = runner.invoke(app, ["pipelines", "init", "facades", str(tmp_path / "f.yaml"), "--data", "x",
                                 "--overwrite"])
    assert result.exit_code == 0 and "data path data/facades/train -> x/train" in words(result.output)
    with pytest.raises(Img2ImgError, match="is a folder"):
        init_pipeline("facades", tmp_path)


def test_init_copy_comments_describe_the_copy(tmp_path, monkeypatch):
    """The built-in's notes on where paths resolve and how to get the data are rewritten for the copy."""
    monkeypatch.chdir(tmp_path)
    init_pipeline("horse2zebra", tmp_path / "h.yaml", data="/srv/zebras")
    text = (tmp_path / "h.yaml").read_text()
    assert "against the current folder" not in text and "datasets download" not in text
    assert "copy of the built-in pipeline 'horse2zebra'" in text and "Data folder: /srv/zebras" in text
    init_pipeline("demo-cyclegan", tmp_path / "d.yaml", data="mine")
    text = (tmp_path / "d.yaml").read_text()
    assert "generated on first use into mine." in text and "demo-shapes" not in text
    init_pipeline("horse2zebra", tmp_path / "plain.yaml")  # no --data: the download hint still holds
    text = (tmp_path / "plain.yaml").read_text()
    assert "img2img datasets download horse2zebra data" in text and "against the current folder" not in text
    assert load_pipeline(tmp_path / "plain.yaml").data.a == tmp_path / "data" / "horse2zebra" / "trainA"


class _Ships:
    """A throwaway plugin shipping pipelines; `names` maps a name to the file it registers."""

    def __init__(self, names: dict[str, Path]):
        self.names = names

    @img2img.hookimpl
    def register_pipelines(self, register):
        for name, path in self.names.items():
            register(name, path)


def _pipeline_file(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"task: cyclegan\nname: {name}\ndata: {{a: A, b: B}}\n")
    return path


def test_clashes_are_reported_and_decide_nothing(plugin_manager, tmp_path):
    plugin_manager.register(_Ships({"shared": _pipeline_file(tmp_path / "one", "shared")}), name="ships-one")
    plugin_manager.register(_Ships({"shared": _pipeline_file(tmp_path / "two", "shared"),
                                    "horse2zebra": _pipeline_file(tmp_path / "two", "horse2zebra")}), name="ships-two")
    assert "shared" not in builtin_pipelines() and len(catalogue().clashes["shared"]) == 2
    with pytest.raises(Img2ImgError) as info:
        find_builtin("shared")
    assert str(tmp_path / "one") in str(info.value) and str(tmp_path / "two") in str(info.value)
    assert builtin_pipelines()["horse2zebra"].distribution == "img2img-pipeline"  # a built-in is never shadowed
    errors = {i.name: " ".join(i.errors) for i in plugin_infos()}
    assert "pipeline 'shared' is also registered" in errors["ships-two"]
    assert "'horse2zebra' is built into img2img" in errors["ships-two"]
    listed = runner.invoke(app, ["pipelines"])
    assert listed.exit_code == 0 and "shared" in listed.output and "not used" in listed.output
    assert load_pipeline(tmp_path / "one" / "shared.yaml").name == "shared"  # its file still works as a path


def test_a_broken_registration_never_breaks_the_listing(plugin_manager, tmp_path):
    class Broken:
        @img2img.hookimpl
        def register_pipelines(self, register):
            register("gone", tmp_path / "missing.yaml")
            register("bad name!", tmp_path / "x.yaml")
            raise RuntimeError("boom")

    plugin_manager.register(Broken(), name="broken-pipelines")
    result = runner.invoke(app, ["pipelines"])
    assert result.exit_code == 0 and "horse2zebra" in result.output and "gone" not in result.output
    errors = " ".join(next(i for i in plugin_infos() if i.name == "broken-pipelines").errors)
    assert "no such file" in errors and "bad name!" in errors and "RuntimeError: boom" in errors


def test_train_by_name_synthesises_the_demo_data_in_the_current_folder(tmp_path, monkeypatch):
    from img2img.engine.train import train

    monkeypatch.chdir(tmp_path)
    train("demo-cyclegan", overrides=["train.max_steps=1", "model.generator.ngf=4", "model.discriminator.ndf=4",
                                      "data.num_workers=0", "train.batch_size=1"],
          out=Path("r"), console=Console(file=io.StringIO()))
    assert (tmp_path / "r" / "checkpoints" / "last.pt").is_file()
    assert any((tmp_path / "data" / "demo-shapes" / "trainA").iterdir())
    assert yaml.safe_load((tmp_path / "r" / "pipeline.yaml").read_text())["data"]["a"] == str(
        tmp_path / "data" / "demo-shapes" / "trainA")
