"""The CUDA path: training in every precision and layout, resume, translate and export from a GPU run.

Skipped without a CUDA device (CI has none); `benchmarks/device_check.py` runs these on a lent GPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from img2img.testing import write_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
runner = CliRunner()


def invoke(*args):
    from img2img.cli import app

    return runner.invoke(app, [str(a) for a in args])


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed", "fp16-mixed"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_trains_on_cuda(tiny_cyclegan, tmp_path, precision, channels_last):
    run = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "train.device=cuda", "--set",
                    f"train.precision={precision}", "--set", f"train.channels_last={channels_last}",
                    "--set", "train.max_steps=6", "--set", "data.num_workers=2")
    assert result.exit_code == 0, result.output
    assert all(np.isfinite(r["cycle_a"]) for r in rows(run))


def test_fp16_resume_continues_the_run_on_cuda(tiny_cyclegan, tmp_path):
    common = ["--set", "train.device=cuda", "--set", "train.precision=fp16-mixed"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert invoke("train", tiny_cyclegan, "--out", straight, *common, "--set", "train.max_steps=4").exit_code == 0
    assert invoke("train", tiny_cyclegan, "--out", resumed, *common, "--set", "train.max_steps=2").exit_code == 0
    assert invoke("train", "--resume", resumed, "--set", "train.max_steps=4").exit_code == 0
    keys = ("cycle_a", "cycle_b", "d_a", "d_b", "g_ab", "g_ba")
    # cuDNN autotuning and atomic adds: two GPU runs agree to rounding, not bit for bit (troubleshooting.md)
    np.testing.assert_allclose([[r[k] for k in keys] for r in rows(resumed)],
                               [[r[k] for k in keys] for r in rows(straight)], rtol=2e-2)


def test_cuda_run_translates_on_cuda_and_exports(tiny_cyclegan, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", tiny_cyclegan, "--out", run, "--set", "train.device=cuda",
                  "--set", "train.max_steps=2").exit_code == 0
    write_images(tmp_path / "in", 2, 37)
    result = invoke("translate", tmp_path / "in", "--model", run, "--out", tmp_path / "gpu", "--device", "cuda")
    assert result.exit_code == 0 and "cuda" in result.output, result.output
    assert invoke("translate", tmp_path / "in", "--model", run, "--out", tmp_path / "cpu",
                  "--device", "cpu").exit_code == 0
    gpu = np.asarray(Image.open(tmp_path / "gpu" / "img000.png"), dtype=int)
    cpu = np.asarray(Image.open(tmp_path / "cpu" / "img000.png"), dtype=int)
    assert np.abs(gpu - cpu).max() <= 2
    result = invoke("export", run, "--out", tmp_path / "g.onnx")
    assert result.exit_code == 0, result.output
