"""The mistakes a newcomer makes while following README.md and docs/*.md literally: each is refused with
one message that names the file or key and says what to do (exit 1, no traceback), and nothing the user
already had is touched.

Everything runs in-process through typer's CliRunner, on tiny runs and images the tests make.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch
from cli_support import user_error
from reference_networks import ResnetGenerator, randomise
from typer.testing import CliRunner

from img2img.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- export (README "Deploy", docs/deploy.md): an export never replaces the model it reads ---------------

def test_export_into_the_runs_checkpoints_is_refused_and_the_checkpoint_kept(translate_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(translate_run, run)
    before = digest(run / "checkpoints" / "last.pt")
    user_error(invoke("export", run, "--out", run / "checkpoints" / "last.pt"),
               "is inside the checkpoints folder of the run being exported", "generator.onnx")
    user_error(invoke("export", run / "checkpoints" / "last.pt", "--out", run / "checkpoints" / "g.onnx"),
               "checkpoints folder")
    assert digest(run / "checkpoints" / "last.pt") == before
    assert not (run / "checkpoints" / "g.onnx").exists()
    # beside the checkpoints (the run folder itself) is fine
    assert invoke("export", run, "--out", run / "g.onnx", "--no-check").exit_code == 0


def test_export_named_like_a_checkpoint_is_refused(translate_run, tmp_path):
    for name in ("g.pt", "g.pth"):
        user_error(invoke("export", translate_run, "--out", tmp_path / name), "the name of a checkpoint",
                   str(tmp_path / "g.onnx"))
        assert not (tmp_path / name).exists()


def test_export_onto_its_own_safetensors_file_is_refused(translate_run, tmp_path):
    source = tmp_path / "g.safetensors"
    assert invoke("export", translate_run, "--out", source, "--format", "safetensors").exit_code == 0
    before = digest(source)
    user_error(invoke("export", source, "--out", source, "--format", "safetensors"), "is the model being exported")
    assert digest(source) == before


# -- train (never write into an input folder) ---------------------------------------------------------

def test_train_refuses_a_run_folder_inside_a_data_folder(tiny_cyclegan):
    data_a = tiny_cyclegan.parent / "A"
    before = listing(data_a)
    user_error(invoke("train", tiny_cyclegan, "--out", data_a / "run"), "is inside data.a", str(data_a),
               "never writes into an input folder", "Choose an --out outside it")
    assert listing(data_a) == before


def test_train_refuses_a_run_folder_inside_a_validation_folder(tiny_cyclegan, tmp_path):
    from img2img.testing import write_images

    val = write_images(tmp_path / "val", 2, 40)[0].parent
    user_error(invoke("train", tiny_cyclegan, "--set", f"data.val.a={val}", "--out", val / "sub" / "run"),
               "is inside data.val.a")
    assert not (val / "sub").exists()


# -- import (docs/import.md: "--resume refuses the run (there is no optimiser state)") ---------------------

def test_resuming_an_imported_run_says_it_has_no_optimiser_state(tmp_path):
    weights = tmp_path / "latest_net_G_A.pth"
    torch.save(randomise(ResnetGenerator(3, 3, 4, "instance", False, 6), seed=0).state_dict(), weights)
    run = tmp_path / "imported"
    assert invoke("import", "reference", weights, "--out", run).exit_code == 0
    before = listing(run)
    out = user_error(invoke("train", "--resume", run), "holds translators only", "no optimiser state",
                     "img2img import reference")
    assert "does not exist" not in out  # not the placeholder data folders of the imported pipeline
    assert listing(run) == before


# -- serve (docs/serve.md: "--device, --precision ... as for img2img translate") ------------------------

def test_serve_takes_the_precision_names_translate_takes(tmp_path):
    # the models load before the server listens, so a missing model stops it: the flag itself was accepted
    for name in ("auto", "bf16-mixed", "fp16"):
        user_error(invoke("serve", tmp_path / "missing", "--precision", name), "no such run folder or file")


def test_serve_names_a_precision_it_does_not_know(translate_run):
    user_error(invoke("serve", translate_run, "--precision", "fp8", "--device", "cpu"),
               "--precision 'fp8'", "auto")


# -- what a failed command leaves behind ---------------------------------------------------------------

def test_train_that_stops_on_a_missing_data_folder_leaves_no_empty_run_folder(tiny_cyclegan, tmp_path):
    run = tmp_path / "runs" / "x"
    user_error(invoke("train", tiny_cyclegan, "--set", f"data.a={tmp_path / 'nope'}", "--out", run),
               "data.a: the folder", "does not exist")
    assert not run.exists()
    (run / "keep").mkdir(parents=True)  # a folder that was there before is never removed
    (run / "keep").rmdir()
    user_error(invoke("train", tiny_cyclegan, "--set", f"data.a={tmp_path / 'nope'}", "--out", run), "does not exist")
    assert run.is_dir()


def test_a_failed_download_leaves_no_empty_folder(tmp_path):
    import pytest

    from img2img.datasets import synth
    from img2img.errors import Img2ImgError

    out = tmp_path / "data"
    with pytest.raises(Img2ImgError):
        synth.download("horse2zebra", out, url=(tmp_path / "gone.zip").as_uri(), progress=False)
    assert not out.exists()


# -- README: "`img2img validate PIPELINE --show` prints the resolved pipeline ...; the run folder keeps that
#    as `pipeline.yaml`" -----------------------------------------------------------------------------------

def test_validate_show_is_what_the_run_folder_keeps(tiny_cyclegan, tmp_path):
    import yaml

    sets = ["--set", f"data.val.a={tmp_path / 'A'}", "--set", "train.max_steps=1"]
    shown = invoke("validate", tiny_cyclegan, *sets, "--show")
    assert shown.exit_code == 0, shown.output
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["train"]["val_metric"] == "cycle_l1"  # the task's default, filled in as training does
    trained = invoke("train", tiny_cyclegan, *sets, "--out", tmp_path / "run")
    assert trained.exit_code == 0, trained.output
    assert yaml.safe_load((tmp_path / "run" / "pipeline.yaml").read_text()) == resolved


# -- docs/troubleshooting.md, exit codes: a value outside an option's range is bad usage (2); a name checked
#    when the command runs is a problem reported with the values that work (1) ------------------------------

def test_out_of_range_values_are_usage_errors_and_unknown_names_list_the_choices(translate_run, tmp_path):
    from img2img.testing import write_images

    src = write_images(tmp_path / "in", 1, 32)[0].parent
    for flag, value in (("--resize", "0"), ("--max-pixels", "0"), ("--batch-size", "0")):
        result = invoke("translate", src, "--model", translate_run, "--out", tmp_path / "out", flag, value)
        assert result.exit_code == 2 and flag in result.output, result.output
    for flag, value, choices in (("--device", "tpu", "cpu"), ("--precision", "fp8", "bf16"),
                                 ("--tile-norm", "foo", "global")):
        user_error(invoke("translate", src, "--model", translate_run, "--out", tmp_path / "out", flag, value),
                   f"{flag} '{value}'", choices)
    assert not (tmp_path / "out").exists()


# -- evaluate (docs/evaluation.md `--csv FILE`): never written into the folders it scores -------------------

def test_evaluate_csv_inside_a_scored_folder_is_refused(tmp_path):
    from img2img.testing import write_images

    pred = write_images(tmp_path / "pred", 2, 24, seed=1)[0].parent
    target = write_images(tmp_path / "target", 2, 24, seed=2)[0].parent
    before = listing(pred), listing(target)
    user_error(invoke("evaluate", pred, target, "--csv", pred / "scores.csv"), "inside the prediction folder",
               "never writes into an input folder")
    user_error(invoke("evaluate", pred, target, "--csv", target / "x" / "scores.csv"), "inside the target folder")
    assert (listing(pred), listing(target)) == before
    assert invoke("evaluate", pred, target, "--csv", tmp_path / "scores.csv").exit_code == 0
    assert (tmp_path / "scores.csv").is_file()
