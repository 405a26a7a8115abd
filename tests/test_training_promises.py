"""What the documentation promises about training when things go wrong, held to the letter: NaN losses,
Ctrl-C twice during a checkpoint write, a full disk before the first checkpoint, runs that never wrote
one, validation on side-by-side pairs, and what `img2img validate` reports before any training.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import flat, user_error
from PIL import Image
from typer.testing import CliRunner

import img2img
from img2img.cli import app
from img2img.errors import Img2ImgError

runner = CliRunner()
QUIET = ["--set", "train.sample_every=1000"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def nan_losses(plugin_manager):
    """`nan_l1` (NaN from the given cyclegan step on) and `nan_gan` (an adversarial loss whose D and G
    terms are both NaN, so every step skips two updates)."""
    from torch import nn

    class NanL1(nn.Module):
        def __init__(self, after: int):
            super().__init__()
            self.after, self.calls = after, 0

        def forward(self, prediction, target):
            self.calls += 1  # twice per cyclegan step
            loss = (prediction - target).abs().mean()
            return loss * float("nan") if self.calls > 2 * self.after else loss

    class NanGan(img2img.AdversarialLoss):
        def d_loss(self, real_logits, fake_logits):
            return (real_logits.mean() + fake_logits.mean()) * float("nan")

        def g_loss(self, fake_logits):
            return fake_logits.mean() * float("nan")

    class Plugin:
        @img2img.hookimpl
        def register_losses(self, register):
            def nan_l1(*, after: int = 0) -> nn.Module:
                """L1 that becomes NaN after `after` steps."""
                return NanL1(after)

            def nan_gan() -> nn.Module:
                """An adversarial loss that is always NaN."""
                return NanGan()

            register("nan_l1", nan_l1)
            register("nan_gan", nan_gan)

    plugin_manager.register(Plugin(), name="nan-losses")


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- NaN ------------------------------------------------------------------------------------------

def test_nan_before_the_first_checkpoint_says_there_is_nothing_to_continue(tiny_cyclegan, tmp_path, nan_losses):
    run = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "losses.cycle.name=nan_l1",
                    "--set", "train.checkpoint_every=100", *QUIET)
    out = user_error(result, "a loss became NaN or inf at step 1, before the first checkpoint, so there is nothing "
                             "to continue", "start again with --overwrite")
    assert "is kept" not in out and "--resume" not in out
    assert not (run / "checkpoints" / "last.pt").exists()
    again = invoke("train", tiny_cyclegan, "--out", run, "--overwrite", "--set", "train.max_steps=1", *QUIET)
    assert again.exit_code == 0, again.output  # what the message said works


def test_skipped_steps_are_counted_per_step_and_metrics_stay_json(tiny_cyclegan, tmp_path, nan_losses):
    run = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "losses.adversarial.name=nan_gan",
                    "--set", "train.on_nan=skip", "--set", "train.max_steps=3", *QUIET)
    assert result.exit_code == 0, result.output
    text = (run / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    logged = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
              for line in text.splitlines()]
    assert [r["skipped_steps"] for r in logged] == [1, 2, 3]  # D and G both skipped: still one step each
    assert logged[-1]["d_a"] is None and logged[-1]["g_ab"] is None  # NaN written as null
    assert isinstance(logged[-1]["cycle_a"], float)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["skipped_steps"] == 3


# -- a run without a checkpoint ------------------------------------------------------------------

def test_a_run_stopped_before_its_first_checkpoint_suggests_overwrite(tiny_cyclegan, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "pipeline.yaml").write_text("task: cyclegan\n")  # what a run killed during its first steps leaves
    (run / "metrics.jsonl").write_text("")
    out = user_error(invoke("train", tiny_cyclegan, "--out", run, "--set", "train.max_steps=1", *QUIET),
                     f"{run} already holds a run; it stopped before its first checkpoint, so start it over with "
                     "--overwrite")
    assert "continue it with --resume" not in out
    user_error(invoke("train", "--resume", run), "stopped before its first checkpoint", "--overwrite")
    assert invoke("train", tiny_cyclegan, "--out", run, "--overwrite", "--set", "train.max_steps=1",
                  *QUIET).exit_code == 0


def test_disk_full_on_the_first_checkpoint_suggests_overwrite(tiny_cyclegan, tmp_path, monkeypatch):
    from img2img import atomic

    real_open = open

    def full(file, mode="r", *args, **kwargs):
        if mode == "wb" and ".pt." in Path(file).name:  # the temporary file of a checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", full, raising=False)
    run = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "train.max_steps=1", *QUIET)
    monkeypatch.undo()
    out = user_error(result, f"disk full while writing {run / 'checkpoints' / 'last.pt'}; no earlier last.pt existed",
                     "then start again with --overwrite")
    assert "--resume" not in out.replace("nothing to --resume", "") and "run the command again" not in out
    assert invoke("train", tiny_cyclegan, "--out", run, "--overwrite", "--set", "train.max_steps=1",
                  *QUIET).exit_code == 0


def test_disk_full_on_a_later_checkpoint_suggests_resume(tiny_cyclegan, tmp_path, monkeypatch):
    from img2img import atomic

    real_open = open
    count = {"n": 0}

    def filling(file, mode="r", *args, **kwargs):
        if mode == "wb" and ".pt." in Path(file).name:
            count["n"] += 1
            if count["n"] > 1:  # last.pt of step 1 fits; its step-1.pt copy does not
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", filling, raising=False)
    run = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "train.checkpoint_every=1", *QUIET)
    monkeypatch.undo()
    user_error(result, f"disk full while writing {run / 'checkpoints' / 'step-1.pt'}",
               f"then continue with --resume {run}")
    assert invoke("train", "--resume", run).exit_code == 0


# -- Ctrl-C twice while a checkpoint is written ---------------------------------------------------

SLOW_WRITER = '''
import sys, time
from img2img.engine import checkpoint

real = checkpoint._RecordingWriter.write


def slow(self, data):  # a slow disk: every write of torch.save takes a moment
    time.sleep(0.002)
    return real(self, data)


checkpoint._RecordingWriter.write = slow
from img2img.cli import main

sys.argv = ["img2img", *sys.argv[1:]]
main()
'''


def test_second_ctrl_c_during_a_checkpoint_write_ends_cleanly(tiny_cyclegan, tmp_path):
    """SIGINT to the process group, then again 0.3 s later while the checkpoint file is still being
    written: the write completes, the run exits 130 with its message, and last.pt loads."""
    from img2img.engine.checkpoint import load_checkpoint

    script = tmp_path / "slow_disk.py"
    script.write_text(SLOW_WRITER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for attempt in range(3):
        run = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, str(script), "train", str(tiny_cyclegan), "--out", str(run),
                                 "--set", "train.max_steps=10000", "--set", "train.checkpoint_every=1",
                                 "--set", "train.sample_every=10000", "--set", "train.log_every=1"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        folder = run / "checkpoints"
        deadline = time.monotonic() + 120
        while not (folder.is_dir() and list(folder.glob(".*.tmp"))):  # a checkpoint write has begun
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                pytest.fail(f"no checkpoint write seen ({proc.returncode}):\n{out}\n{err}")
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
        still_writing = bool(list(folder.glob(".*.tmp")))
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert still_writing, "the second Ctrl-C came after the write; make the writer slower"
        assert "Traceback" not in out + err, err
        assert proc.returncode == 130, err
        assert "SIGINT: stopped after step" in flat(err) and f"--resume {run}" in flat(err)
        assert not list(folder.glob(".*.tmp"))
        state = load_checkpoint(run)
        assert state["step"] >= 1


# -- validation on side-by-side pairs, and what validate reports ----------------------------------

def write_pairs(folder: Path, count: int, size: int = 32, seed: int = 0) -> None:
    """Side-by-side AB images: the right half is the inverted left half."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        left = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(np.concatenate([left, 255 - left], axis=1)).save(folder / f"{i:03d}.png")


def test_val_pairs_validate_a_paired_run(tiny_pix2pix, tmp_path):
    pairs = tmp_path / "valAB"
    write_pairs(pairs, 3)
    run = tmp_path / "run"
    result = invoke("train", tiny_pix2pix, "--out", run, "--set", f"data.val.pairs={pairs}",
                    "--set", "train.val_every=2", "--set", "train.val_metric=psnr", *QUIET)
    assert result.exit_code == 0, result.output
    assert "validation: psnr of 3 data.val.pairs images, every 2 steps" in flat(result.output)
    val_rows = [r for r in rows(run) if "val_psnr" in r]
    assert [r["step"] for r in val_rows] == [2, 4] and {"val_l1", "val_ssim"} <= set(val_rows[0])
    assert (run / "checkpoints" / "best.pt").is_file()
    from img2img.config import load_pipeline
    from img2img.engine.validation import load_val_images

    p = load_pipeline(tiny_pix2pix, [f"data.val.pairs={pairs}"])
    images = load_val_images(p, paired=True)
    assert images.paired and len(images.a) == 3
    assert torch.allclose(images.b[0], -images.a[0], atol=1e-6)  # input left half, target right half
    swapped = load_val_images(load_pipeline(tiny_pix2pix, [f"data.val.pairs={pairs}", "data.direction=b2a"]), True)
    assert torch.equal(swapped.a[0], images.b[0]) and torch.equal(swapped.b[0], images.a[0])


def test_val_pairs_take_no_a_or_b(tiny_pix2pix, tmp_path):
    user_error(invoke("validate", tiny_pix2pix, "--set", f"data.val.pairs={tmp_path}",
                      "--set", f"data.val.a={tmp_path}"),
               "data.val (--set): data.val.pairs holds both halves of each image; give it alone")
    user_error(invoke("validate", tiny_pix2pix, "--set", "data.val={}"),
               "give data.val.a (and data.val.b), or data.val.pairs")


@pytest.mark.parametrize("key", ["val_every=5", "val_metric=cycle_l1", "val_extractor=random_conv"])
def test_validation_settings_without_data_val_are_reported(tiny_cyclegan, key):
    name = key.partition("=")[0]
    user_error(invoke("validate", tiny_cyclegan, "--set", f"train.{key}"),
               f"train.{name} (--set): set, but there is no data.val to validate on", f"or remove train.{name}")


def test_data_synthesize_is_checked_by_validate(tiny_cyclegan, tiny_pix2pix, tmp_path):
    root = tmp_path / "demo"
    good = ["--set", f"data.a={root / 'trainA'}", "--set", f"data.b={root / 'trainB'}"]
    assert invoke("validate", tiny_cyclegan, "--set", "data.synthesize=shapes", *good).exit_code == 0
    user_error(invoke("validate", tiny_cyclegan, "--set", "data.synthesize=shapez", *good),
               "data.synthesize (--set): unknown synthetic dataset 'shapez' (did you mean 'shapes'?); available: shapes "
               "(unpaired), outlines (paired), shapes3 (unpaired)")
    user_error(invoke("validate", tiny_pix2pix, "--set", "data.synthesize=shapes", *good),
               "data.synthesize (--set): 'shapes' is unpaired data, but the pix2pix task trains on paired data; use "
               "outlines")
    own = invoke("validate", tiny_cyclegan, "--set", "data.synthesize=shapes")  # the user's folders A and B win
    assert own.exit_code == 0 and "data.synthesize: shapes is not used: data.a and data.b" in " ".join(own.output.split())
    user_error(invoke("validate", tiny_cyclegan, "--set", "data.synthesize=shapes", "--set", f"data.a={root / 'trainA'}",
                      "--set", f"data.b={tmp_path / 'other' / 'trainB'}"),
               f"data.b (--set): data.synthesize writes the 'shapes' dataset as {root}/trainA, trainB, testA and testB",
               "or --set data.synthesize=null")
    run = tmp_path / "run"
    user_error(invoke("train", tiny_pix2pix, "--out", run, "--set", "data.synthesize=shapes", *good),
               "'shapes' is unpaired data")
    assert not root.exists()  # nothing synthesised for a pipeline that could not use it


def test_synthesize_problems_without_the_cli():
    from types import SimpleNamespace

    from img2img.datasets.synth_checks import synthesize_problems

    data = SimpleNamespace(synthesize="outlines", pairs=Path("x/train"), a=None, b=None)
    assert synthesize_problems(data, "paired", "pix2pix") == [
        ("data.synthesize", "'outlines' is written as trainA/trainB folders, not side-by-side pairs; use data.a and "
                            "data.b instead of data.pairs")]
    with pytest.raises(Img2ImgError):
        from img2img.datasets.synth import synthesize

        synthesize("nothing", Path("unused"))
