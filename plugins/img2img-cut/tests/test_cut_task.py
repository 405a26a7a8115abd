"""The cut task through img2img's own loop, CLI and checkpoints, as an installed plugin."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from rich.console import Console

from img2img import hookimpl
from img2img.engine.checkpoint import load_checkpoint, load_generator
from img2img.config import load_pipeline
from img2img.errors import PipelineError
from img2img.engine.train import train

TIMING_KEYS = {"seconds_per_step", "images_per_s"}
QUIET = Console(quiet=True)


def metrics(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows}


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory, make_cut_pipeline) -> Path:
    """One CUT run of 8 steps, batch 2, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("cut")
    train(make_cut_pipeline(root), overrides=["train.max_steps=8"], out=root / "run", console=QUIET)
    return root / "run"


def test_trains_and_checkpoints_generator_heads_and_their_optimiser(cut_run):
    assert (cut_run / "checkpoints" / "last.pt").is_file()
    rows = metrics(cut_run)
    assert sorted(rows) == list(range(1, 9))
    for row in rows.values():
        assert {"g_ab", "d_b", "nce", "nce_idt", "lr"} <= set(row)
        assert all(torch.isfinite(torch.tensor(row[k])) for k in ("g_ab", "d_b", "nce", "nce_idt"))
    ckpt = load_checkpoint(cut_run)
    assert set(ckpt["nets"]) == {"g_ab", "d_b", "heads"}
    assert set(ckpt["optimizers"]) == {"g", "d", "heads"}
    assert ckpt["optimizers"]["heads"]["state"], "the heads' optimiser has stepped"
    assert set(ckpt["translators"]) == {"a2b"}
    assert {key for key, _ in ckpt["translators"]["a2b"].values()} == {"g_ab"}
    assert ckpt["plugins"]["task:cut"]["distribution"] == "img2img-cut"
    assert ckpt["plugins"]["loss:patchnce"]["version"] == "0.2.0"
    # the heads were built for the generator's layers [0, 4, 7, 10, 14] of resnet_6blocks with ngf 8
    widths = [ckpt["nets"]["heads"][f"mlps.{i}.0.weight"].shape[1] for i in range(5)]
    assert widths == [3, 16, 32, 32, 32]


def test_samples_show_input_translation_and_identity(cut_run):
    grid = Image.open(cut_run / "samples" / "step-8.png")
    assert grid.size == (4 * (32 + 2) + 2, 4 * (32 + 2) + 2)  # A | g(A) | B | g(B), 4 rows


def test_generator_loads_for_translation(cut_run):
    loaded = load_generator(cut_run)
    assert loaded.task == "cut" and loaded.direction == "a2b"
    out = loaded.module(torch.zeros(1, 3, 36, 36))
    assert out.shape == (1, 3, 36, 36) and out.abs().max() <= 1


@pytest.mark.parametrize("mode", ["cut", "fastcut"])
def test_resume_continues_exactly(tmp_path, make_cut_pipeline, mode):
    pipeline = make_cut_pipeline(tmp_path, mode)
    train(pipeline, overrides=["train.max_steps=8"], out=tmp_path / "straight", console=QUIET)
    train(pipeline, overrides=["train.max_steps=4"], out=tmp_path / "resumed", console=QUIET)
    train(None, overrides=["train.max_steps=8"], resume=tmp_path / "resumed", console=QUIET)
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 9))
    for step in range(5, 9):
        assert resumed[step] == straight[step], f"step {step} differs after resuming"


def test_bf16_autocast_trains(tmp_path, make_cut_pipeline):
    train(make_cut_pipeline(tmp_path), overrides=["train.precision=bf16-mixed", "train.max_steps=2"],
          out=tmp_path / "run", console=QUIET)
    rows = metrics(tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(v)) for row in rows.values() for k, v in row.items()
               if k in ("g_ab", "d_b", "nce", "nce_idt"))


def test_export_onnx(cut_run, tmp_path):
    import onnx

    from img2img.inference.export import export

    out = export(cut_run, tmp_path / "cut.onnx", console=QUIET)
    assert out.is_file()
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert meta["task"] == "cut" and meta["direction"] == "a2b"


@pytest.mark.parametrize("command", [["translate", "{inputs}", "--model", "{run}", "--out", "{out}"],
                                     ["export", "{run}", "--out", "{out}/cut.onnx"]])
def test_with_the_plugin_left_out_a_cut_run_names_the_distribution(cut_run, tmp_path, command):
    """IMG2IMG_LOAD_PLUGINS="" leaves the installed plugin out: the message says so, and names it.
    (A plugin that is not installed at all gets `pip install img2img-cut==0.2.0`: tests/test_reliability.py.)"""
    args = [c.format(inputs=cut_run.parent / "A", run=cut_run, out=tmp_path / "out") for c in command]
    env = {**os.environ, "IMG2IMG_LOAD_PLUGINS": ""}
    result = subprocess.run([sys.executable, "-m", "img2img", *args], capture_output=True, text=True, env=env,
                            timeout=120)
    output = " ".join((result.stdout + result.stderr).split())  # undo the terminal's line wrapping
    assert result.returncode == 1, output
    assert "task 'cut' from img2img-cut 0.2.0" in output
    assert "installed but not loaded (IMG2IMG_LOAD_PLUGINS='')" in output and "not installed" not in output
    assert "Traceback" not in output


def test_fastcut_mode_sets_the_paper_recipe(cut_pipeline):
    fast = load_pipeline(cut_pipeline, ["mode=fastcut"])
    assert fast.losses.nce.weight == 10.0
    assert (fast.nce.identity, fast.nce.flip_equivariance) == (False, True)
    assert (fast.train.epochs, fast.train.decay_epochs, fast.train.pool_size) == (150, 50, 0)
    cut = load_pipeline(cut_pipeline)
    assert cut.losses.nce.weight == 1.0 and cut.losses.nce.params["temperature"] == 0.07
    assert (cut.nce.identity, cut.nce.flip_equivariance) == (True, False)
    assert (cut.train.epochs, cut.train.decay_epochs) == (100, 100)
    assert cut.nce.layers == [0, 4, 7, 10, 14] and cut.model.generator.name == "resnet_6blocks"
    explicit = load_pipeline(cut_pipeline, ["mode=fastcut", "losses.nce.weight=3", "train.epochs=7",
                                            "nce.identity=true"])
    assert (explicit.losses.nce.weight, explicit.train.epochs, explicit.train.decay_epochs) == (3.0, 7, 50)
    assert explicit.nce.identity is True


class _NoFeatures:
    """A throwaway plugin: a generator without `features`."""

    @hookimpl
    def register_generators(self, register):
        def plain(in_channels: int, out_channels: int) -> torch.nn.Module:
            """A 3x3 conv and tanh."""
            return torch.nn.Sequential(torch.nn.Conv2d(in_channels, out_channels, 3, padding=1), torch.nn.Tanh())

        register("plain_conv", plain)


def test_generator_without_features_is_a_pipeline_problem(cut_pipeline, plugin_manager):
    plugin_manager.register(_NoFeatures(), name="no-features")
    with pytest.raises(PipelineError) as info:
        load_pipeline(cut_pipeline, ["model.generator={name: plain_conv}"])
    paths = dict(info.value.problems)
    assert "model.generator.name" in paths and "features" in paths["model.generator.name"]


def test_layers_outside_the_encoder_are_a_pipeline_problem(cut_pipeline):
    with pytest.raises(PipelineError) as info:
        load_pipeline(cut_pipeline, ["nce.layers=[0, 4, 30]"])
    assert info.value.problems[0][0] == "nce.layers" and "30" in info.value.problems[0][1]
    with pytest.raises(PipelineError, match="distinct"):
        load_pipeline(cut_pipeline, ["nce.layers=[4, 4]"])


def test_identity_needs_equal_channels(cut_pipeline):
    with pytest.raises(PipelineError) as info:
        load_pipeline(cut_pipeline, ["data.channels={a: 1, b: 3}"])
    assert [p for p, _ in info.value.problems] == ["nce.identity"]
    assert load_pipeline(cut_pipeline, ["data.channels={a: 1, b: 3}", "mode=fastcut"]).nce.identity is False
