"""When things go wrong: every bad input is a message, exit 1 and no traceback; signals, kill -9 and
a full disk never cost more than the step in progress; checkpoints never run code.

The catalogue goes through the command line in-process (typer's CliRunner); the signal and kill -9
tests run ``python -m img2img`` as real processes in their own session.
"""
from __future__ import annotations

import ast
import errno
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import img2img
from img2img.cli import app
from img2img.errors import Img2ImgError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "train.max_steps=1", "--set", "train.sample_every=100"]
STOPPABLE = ["--set", "train.checkpoint_every=1", "--set", "train.max_steps=6", "--set", "train.sample_every=100"]


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_user_error(result, *needles: str | Path) -> str:
    """Exit 1 through the user-error path (not an escaped exception), no traceback, every needle shown."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"escaped: {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    out = flat(result.output)
    for needle in needles:
        assert flat(str(needle)) in out, f"{needle!r} not in:\n{result.output}"
    return out


def rows(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def subprocess_env() -> dict[str, str]:
    """One thread per process: the machine may be shared with other test workers."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_images(folder: Path, count: int, size: int, prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count * size)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{prefix}{i:03d}.png")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no data: what a decompression bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


# -- data ----------------------------------------------------------------------------------------

def test_missing_folder(tiny_cyclegan, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", out, "--set", f"data.a={tmp_path / 'nowhere'}")
    assert_user_error(result, "data.a", tmp_path / "nowhere", "does not exist")
    assert not (out / "pipeline.yaml").exists() and not (out / "checkpoints").exists()


def test_empty_folder(tiny_cyclegan, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    result = invoke("train", tiny_cyclegan, "--out", tmp_path / "run", "--set", f"data.b={tmp_path / 'empty'}")
    assert_user_error(result, "data.b", tmp_path / "empty", "contains no images")


def test_unreadable_images_are_all_named_before_the_first_step(tiny_cyclegan, tmp_path):
    folder = tmp_path / "B"
    good = (folder / "img000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("a text file with an image extension")
    (folder / "garbage.webp").write_bytes(os.urandom(300))
    out = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", out)
    text = assert_user_error(result, "4 image file(s) cannot be read", "data.skip_unreadable: true")
    for name in ("truncated.png", "empty.png", "notes.jpg", "garbage.webp"):
        assert str(folder / name) in text
    assert "truncated" in text and "0 bytes" in text
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_skip_unreadable_trains_without_them_and_lists_them(tiny_cyclegan, tmp_path):
    (tmp_path / "A" / "zero.png").write_bytes(b"")
    (tmp_path / "A" / "fake.png").write_text("not a png")
    out = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", out, "--set", "data.skip_unreadable=true", *FAST)
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable file(s)" in flat(result.output)
    squashed = "".join(result.output.split())  # the listing may fold long paths across lines
    assert f"{tmp_path / 'A' / 'zero.png'}:fileisempty" in squashed
    assert f"{tmp_path / 'A' / 'fake.png'}:notanimage" in squashed
    assert rows(out) == [1]


def test_images_smaller_than_the_crop(tiny_cyclegan, tmp_path):
    write_images(tmp_path / "small", 3, 16)
    result = invoke("train", tiny_cyclegan, "--out", tmp_path / "run", "--set", f"data.b={tmp_path / 'small'}",
                    "--set", "data.transforms=[{RandomCrop: {height: 64, width: 64}}]")
    text = assert_user_error(result, "smaller than the 64x64", "data.transforms",
                             f"{tmp_path / 'small' / 'img000.png'}: 16x16")
    assert "Resize" in text  # says what to do


def test_decompression_bomb_is_refused_with_its_size(tiny_cyclegan, tmp_path, monkeypatch):
    monkeypatch.delenv("IMG2IMG_MAX_IMAGE_PIXELS", raising=False)
    (tmp_path / "A" / "bomb.png").write_bytes(png_header_only(20_000, 20_000))
    result = invoke("train", tiny_cyclegan, "--out", tmp_path / "run")
    assert_user_error(result, tmp_path / "A" / "bomb.png", "400000000 pixels", f"limit of {Image.MAX_IMAGE_PIXELS}",
                      "IMG2IMG_MAX_IMAGE_PIXELS")


def test_paired_folders_with_unmatched_names(tiny_pix2pix, tmp_path):
    write_images(tmp_path / "inA", 1, 40, prefix="lonely")
    result = invoke("train", tiny_pix2pix, "--out", tmp_path / "run")
    assert_user_error(result, "have no partner in data.b", tmp_path / "inA" / "lonely000.png")


def test_file_names_with_brackets_are_shown_verbatim(tiny_cyclegan, tmp_path):
    """Rich markup must not eat ``[edit]`` from a file name, nor crash on ``[/]``."""
    (tmp_path / "A" / "IMG_[edit].png").write_bytes(b"\x89PNG broken")
    result = invoke("train", tiny_cyclegan, "--out", tmp_path / "run")
    assert_user_error(result, tmp_path / "A" / "IMG_[edit].png")
    result = invoke("validate", tiny_cyclegan, "--set", "train.odd[/]key=1")
    assert_user_error(result, "train.odd[/]key", "unknown key")


# -- pipelines -----------------------------------------------------------------------------------

def test_yaml_syntax_error_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: cyclegan\ndata:\n  a: photos\n   b: broken indentation\n")
    assert_user_error(invoke("train", bad), "bad.yaml", "YAML syntax error at line 4, column 5")


def test_yaml_syntax_error_as_a_real_process(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: cyclegan\ntrain: {max_steps: 3\n")
    done = subprocess.run([sys.executable, "-m", "img2img", "train", str(bad)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert f"in {bad}" in done.stderr and "YAML syntax error at line 3" in done.stderr


def test_wrong_types_unknown_keys_and_unknown_components_are_reported_at_once(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("task: cyclegan\ndata:\n  a: A\n  b: B\nmodel:\n  generator: {name: resnet_7blocks}\n"
                    "train:\n  batch_size: two\n  max_stepz: 10\n  lr: [0.1]\n")
    text = assert_user_error(invoke("validate", path), "4 problems")
    assert "train.batch_size (line 8): Input should be a valid integer" in text and "(got 'two')" in text
    assert "train.max_stepz (line 9): unknown key; did you mean 'max_steps'?" in text
    assert "train.lr (line 10)" in text
    assert "model.generator.name (line 6): unknown generator 'resnet_7blocks'; did you mean" in text


@pytest.mark.parametrize("text, expected", [
    ("task: cyclegan\ndata: &loop {a: *loop}\n", "data.a (line 2): an anchor (&name) that contains itself"),
    ("task: cyclegan\ntrain:\n  lr: 0.1\n  lr: 0.2\n", "train.lr (line 4): key given twice (first on line 3)"),
    ("task: cyclegan\ndata: " + "[" * 400 + "]" * 400 + "\n", "nested deeper than 50 levels"),
    ("task: cyclegan\nname: a\x00b\n", "character #x0000 at line 2, column 8"),
    ("task: cyclegan\ndata: !!python/object/apply:os.getcwd []\n", "remove the tag"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\ntask: cyclegan\n",
     "e (line 5): expands to more than 100000 values"),
], ids=["self-anchor", "duplicate-key", "deep", "nul", "tag", "billion-laughs"])
def test_hostile_yaml_is_a_pipeline_error(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    started = time.perf_counter()
    assert_user_error(invoke("validate", path), expected)
    assert time.perf_counter() - started < 10


def test_hostile_set_values_are_pipeline_errors(tiny_cyclegan):
    result = invoke("validate", tiny_cyclegan, "--set", "data.transforms=&a [{OneOf: {transforms: *a}}]")
    assert_user_error(result, "data.transforms.0.OneOf.transforms: --set data.transforms=...: an anchor (&name) that "
                              "contains itself")
    result = invoke("validate", tiny_cyclegan, "--set", "model.generator.ngf=" + "[" * 600 + "]" * 600)
    assert_user_error(result, "model.generator.ngf: --set model.generator.ngf=...: YAML nested deeper than 50 levels")


# -- checkpoints ---------------------------------------------------------------------------------

class Payload:
    """Unpickling this with plain pickle creates `marker`: the shape of a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil_checkpoint(translate_run, tmp_path) -> tuple[Path, Path]:
    """A real checkpoint with one extra entry that would write a marker file when unpickled."""
    state = torch.load(translate_run / "checkpoints" / "last.pt", weights_only=True)
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    state["extra_info"] = Payload(marker)
    torch.save(state, evil)
    control = tmp_path / "control-marker"
    state["extra_info"] = Payload(control)
    torch.save(state, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # proof that the payload is live
    assert control.exists()
    return evil, marker


@pytest.mark.parametrize("command", ["export", "translate", "resume"])
def test_checkpoint_with_a_pickled_object_is_refused_and_never_runs(evil_checkpoint, tmp_path, command):
    evil, marker = evil_checkpoint
    src = tmp_path / "photos"
    write_images(src, 1, 24)
    args = {"export": ["export", evil, "--out", tmp_path / "g.onnx"],
            "translate": ["translate", src, "--model", evil, "--out", tmp_path / "out"],
            "resume": ["train", "--resume", evil]}[command]
    text = assert_user_error(invoke(*args), f"refused to load {evil}", "a pickled Python object (io.open)",
                             "nothing in the file was run")
    assert "weights_only` set to `False`" not in text  # torch's advice to unpickle anyway is not passed on
    assert not marker.exists()
    assert not (tmp_path / "g.onnx").exists() and not (tmp_path / "out").exists()


def test_checkpoint_from_a_newer_img2img(translate_run, tmp_path):
    state = torch.load(translate_run / "checkpoints" / "last.pt", weights_only=True)
    state["img2img_version"] = "99.1.0"
    torch.save(state, tmp_path / "future.pt")
    assert_user_error(invoke("export", tmp_path / "future.pt", "--out", tmp_path / "g.onnx"),
                      tmp_path / "future.pt", "written by img2img 99.1.0",
                      f"newer than this img2img {img2img.__version__}",
                      "pip install -U")


@pytest.mark.parametrize("damage", ["empty", "truncated", "text", "picture", "not-a-dict", "no-translators"])
def test_damaged_checkpoints_are_named(translate_run, tmp_path, damage):
    good = (translate_run / "checkpoints" / "last.pt").read_bytes()
    path = tmp_path / "model.pt"
    if damage == "empty":
        path.write_bytes(b"")
        expected = "is empty (0 bytes)"
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 3])
        expected = "is not a readable img2img checkpoint"
    elif damage == "text":
        path.write_text("epoch=3 loss=0.1\n")
        expected = "is not an img2img checkpoint: it is a text file"
    elif damage == "picture":  # a picture given as a model is not called a pickle
        path = tmp_path / "horse.png"
        Image.new("RGB", (8, 8)).save(path)
        expected = "is not an img2img checkpoint: it is a PNG image"
    elif damage == "not-a-dict":
        torch.save([torch.zeros(2)], path)
        expected = "is not an img2img checkpoint"
    else:
        state = torch.load(translate_run / "checkpoints" / "last.pt", weights_only=True)
        del state["translators"]
        torch.save(state, path)
        expected = "missing or wrong translators (expected dict)"
    text = assert_user_error(invoke("export", path, "--out", tmp_path / "g.onnx"), path, expected)
    assert "pickle" not in text
    assert_user_error(invoke("train", "--resume", path), path, expected)


def test_run_stopped_before_its_first_checkpoint_says_to_start_over(tiny_cyclegan, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "pipeline.yaml").write_text(tiny_cyclegan.read_text())
    assert_user_error(invoke("train", "--resume", run), "stopped before its first checkpoint", "--overwrite")


FANCY_PLUGIN = '''
import img2img
from torch import nn


def fancy(in_channels: int, out_channels: int, *, width: int = 4) -> nn.Module:
    """Two convolutions."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, out_channels, 3, padding=1), nn.Tanh())


@img2img.hookimpl
def register_generators(register):
    register("fancy", fancy)
'''


def test_checkpoint_needing_a_missing_plugin_names_distribution_and_version(tiny_cyclegan, tmp_path,
                                                                           fake_distribution, monkeypatch):
    from img2img import plugins

    root = fake_distribution("img2img-fancy", "img2img_fancy", FANCY_PLUGIN, version="2.3.1")
    run = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "model.generator={name: fancy}", *FAST)
    assert result.exit_code == 0, result.output
    sys.path.remove(str(root))  # uninstalled, as on a machine without the plugin
    sys.modules.pop("img2img_fancy", None)
    plugins.reset()
    expected = ["needs plugins that are not installed", "generator 'fancy' from img2img-fancy 2.3.1",
                "pip install img2img-fancy==2.3.1"]
    assert_user_error(invoke("export", run, "--out", tmp_path / "g.onnx"), run / "checkpoints" / "last.pt", *expected)
    assert_user_error(invoke("train", "--resume", run), *expected)


@pytest.mark.parametrize("content", ["empty", "checkpoint"])
def test_onnx_file_that_is_not_onnx(translate_run, tmp_path, content):
    src = tmp_path / "photos"
    write_images(src, 1, 24)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"" if content == "empty" else (translate_run / "checkpoints" / "last.pt").read_bytes())
    result = invoke("translate", src, "--model", model, "--out", tmp_path / "out")
    assert_user_error(result, model, "is not an ONNX model", "img2img export")


# -- disk full -----------------------------------------------------------------------------------

class FillingFile:
    """A file that reports ENOSPC once `room` bytes are written, as a full disk does."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.fh.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def fill_disk_after(monkeypatch, writes: int, room: int = 4096) -> None:
    """The first `writes` checkpoint files are written in full; the next one meets a full disk."""
    from img2img import atomic

    real_open = open
    count = {"n": 0}

    def open_(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if mode == "wb" and ".pt." in Path(file).name:  # the temporary file of a checkpoint
            count["n"] += 1
            if count["n"] > writes:
                return FillingFile(fh, room)
        return fh

    monkeypatch.setattr(atomic, "open", open_, raising=False)


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tiny_cyclegan, tmp_path, monkeypatch):
    run = tmp_path / "run"
    fill_disk_after(monkeypatch, writes=4)  # steps 1 and 2 write last.pt and step-N.pt; step 3 meets a full disk
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "train.checkpoint_every=1",
                    "--set", "train.max_steps=4", "--set", "train.sample_every=100")
    monkeypatch.undo()
    assert_user_error(result, f"disk full while writing {run / 'checkpoints' / 'last.pt'}",
                      "the previous last.pt is intact", "--resume")
    kept = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert kept["step"] == 2
    assert not list((run / "checkpoints").glob(".*.tmp"))
    result = invoke("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert rows(run) == [1, 2, 3, 4]


def test_disk_full_elsewhere_is_a_message_not_a_traceback(tiny_cyclegan, tmp_path, monkeypatch):
    from img2img.engine.train import Trainer

    def write_samples(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.run.samples / f"step-{self.step}.png"))

    monkeypatch.setattr(Trainer, "write_samples", write_samples)
    run = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "train.max_steps=1")
    assert_user_error(result, f"disk full while writing {run / 'samples' / 'step-1.png'}", "--resume")


def test_disk_full_on_the_first_checkpoint(tmp_path, monkeypatch):
    from img2img.engine.checkpoint import atomic_save

    fill_disk_after(monkeypatch, writes=0, room=10)
    with pytest.raises(Img2ImgError, match=r"disk full while writing .*first\.pt; no earlier first\.pt existed"):
        atomic_save({"w": torch.zeros(1000)}, tmp_path / "first.pt")
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_get_ordinary_file_permissions(tmp_path):
    from img2img.engine.checkpoint import atomic_save

    mask = os.umask(0o022)
    try:
        atomic_save({"w": torch.zeros(2)}, tmp_path / "a.pt")
        assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644
        os.chmod(tmp_path / "a.pt", 0o640)
        atomic_save({"w": torch.zeros(3)}, tmp_path / "a.pt")  # an existing file keeps its mode
        assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(mask)


# -- signals -------------------------------------------------------------------------------------

@pytest.fixture
def signal_loss(plugin_manager):
    """An L1 loss that sends this process `signum` (`times` times) during the given step."""
    from torch import nn

    class SignalAt(nn.Module):
        def __init__(self, at: int, signum: int, times: int):
            super().__init__()
            self.at, self.signum, self.times, self.calls = at, signum, times, 0

        def forward(self, prediction, target):
            self.calls += 1  # cyclegan calls its cycle loss twice per step
            if self.calls == 2 * self.at - 1:
                for _ in range(self.times):
                    os.kill(os.getpid(), self.signum)
            return (prediction - target).abs().mean()

    class Plugin:
        @img2img.hookimpl
        def register_losses(self, register):
            def signal_at(*, at: int = 2, signum: int = int(signal.SIGTERM), times: int = 1) -> nn.Module:
                """L1 that signals this process during step `at`."""
                return SignalAt(at, signum, times)

            register("signal_at", signal_at)

    plugin_manager.register(Plugin(), name="signal-plugin")


def test_sigterm_finishes_the_step_checkpoints_once_and_exits_143(tiny_cyclegan, tmp_path, signal_loss, monkeypatch):
    from img2img.engine import checkpoint as checkpoint

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    saved: list[tuple[str, int]] = []
    real_save = checkpoint.atomic_save

    def spy(obj, path, **options):
        saved.append((Path(path).name, obj["step"]))
        real_save(obj, path, **options)

    monkeypatch.setattr(checkpoint, "atomic_save", spy)
    run = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "losses.cycle.name=signal_at", *STOPPABLE)
    assert result.exit_code == 143, result.output
    assert "Traceback" not in result.output
    assert f"SIGTERM: stopped after step 2; checkpoint {run / 'checkpoints' / 'last.pt'}" in flat(result.output)
    assert f"img2img train --resume {run}" in flat(result.output)
    assert [s for s in saved if s[0] == "last.pt"] == [("last.pt", 1), ("last.pt", 2)]  # not written twice
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored


def test_second_sigint_interrupts_at_once_and_last_checkpoint_stays_whole(tiny_cyclegan, tmp_path, signal_loss):
    run = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "losses.cycle.name=signal_at",
                    "--set", f"losses.cycle.signum={int(signal.SIGINT)}", "--set", "losses.cycle.times=2",
                    *STOPPABLE)
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "Traceback" not in result.output
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 1


def start_training(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m img2img train ...` in its own session, so a signal can go to its whole process group."""
    return subprocess.Popen([sys.executable, "-m", "img2img", "train", *args], cwd=cwd, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_checkpoint_after(proc: subprocess.Popen, folder: Path, step: int, timeout: float = 180) -> int:
    """Block until a step-N.pt with N > step exists; returns N."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [int(p.stem.split("-")[1]) for p in folder.glob("step-*.pt")] if folder.is_dir() else []
        if steps and max(steps) > step:
            return max(steps)
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended early ({proc.returncode}):\n{out}\n{err}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no checkpoint after step {step} within {timeout} s")


def test_ctrl_c_checkpoints_exits_130_and_resume_continues(tiny_cyclegan, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, data workers included."""
    run = tmp_path / "run"
    proc = start_training([str(tiny_cyclegan), "--out", str(run), "--set", "train.max_steps=10000",
                           "--set", "train.checkpoint_every=1", "--set", "train.sample_every=10000",
                           "--set", "data.num_workers=2"], tmp_path)
    wait_for_checkpoint_after(proc, run / "checkpoints", 0)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    stopped = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert f"SIGINT: stopped after step {stopped}" in flat(err) and f"--resume {run}" in flat(err)
    result = invoke("train", "--resume", run, "--set", f"train.max_steps={stopped + 2}", "--set", "data.num_workers=0")
    assert result.exit_code == 0, result.output
    assert f"resuming at step {stopped}" in result.output
    assert rows(run) == list(range(1, stopped + 3))
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == stopped + 2


def test_kill_9_five_times_in_a_row_never_leaves_a_broken_checkpoint(tiny_cyclegan, tmp_path):
    """kill -9 at random moments, half of them while a checkpoint file is being written."""
    from img2img.engine.checkpoint import load_checkpoint

    seed = int(os.environ.get("IMG2IMG_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    run = tmp_path / "run"
    folder = run / "checkpoints"
    first = [str(tiny_cyclegan), "--out", str(run), "--set", "train.max_steps=10000",
             "--set", "train.checkpoint_every=1", "--set", "train.sample_every=10000",
             "--set", "train.keep_checkpoints=2"]
    step, history = 0, []
    for round_ in range(5):
        proc = start_training(first if round_ == 0 else ["--resume", str(run)], tmp_path)
        wait_for_checkpoint_after(proc, folder, step)
        if round_ % 2:
            deadline = time.monotonic() + 3
            while not list(folder.glob(".*.tmp")) and time.monotonic() < deadline:
                pass  # spin: the write of a small checkpoint takes milliseconds
            moment = "mid-write" if list(folder.glob(".*.tmp")) else "after 3 s"
        else:
            delay = rng.uniform(0, 0.5)
            time.sleep(delay)
            moment = f"after {delay:.3f} s"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        history.append(moment)
        assert proc.returncode == -signal.SIGKILL
        state = torch.load(folder / "last.pt", weights_only=True)  # complete, whatever the moment
        assert state["step"] > step, f"seed {seed}: {history}"
        assert load_checkpoint(run)["step"] == state["step"]
        step = state["step"]
    result = invoke("train", "--resume", run, "--set", f"train.max_steps={step + 2}")
    assert result.exit_code == 0, f"seed {seed}: {history}\n{result.output}"
    assert rows(run) == list(range(1, step + 3)), f"seed {seed}: {history}"
    assert not list(folder.glob(".*.tmp")), "partial files of killed writes are cleaned up on resume"


# -- security invariants -------------------------------------------------------------------------

def package_calls() -> list[tuple[str, int, ast.Call]]:
    found = []
    for path in sorted((ROOT / "img2img").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [(path.name, node.lineno, node) for node in ast.walk(tree) if isinstance(node, ast.Call)]
    return found


def dotted(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def test_no_unsafe_loaders_and_no_shell_in_the_package():
    problems = []
    for name, line, call in package_calls():
        func = dotted(call.func)
        keywords = {k.arg: k.value for k in call.keywords}
        if func == "torch.load":
            value = keywords.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                problems.append(f"{name}:{line}: torch.load without weights_only=True")
        if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "pickle.load", "pickle.loads"):
            problems.append(f"{name}:{line}: {func}")
        if func in ("os.system", "os.popen") or (func.startswith("subprocess.") and "shell" in keywords):
            problems.append(f"{name}:{line}: {func} (shell)")
    assert problems == []


def test_relative_paths_resolve_against_the_pipeline_folder_from_any_working_directory(tiny_cyclegan, tmp_path,
                                                                                      monkeypatch):
    (tmp_path / "p.yaml").write_text(tiny_cyclegan.read_text().replace(str(tmp_path / "A"), "A")
                                     .replace(str(tmp_path / "B"), "./B"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = invoke("validate", tmp_path / "p.yaml", "--show", "--set", "data.test_a=A")
    assert result.exit_code == 0, result.output
    shown = flat(result.output)
    assert f"a: {tmp_path / 'A'}" in shown and f"b: {tmp_path / 'B'}" in shown and f"test_a: {tmp_path / 'A'}" in shown
