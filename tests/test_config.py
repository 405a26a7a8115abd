"""Pipelines: one validation pass, every problem with its dotted path, overrides, resolved paths."""
from __future__ import annotations

from pathlib import Path

import pytest

from img2img.config import load_pipeline, validate_pipeline
from img2img.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_pipelines_validate():
    for name in ("horse2zebra", "facades", "demo-cyclegan", "demo-pix2pix"):
        p = load_pipeline(ROOT / "pipelines" / f"{name}.yaml")
        assert p.name == name


def test_reference_defaults_are_filled_in():
    p = validate_pipeline({"task": "cyclegan", "data": {"a": "a", "b": "b"}})
    assert p.model.generator.name == "resnet_9blocks" and p.model.generator.params["ngf"] == 64
    assert p.losses.cycle.weight == 10.0 and p.losses.identity.weight == 5.0
    assert p.losses.adversarial.name == "lsgan" and p.train.pool_size == 50
    assert p.train.lr == 2e-4 and p.train.betas == (0.5, 0.999)
    q = validate_pipeline({"task": "pix2pix", "data": {"pairs": "ab"}})
    assert q.model.generator.name == "unet_256" and q.model.generator.params["norm"] == "batch"
    assert q.model.generator.params["dropout"] == 0.5
    assert q.losses.reconstruction.weight == 100.0 and q.losses.adversarial.name == "vanilla"
    assert q.train.pool_size == 0


def test_typo_and_unknown_key_exact_messages(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("task: cyclegan\ndata: {a: x, b: y}\nmodel:\n  generator: {name: resnet_9block}\n"
                    "train:\n  epoch: 3\n")
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    problems = dict(info.value.problems)
    assert problems["model.generator.name"].startswith(
        "unknown generator 'resnet_9block'; did you mean 'resnet_9blocks'?")
    assert problems["train.epoch"] == "unknown key; did you mean 'epochs'?"
    text = str(info.value)
    assert "model.generator.name (line 4)" in text and "train.epoch (line 6)" in text


def test_component_params_are_checked_with_paths():
    with pytest.raises(PipelineError) as info:
        validate_pipeline({"task": "cyclegan", "data": {"a": "x", "b": "y"},
                           "model": {"generator": {"name": "resnet_6blocks", "ngf": -1, "nrom": "batch"},
                                     "discriminator": {"name": "patchgn"}},
                           "losses": {"cycle": {"name": "l1", "weight": -2}}})
    paths = {p for p, _ in info.value.problems}
    assert {"model.generator.ngf", "model.generator.nrom", "model.discriminator.name",
            "losses.cycle.weight"} <= paths


def test_params_without_name_keep_the_default_component():
    p = validate_pipeline({"task": "cyclegan", "data": {"a": "x", "b": "y"}, "model": {"generator": {"ngf": 16}}})
    assert p.model.generator.name == "resnet_9blocks" and p.model.generator.params["ngf"] == 16


def test_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("task: cyclegan\ndata: {a: x, b: y}\n")
    p = load_pipeline(path, ["train.max_steps=7", "model.generator.ngf=8", "data.channels=1"])
    assert p.train.max_steps == 7 and p.model.generator.params["ngf"] == 8 and p.data.channels.a == 1
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, ["train.max_step=7", "train.batch_size=zero"])
    paths = {p for p, _ in info.value.problems}
    assert paths == {"train.max_step", "train.batch_size"}
    with pytest.raises(PipelineError, match="not key=value"):
        load_pipeline(path, ["train.max_steps"])


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "p.yaml"
    path.write_text("task: cyclegan\ndata: {a: ../imgs/A, b: /abs/B}\n")
    p = load_pipeline(path)
    assert p.data.a == (tmp_path / "imgs" / "A").resolve() and p.data.b == Path("/abs/B")


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("task: cyclegan\ndata:\n  a: [x\n  b: y\n")
    with pytest.raises(PipelineError, match=r"YAML syntax error at line \d+, column \d+"):
        load_pipeline(path)


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("task: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(PipelineError, match="could not determine a constructor"):
        load_pipeline(path)


def test_unknown_task_and_task_cross_checks():
    with pytest.raises(PipelineError, match="unknown task 'cylcegan'; did you mean 'cyclegan'"):
        validate_pipeline({"task": "cylcegan"})
    with pytest.raises(PipelineError) as info:
        validate_pipeline({"task": "cyclegan", "data": {"a": "x"}})
    assert ("data.b", "required: the folder of domain B images") in info.value.problems
    with pytest.raises(PipelineError, match="identity loss needs the same channels"):
        validate_pipeline({"task": "cyclegan", "data": {"a": "x", "b": "y", "channels": {"a": 1, "b": 3}}})


def test_crop_must_fit_the_generator_multiple():
    with pytest.raises(PipelineError, match="not a multiple of 4"):
        validate_pipeline({"task": "cyclegan", "data": {"a": "x", "b": "y", "transforms": [
            {"RandomCrop": {"height": 30, "width": 30}}]}})


def test_transform_typo_is_reported_with_path():
    with pytest.raises(PipelineError) as info:
        validate_pipeline({"task": "cyclegan", "data": {"a": "x", "b": "y", "transforms": [
            {"RandomCrop": {"height": 32, "width": 32}}, {"HorizontalFlp": {"p": 0.5}}]}})
    (path, msg), = info.value.problems
    assert path.startswith("data.transforms.1") and "HorizontalFlip" in msg
