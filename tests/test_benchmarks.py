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
SHARED_REFERENCE = REPO.parent / "shared/bench/reference_step.py"  # beside a project checkout only


def run_script(name: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{name} printed nothing on stdout; stderr: {proc.stderr[-2000:]}"
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result


def test_translate_benchmark_reports_every_backend_and_precision_against_torch_fp32():
    pytest.importorskip("openvino")
    result = run_script("translate.py", "--images", "3", "--size", "32", "--ngf", "8", "--rounds", "1",
                        "--forward-runs", "2")
    model = result["custom"]
    paths = model["paths"]
    for name in ("torch_fp32", "onnxruntime_fp32", "onnxruntime_int8", "openvino_fp32", "openvino_int8"):
        row = paths[name]
        assert row["images_per_s"] > 0 and row["mean_diff"] >= 0 and row["max_diff"] >= row["mean_diff"], name
        assert row["ratio"] == pytest.approx(row["images_per_s"] / paths["torch_fp32"]["images_per_s"], rel=0.01)
    assert paths["torch_fp32"]["max_diff"] == 0 and paths["torch_fp32"]["ratio"] == 1
    assert paths["openvino_fp32"]["agrees"] and "openvino" in paths["openvino_fp32"]["runs_on"]
    assert "int8" in paths["openvino_int8"]["runs_on"] and "int8" in paths["onnxruntime_int8"]["runs_on"]
    fastest = model["fastest_agreeing"]
    assert paths[fastest["path"]]["agrees"] and fastest["ratio"] == paths[fastest["path"]]["ratio"]
    forward = model["forward"]
    assert forward["runs"] == 2 and forward["torch_seconds"] > 0 and forward["onnx_seconds"] > 0
    assert (model["images"], model["size"], model["ngf"]) == (3, 32, 8) and result["cpu"]


def test_translate_benchmark_compares_one_and_two_processes():
    result = run_script("translate_nproc.py", "--nproc", "2", "--images", "4", "--size", "32", "--ngf", "8",
                        "--rounds", "1", "--device", "cpu")
    one, two = result["processes"]["1"], result["processes"]["2"]
    assert one["images_per_s"] > 0 and two["images_per_s"] > 0 and two["wall_s"] > 0
    assert result["speedup"] == pytest.approx(two["images_per_s"] / one["images_per_s"], rel=0.01)
    assert result["identical_outputs"] is True


def test_dataloader_benchmark_counts_images_per_second():
    result = run_script("dataloader.py", "--images", "4", "--image-size", "300", "--batches", "6", "--warmup", "1",
                        "--no-step")
    assert result["images_per_s"] > 0


@pytest.mark.parametrize("task", ["pix2pix", "cyclegan"])
def test_train_step_benchmark_compares_with_the_built_in_reference_step(task):
    """A plain clone has everything: the reference step of the published recipe is in benchmarks/."""
    result = run_script("train_step.py", "--task", task, "--size", "32", "--steps", "1", "--threads", "1",
                        "--vs-reference")
    for key in ("seconds_per_step", "min", "max", "images_per_s", "peak_rss_mb", "flops_per_step",
                "ratio_to_reference"):
        assert result[key] > 0, key
    assert result["min"] <= result["seconds_per_step"] <= result["max"]
    assert result["reference"] == "builtin"
    # the same architecture does the same arithmetic as the reference step, to the FLOP
    assert result["flops_per_step"] == result["reference_flops_per_step"]
    assert result["rss_ratio_to_reference"] > 0 and result["reference_seconds_per_step"] > 0
    if task == "pix2pix":
        assert result["pix2pix_recipe"] == "unet"  # the published U-Net recipe


def test_reference_step_prints_one_json_object():
    result = run_script("reference_step.py", "--model", "pix2pix", "--size", "64", "--steps", "1", "--flops")
    assert result["model"] == "pix2pix" and result["size"] == 64 and result["seconds_per_step"] > 0
    assert result["flops_per_step"] > 0
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import reference_step
    finally:
        sys.path.pop(0)
    from img2img.default_plugins import patchgan, unet

    def count(net):
        return sum(p.numel() for p in net.parameters())

    assert count(reference_step.unet_generator()) == count(unet.unet_256(3, 3))
    assert count(reference_step.patch_discriminator(cin=6, batch_norm=True)) == count(
        patchgan.patchgan(6, norm="batch"))


@pytest.mark.skipif(not SHARED_REFERENCE.is_file(), reason="shared/bench/reference_step.py is not beside the checkout")
def test_train_step_benchmark_cross_checks_the_shared_reference():
    result = run_script("train_step.py", "--task", "pix2pix", "--size", "32", "--steps", "1", "--threads", "1",
                        "--vs-reference", "--reference", "shared")
    assert result["reference"] == "shared" and result["pix2pix_recipe"] == "resnet"
    assert result["flops_per_step"] == pytest.approx(result["reference_flops_per_step"], rel=1e-3)  # it prints 4 digits


def test_train_step_benchmark_without_the_shared_reference_says_so(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--task", "pix2pix",
                           "--vs-reference", "--reference", str(tmp_path / "missing.py")], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode != 0 and "does not exist; use builtin, shared" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tiling_benchmark_ends_with_one_json_line():
    result = run_script("tiling.py", "--size", "64", "--tile", "48", "--overlap", "8", "--small-tile", "32",
                        "--small-overlap", "8", "--train-steps", "1", "--no-memory", "--images", "white_noise,scene")
    for model in ("random_resnet_9blocks_ngf16", "trained_resnet_6blocks_ngf8"):
        for image in ("white_noise", "scene"):
            found = result[model][image]["tile48_overlap8"]
            assert {"local", "global", "auto"} <= set(found) and found["auto_chose"] in ("local", "global")
            assert found[found["auto_chose"]]["mean"] == found["auto"]["mean"]  # auto is the mode it chose


def test_validation_benchmark_states_a_validation_in_training_steps():
    result = run_script("validation.py", "--size", "32", "--ngf", "4", "--batch", "2", "--images", "4", "--steps", "1",
                        "--rounds", "1", "--extractors", "random_conv", "--threads", "1", "--device", "cpu")
    run = result["random_conv"]
    assert run["features"] == 358 and run["validation_seconds"] > 0 and run["reference_seconds"] > 0
    assert run["validation_in_steps"] == pytest.approx(run["validation_seconds"] / result["train_step_seconds"])


def test_peak_benchmark_reports_rates():
    result = run_script("peak.py", "--size", "256", "--repeats", "1")
    for key in ("matmul_fp32_gflops", "matmul_bf16_gflops", "conv3x3_fp32_gflops", "conv3x3_bf16_gflops"):
        assert result[key] > 0, key
    assert result["device"] in ("cpu", "cuda") and result["threads"] >= 1


def test_cli_startup_benchmark_reports_time_and_memory_before_and_after():
    found = run_script("cli_startup.py", "--rounds", "1", "--before", "HEAD")
    for key in ("help", "version", "pipelines", "import_torch", "help_before"):
        assert found[f"{key}_s"] > 0 and found[f"{key}_peak_rss_mib"] > 0 and f"{key}_cpu_s" in found
    assert {"help_over_import_torch", "help_now_over_before", "help_rss_now_over_before"} <= set(found)
