"""What the documentation promises about messages and the command line, held to the letter: each test
is a place where a user following README.md, docs/*.md or the plugin READMEs was misled before.

Everything runs in-process through typer's CliRunner, on tiny runs and images the tests make.
"""
from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_support import flat, user_error
from PIL import Image
from typer.testing import CliRunner

from img2img.cli import app
from img2img.errors import Img2ImgError
from img2img.testing import write_images

runner = CliRunner()


def invoke(*args, env: dict | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


# -- disk full while translating (troubleshooting.md: "disk full ... exit code 1") ------------------

def test_disk_full_while_translating_stops_with_exit_1(translate_run, tmp_path, monkeypatch):
    from img2img.inference import files

    src = tmp_path / "photos"
    write_images(src, 6, 32)
    real = files.save_image
    calls = {"n": 0}

    def filling(path, arr, **kw):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, arr, **kw)

    monkeypatch.setattr(files, "save_image", filling)
    out = tmp_path / "out"
    result = invoke("translate", src, "--model", translate_run, "--out", out)
    user_error(result, "disk full while writing", "translation stopped after 2 images",
               "run the command again: outputs already in", "are skipped")
    assert "not translated" not in result.output  # not listed as six bad input files
    monkeypatch.undo()
    again = invoke("translate", src, "--model", translate_run, "--out", out)
    assert again.exit_code == 0, again.output
    assert "skipped 2 existing output(s)" in flat(again.output) and len(list(out.iterdir())) == 6


def test_a_real_full_disk_while_translating(translate_run, tmp_path):
    """A 64 KiB tmpfs as the output folder: the kernel's own ENOSPC, files complete or absent."""
    out = tmp_path / "small"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        src = tmp_path / "photos"
        write_images(src, 12, 96, seed=5)  # ~28 KB each as PNG: the third does not fit
        result = invoke("translate", src, "--model", translate_run, "--out", out / "t")
        user_error(result, "disk full while writing", "translation stopped after")
        written = sorted((out / "t").iterdir())
        assert 0 < len(written) < 12
        for path in written:  # every file there is a whole image, no temporary leftovers
            assert not path.name.startswith(".")
            Image.open(path).load()
    finally:
        subprocess.run(["umount", str(out)], check=False)


# -- exit codes and usage (troubleshooting.md: "2: wrong command-line usage") ------------------------

@pytest.mark.parametrize("args", [["train"], ["evaluate"], ["evaluate", "only-one-folder"]])
def test_missing_arguments_are_usage_errors(args):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Missing argument" in result.output and "Traceback" not in result.output


def test_evaluate_channels_other_than_1_3_4_is_a_usage_error(tmp_path):
    write_images(tmp_path / "p", 2, 16)
    write_images(tmp_path / "t", 2, 16)
    result = invoke("evaluate", tmp_path / "p", tmp_path / "t", "--channels", "2")
    assert result.exit_code == 2, result.output
    assert "--channels" in result.output and "2 is not 1 (grey), 3 (RGB) or 4 (RGBA)" in flat(result.output)
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)
    from img2img.evaluation.metrics import evaluate_folders

    with pytest.raises(Img2ImgError, match="channels 2: compare 1"):
        evaluate_folders(tmp_path / "p", tmp_path / "t", channels=2)


def test_flags_show_no_value_in_help():
    """`--overwrite <bool>` read as if `--overwrite true` worked; a flag takes no value."""
    result = invoke("train", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if "--overwrite" in x)
    assert "<bool>" not in line and "Replace an existing run folder" in line
    assert "<path>" in next(x for x in result.output.splitlines() if x.lstrip("│ ").startswith("--resume"))


# -- messages -----------------------------------------------------------------------------------

def test_unknown_component_kind_lists_the_kinds_and_no_command_that_fails():
    out = user_error(invoke("components", "generatr"), "unknown kind 'generatr'", "did you mean 'generator'?",
                     "the kinds are generator, discriminator, loss, task, feature_extractor")
    assert "img2img components kind" not in out
    assert invoke("components", "generator").exit_code == 0


def test_components_shows_constraints(monkeypatch):
    from img2img.cli.base import console

    monkeypatch.setattr(console, "width", 250)  # one line per component, whatever ran before in this process
    result = invoke("components", "generator")
    assert result.exit_code == 0
    assert "ngf: int = 64 (>= 1, <= 1024)" in flat(result.output)
    from img2img.registry import get_registry

    ngf = next(p for p in get_registry().get("generator", "resnet_9blocks").describe()["parameters"]
               if p["name"] == "ngf")
    assert ngf["constraints"] == [">= 1", "<= 1024"]


def test_set_problems_are_marked_set_not_a_wrong_line(tiny_cyclegan):
    result = invoke("validate", tiny_cyclegan, "--set", "train.batch_size=two", "--set", "train.ema=true",
                    "--set", "model.generator.ngf=0", "--set", "train.epoch=3")
    out = user_error(result, "train.batch_size (--set):", "train.ema (--set):", "model.generator.ngf (--set):",
                     "train.epoch (--set): unknown key; did you mean 'epochs'?")
    assert "(line" not in out
    bad_file = tiny_cyclegan.read_text().replace("max_steps: 4", "max_steps: 0")
    tiny_cyclegan.write_text(bad_file)
    line = bad_file.splitlines().index("  max_steps: 0") + 1
    user_error(invoke("validate", tiny_cyclegan, "--set", "train.lr=-1"),
               f"train.max_steps (line {line}):", "train.lr (--set):")


def test_ema_true_says_it_takes_a_decay(tiny_cyclegan):
    out = user_error(invoke("validate", tiny_cyclegan, "--set", "train.ema=true"),
                     "train.ema (--set): give the decay of the moving average, a number between 0 and 1 such as "
                     "0.999")
    assert "less than 1" not in out and "Value error" not in out
    shown = invoke("validate", tiny_cyclegan, "--set", "train.ema=false", "--show")
    assert shown.exit_code == 0 and yaml.safe_load(shown.stdout)["train"]["ema"] is None


def test_translate_accepts_a_path(translate_run, tmp_path):
    from img2img import Translator

    (path,) = write_images(tmp_path / "in", 1, 24)
    t = Translator.from_run(translate_run, "a2b", device="cpu")
    from_path = t.translate(path)
    from_pil = t.translate(Image.open(path))
    assert isinstance(from_path, Image.Image) and from_path.size == (24, 24)
    assert np.array_equal(np.asarray(from_path), np.asarray(from_pil))
    assert np.array_equal(np.asarray(t.translate(str(path))), np.asarray(from_pil))
    with pytest.raises(Img2ImgError, match="no such image file: .*missing.png"):
        t.translate(tmp_path / "missing.png")


def test_a_bad_pixel_limit_is_reported_once(translate_run, tmp_path):
    src = tmp_path / "photos"
    write_images(src, 4, 24)
    result = invoke("translate", src, "--model", translate_run, "--out", tmp_path / "out",
                    env={"IMG2IMG_MAX_IMAGE_PIXELS": "abc"})
    out = user_error(result, "IMG2IMG_MAX_IMAGE_PIXELS='abc' is not a number")
    assert out.count("is not a number") == 1 and not (tmp_path / "out").exists()


def test_var_keyword_parameter_message_has_two_stars():
    from img2img.registry import ParamsProblem, params_model

    with pytest.raises(ParamsProblem, match=r"'l': \*\*kwargs is not allowed"):
        params_model("loss", "l", lambda **kwargs: None)
    with pytest.raises(ParamsProblem, match=r"'l': \*args is not allowed"):
        params_model("loss", "l", lambda *args: None)


def test_weights_that_do_not_fit_name_the_keys(translate_run, tmp_path):
    from torch import nn

    from img2img.engine.checkpoint import _load_state

    ckpt = torch.load(translate_run / "checkpoints" / "last.pt", weights_only=True)
    net = ckpt["nets"]["g_ab"]
    first = next(iter(net))
    net[first] = torch.zeros(3, 3)
    damaged = tmp_path / "damaged.pt"
    torch.save(ckpt, damaged)
    out = user_error(invoke("export", damaged, "--out", tmp_path / "g.onnx"),
                     "its a2b translator weights do not fit", f"wrong shape: {first} ((3, 3) in the file")
    assert "Error(s) in loading state_dict" not in out
    module = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1))
    state = {"0.weight": torch.zeros(2, 1, 1, 1), "0.bias": torch.zeros(2), "9.weight": torch.zeros(1)}
    with pytest.raises(Img2ImgError, match=r"^it does not fit \(missing: 1.weight, 1.bias; unexpected: 9.weight\)$"):
        _load_state(module, state, "it does not fit")


def test_a_plain_torch_file_gives_the_documented_message(tmp_path):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, plain)
    out = user_error(invoke("export", plain, "--out", tmp_path / "g.onnx"),
                     f"{plain} is not an img2img checkpoint (a PyTorch file with no pipeline/nets inside; its entries "
                     "are conv.weight)", "img2img import reference|cut")
    documented = "is not an img2img checkpoint (a PyTorch file with no pipeline/nets inside"
    assert documented in doc and documented in out
    other = tmp_path / "other.pt"
    torch.save([1, 2], other)
    user_error(invoke("export", other, "--out", tmp_path / "g.onnx"), "not an img2img checkpoint", "it holds a list")


def test_newer_checkpoint_names_what_is_newer(translate_run, tmp_path):
    from img2img._version import __version__
    from img2img.engine.checkpoint import FORMAT, load_checkpoint

    ckpt = torch.load(translate_run / "checkpoints" / "last.pt", weights_only=True)
    newer_format = tmp_path / "format.pt"
    torch.save({**ckpt, "format": 99}, newer_format)
    with pytest.raises(Img2ImgError) as caught:
        load_checkpoint(newer_format)
    message = str(caught.value)
    assert f"uses checkpoint format 99, newer than the format {FORMAT} this img2img {__version__} reads" in message
    assert f"written by img2img {__version__} (format 99), newer than this img2img" not in message
    newer_version = tmp_path / "version.pt"
    torch.save({**ckpt, "img2img_version": "99.0.0"}, newer_version)
    with pytest.raises(Img2ImgError, match=rf"written by img2img 99\.0\.0, newer than this img2img {__version__}"):
        load_checkpoint(newer_version)


def test_validate_show_writes_pure_yaml_to_stdout(tiny_cyclegan):
    long_name = "n" + "x" * 120
    result = invoke("validate", tiny_cyclegan, "--show", "--set", f"name={long_name}")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert data["name"] == long_name and data["task"] == "cyclegan"
    assert "ok" not in result.stdout.split("\n")[-2:]
    assert result.stderr.lstrip().startswith("ok")


def test_validate_warns_about_data_train_would_not_find(tiny_cyclegan, tmp_path):
    """Valid but not trainable yet: `validate` says so (exit 0) with the key, the folder and what to do."""
    result = invoke("validate", tiny_cyclegan, "--set", f"data.b={tmp_path / 'nowhere'}",
                    "--set", f"data.test_a={tmp_path / 'elsewhere'}")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "data.b: the folder" in warnings[0] and "nowhere" in warnings[0]
    assert "`img2img train` needs it" in warnings[0]  # (data.test_a is read by `evaluate --data` only)
    clean = invoke("validate", tiny_cyclegan)
    assert clean.exit_code == 0 and "warning:" not in clean.output


def test_overlap_without_tile_is_refused(translate_run, tmp_path):
    write_images(tmp_path / "in", 1, 24)
    user_error(invoke("translate", tmp_path / "in", "--model", translate_run, "--out", tmp_path / "out",
                      "--overlap", "16"),
               "--overlap 16 applies to tiles only", "--tile 512 --overlap 16")
    ok = invoke("translate", tmp_path / "in", "--model", translate_run, "--out", tmp_path / "out2",
                "--max-pixels", "100", "--overlap", "8")
    assert ok.exit_code == 0, ok.output


def test_missing_public_dataset_suggests_the_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user_error(invoke("train", "horse2zebra", "--out", tmp_path / "run"),
               "data/horse2zebra/trainA' does not exist", "`img2img datasets download horse2zebra data` downloads it")
    user_error(invoke("train", "facades", "--out", tmp_path / "run2"),
               "`img2img datasets download facades data` downloads it")
    assert not (tmp_path / "run" / "pipeline.yaml").exists()  # a later train into it needs no --overwrite


def test_synth_into_a_non_empty_folder_refuses_or_replaces(tmp_path):
    out = tmp_path / "shapes"
    assert invoke("datasets", "synth", "shapes", out, "--count", "10").exit_code == 0
    user_error(invoke("datasets", "synth", "shapes", out, "--count", "4"),
               f"{out} already holds the synthetic dataset 'shapes' (10 training images per folder); add --overwrite")
    assert len(list((out / "trainA").iterdir())) == 10
    result = invoke("datasets", "synth", "outlines", out, "--count", "4", "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(list((out / "trainA").iterdir())) == 4  # no stale files from the larger set
    readme = (out / "README.txt").read_text()
    assert "synthetic dataset 'outlines'" in readme and "train: 4 images per folder" in readme
    unrelated = tmp_path / "photos"
    write_images(unrelated, 2, 16)
    for extra in ([], ["--overwrite"]):
        user_error(invoke("datasets", "synth", "shapes", unrelated, *extra),
                   "is not empty and holds more than an img2img synthetic dataset", "never deletes files")
    assert sorted(p.name for p in unrelated.iterdir()) == ["img000.png", "img001.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


@pytest.mark.parametrize("section", ["data", "train"])
def test_key_table_lists_every_key(section):
    """README's pipeline table names every key of the data and train sections (train.samples was missing)."""
    from img2img.config.schema import DataConfig, TrainConfig

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{section}` |"))
    listed = set(re.findall(r"`([a-z_]+)[`:]", row))
    fields = (DataConfig if section == "data" else TrainConfig).model_fields
    assert set(fields) <= listed, set(fields) - listed


def test_one_did_you_mean():
    """Every "did you mean" goes through img2img.errors.did_you_mean: no other module uses difflib."""
    root = Path(__file__).resolve().parents[1] / "img2img"
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "difflib" in p.read_text())
    assert users == ["errors.py"]
    from img2img.errors import did_you_mean

    assert did_you_mean("epoch", ["epochs", "lr"]) == "did you mean 'epochs'?"
    assert did_you_mean("resize", ["Resize", "Crop"]) == "did you mean 'Resize'?"
    assert did_you_mean("zzz", ["epochs"]) == ""
