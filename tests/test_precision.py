"""One precision vocabulary for pipelines and translate, and `auto`: bf16 only where this machine runs it faster."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from img2img import precision
from img2img.errors import Img2ImgError
from img2img.testing import write_images

runner = CliRunner()


@pytest.mark.parametrize("spelling, kind", [("fp32", "fp32"), ("bf16", "bf16"), ("bf16-mixed", "bf16"),
                                            ("FP16-mixed", "fp16"), ("fp16", "fp16"), ("auto", "auto")])
def test_both_spellings_mean_the_same(spelling, kind):
    assert precision.parse(spelling) == kind


def test_unknown_precision_names_the_option():
    with pytest.raises(Img2ImgError, match=r"--precision 'bf32': use fp32, bf16 \(or bf16-mixed\)"):
        precision.parse("bf16".replace("16", "32"))


def test_pipelines_record_the_mixed_spelling(tiny_cyclegan):
    from img2img.config import load_pipeline

    assert load_pipeline(tiny_cyclegan, ["train.precision=bf16"]).train.precision == "bf16-mixed"
    from img2img.errors import PipelineError

    with pytest.raises(PipelineError, match=r"train.precision .*use fp32, bf16-mixed"):
        load_pipeline(tiny_cyclegan, ["train.precision=half"])


def probe_cache(tmp_path, monkeypatch, ratio_p80: float):
    """A cached probe result for this machine, as `cpu_bf16_pays` would have written it."""
    monkeypatch.setenv("IMG2IMG_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "cache" / "img2img" / "precision.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({precision._probe_key(): {"fp32": 1.0, "bf16": ratio_p80, "ratio": ratio_p80,
                                                            "ratio_p80": ratio_p80}}))


@pytest.mark.parametrize("ratio, recorded", [(1.7, "fp32"), (0.86, "fp32"), (0.55, "bf16-mixed")])
def test_auto_records_what_it_chose(tiny_cyclegan, tmp_path, monkeypatch, ratio, recorded):
    from img2img.cli import app

    probe_cache(tmp_path, monkeypatch, ratio)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tiny_cyclegan), "--out", str(run), "--set", "train.precision=auto",
                                 "--set", "train.max_steps=1"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((run / "pipeline.yaml").read_text())["train"]["precision"] == recorded
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["pipeline"]["train"]["precision"] == recorded
    assert f"cpu, {recorded}" in result.output


def test_the_probe_decides_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("IMG2IMG_CACHE", str(tmp_path))
    chose = precision.cpu_bf16_pays()
    cached = json.loads((tmp_path / "img2img" / "precision.json").read_text())[precision._probe_key()]
    assert cached["bf16"] > 0 and cached["fp32"] > 0
    assert chose == (cached["ratio_p80"] < precision.BF16_MARGIN)
    assert precision.resolve("auto", torch.device("cpu")) == ("bf16" if chose else "fp32")


def test_translate_takes_auto_and_both_spellings(translate_run, tmp_path, monkeypatch):
    from img2img.cli import app

    probe_cache(tmp_path, monkeypatch, 2.0)
    write_images(tmp_path / "in", 1, 32)
    for i, name in enumerate(("auto", "bf16-mixed")):
        result = runner.invoke(app, ["translate", str(tmp_path / "in"), "--model", str(translate_run), "--out",
                                     str(tmp_path / f"out{i}"), "--device", "cpu", "--precision", name])
        assert result.exit_code == 0, result.output
        assert ("cpu, fp32" if name == "auto" else "cpu, bf16") in result.output
    result = runner.invoke(app, ["translate", str(tmp_path / "in"), "--model", str(translate_run), "--out",
                                 str(tmp_path / "bad"), "--precision", "fp64"])
    assert result.exit_code == 1 and "--precision 'fp64'" in result.output
