"""The benchmark scripts run as documented and end with one JSON object holding the promised keys.

Tiny sizes keep them quick; the numbers are not judged here (speed is measured by running the
scripts, never by timing tests), only that each script works end to end and reports what it says.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared/bench/reference_step.py"


def run_script(name: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{name} printed nothing on stdout; stderr: {proc.stderr[-2000:]}"
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result


def test_translate_benchmark_reports_both_backends_and_the_forward_pair():
    result = run_script("translate.py", "--images", "3", "--size", "32", "--ngf", "8", "--rounds", "1",
                        "--forward-runs", "2", "--torch-precision", "bf16")
    for backend in ("torch", "onnx", "torch_bf16"):
        assert result[backend]["images_per_s"] > 0
    assert result["onnx_speedup"] == pytest.approx(result["onnx"]["images_per_s"] / result["torch"]["images_per_s"],
                                                   rel=0.01)
    forward = result["forward"]
    assert forward["runs"] == 2 and forward["torch_seconds"] > 0 and forward["onnx_seconds"] > 0
    assert forward["speedup"] > 0
    assert (result["images"], result["size"], result["ngf"]) == (3, 32, 8)


def test_dataloader_benchmark_counts_images_per_second():
    result = run_script("dataloader.py", "--images", "4", "--image-size", "300", "--batches", "6", "--warmup", "1",
                        "--no-step")
    assert result["images_per_s"] > 0


@pytest.mark.skipif(not REFERENCE.is_file(), reason="shared/bench/reference_step.py is not beside the checkout")
def test_train_step_benchmark_compares_with_the_reference_step():
    result = run_script("train_step.py", "--task", "pix2pix", "--size", "32", "--steps", "1", "--threads", "1",
                        "--vs-reference")
    for key in ("seconds_per_step", "min", "max", "images_per_s", "peak_rss_mb", "flops_per_step",
                "ratio_to_reference"):
        assert result[key] > 0, key
    assert result["min"] <= result["seconds_per_step"] <= result["max"]
    # the same architecture does the same arithmetic as the reference step
    assert result["flops_per_step"] == pytest.approx(result["reference_flops_per_step"], rel=1e-3)  # it prints 4 digits
    assert result["rss_ratio_to_reference"] > 0 and result["reference_seconds_per_step"] > 0


def test_validation_benchmark_states_a_validation_in_training_steps():
    result = run_script("validation.py", "--size", "32", "--ngf", "4", "--batch", "2", "--images", "4", "--steps", "1",
                        "--rounds", "1", "--extractors", "random_conv", "--threads", "1", "--device", "cpu")
    run = result["random_conv"]
    assert run["features"] == 358 and run["validation_seconds"] > 0 and run["reference_seconds"] > 0
    assert run["validation_in_steps"] == pytest.approx(run["validation_seconds"] / result["train_step_seconds"])
