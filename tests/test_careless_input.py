"""What a careless first hour meets: a file that is not an image, a stopped translation, options given
as null, a task whose helper names meet the engine's, logs redirected to a file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from img2img.cli import app
from img2img.testing import write_images

from cli_support import user_error

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def cli_process(*args: str, drop_env: tuple[str, ...] = ()) -> subprocess.Popen:
    """`img2img ARGS` in a real process, its stdout and stderr pipes (not terminals)."""
    env = {**{k: v for k, v in os.environ.items() if k not in drop_env}, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "img2img", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_translate_refuses_an_explicit_file_that_is_not_an_image(translate_run, tmp_path):
    script = tmp_path / "one_file.py"
    script.write_text("print('hello')\n")
    result = runner.invoke(app, ["translate", str(script), "--model", str(translate_run), "--out", str(tmp_path / "o")])
    user_error(result, f"{script} is not an image file", "give image files or folders")
    assert not (tmp_path / "o").exists()


def test_sigterm_during_translate_says_what_was_written_and_a_rerun_continues(translate_run, tmp_path):
    write_images(tmp_path / "in", 120, 128, seed=3)
    out = tmp_path / "out"
    args = ["translate", str(tmp_path / "in"), "--model", str(translate_run), "--out", str(out), "--device", "cpu"]
    proc = cli_process(*args)
    deadline = time.monotonic() + 240
    def whole_files() -> bool:  # an output renamed into place, not a hidden temporary file being written
        return out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())

    while not whole_files() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr
    written = sorted(p.name for p in out.iterdir())
    assert 0 < len(written) < 120 and all(name.endswith(".png") for name in written)  # whole files only
    text = " ".join((stdout + stderr).split())
    assert f"stopped by SIGTERM: wrote {len(written)} of 120 images" in text and "Traceback" not in text
    assert "Run the same command again to continue" in text
    again = cli_process(*args)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert len(list(out.iterdir())) == 120 and f"skipped {len(written)} existing" in " ".join(stdout.split())


def metric_rows(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_val_every_null_turns_validation_off_and_stays_off_on_resume(tiny_pix2pix, tmp_path):
    import yaml

    from img2img.engine.train import train

    data, run = tiny_pix2pix.parent, tmp_path / "run"
    val = [f"data.val.a={data / 'inA'}", f"data.val.b={data / 'inB'}"]
    train(tiny_pix2pix, out=run, overrides=[*val, "train.val_every=null", "train.max_steps=2",
                                            "train.checkpoint_every=1"])
    assert not [r for r in metric_rows(run) if "val_l1" in r] and not (run / "checkpoints" / "best.pt").exists()
    assert yaml.safe_load((run / "pipeline.yaml").read_text())["train"]["val_every"] is None
    train(None, resume=run, overrides=["train.max_steps=3"])
    assert not [r for r in metric_rows(run) if "val_l1" in r]
    default = tmp_path / "default"  # left out: every checkpoint_every steps, written into the resolved pipeline
    train(tiny_pix2pix, out=default, overrides=[*val, "train.max_steps=2", "train.checkpoint_every=1"])
    assert [r["step"] for r in metric_rows(default) if "val_l1" in r] == [1, 2]
    assert yaml.safe_load((default / "pipeline.yaml").read_text())["train"]["val_every"] == 1


def test_output_that_is_not_a_terminal_is_never_wrapped(tmp_path):
    from img2img.testing import tiny_pipeline

    pipeline = tiny_pipeline(tmp_path / "deep" / ("long-folder-name-" * 6), "cyclegan")
    trained = cli_process("train", str(pipeline), "--out", str(tmp_path / "run"), "--set", "train.max_steps=2",
                          drop_env=("COLUMNS",))
    stdout, stderr = trained.communicate(timeout=600)
    assert trained.returncode == 0, stderr
    steps = [line for line in stdout.splitlines() if line.startswith("step ")]
    assert steps and all("d_b" in line and "g_ab" in line for line in steps)  # one record, one line
    assert max(len(line) for line in steps) > 80
    bad = tmp_path / ("x" * 150) / "missing"
    checked = cli_process("validate", str(pipeline), "--set", f"data.a={bad}", "--set", f"data.b={bad}",
                          drop_env=("COLUMNS",))
    stdout, stderr = checked.communicate(timeout=300)
    lines = [line for line in (stdout + stderr).splitlines() if str(bad) in line]
    assert len(lines) >= 2 and all(line.lstrip().startswith(("data.a", "data.b", "warning")) for line in lines), \
        stdout + stderr


def _pix2pix_with(members: dict) -> type:
    from typing import Literal

    from pydantic import create_model

    from img2img.tasks.pix2pix import Pix2Pix, Pix2PixPipeline

    pipeline = create_model("MinePipeline", __base__=Pix2PixPipeline, task=(Literal["mine"], "mine"))
    return type("MyPix2Pix", (Pix2Pix,), {"name": "mine", "Pipeline": pipeline, **members})


def _train_task(task_cls: type, tmp_path: Path):
    import img2img
    from img2img.testing import registered, tiny_pipeline

    class Plugin:
        @img2img.hookimpl
        def register_tasks(self, register):
            register("mine", task_cls)

    with registered(Plugin(), name="mine-plugin"):
        pipeline = tiny_pipeline(tmp_path, task="mine", paired=True,
                                 generator={"name": "unet", "num_downs": 5, "ngf": 8},
                                 discriminator={"name": "patchgan", "ndf": 8, "n_layers": 2})
        return runner.invoke(app, ["train", str(pipeline), "--out", str(tmp_path / "run")])


def test_a_task_may_name_its_helpers_as_it_likes(tmp_path):
    calls = []

    def _plain(self, x):  # names the engine once used for its own state
        calls.append(x)
        return x

    def train_step(self, batch):
        self._plain(1), self._agree(2), self._setup_fn(3), self._set_up(4)
        return super(task_cls, self).train_step(batch)

    def helper(self, x):
        return x

    task_cls = _pix2pix_with({"_plain": _plain, "_agree": helper, "_setup_fn": helper, "_set_up": helper,
                              "_engine": helper, "train_step": train_step})
    result = _train_task(task_cls, tmp_path)
    assert result.exit_code == 0, result.output
    assert calls == [1, 1] and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_a_task_member_that_hides_an_engine_attribute_is_named_with_it(tmp_path):
    result = _train_task(_pix2pix_with({"amp": lambda self: "mine"}), tmp_path)
    user_error(result, "MyPix2Pix defines the method 'amp', which is also Task.amp (the precision)",
               "rename MyPix2Pix.amp")


def test_nproc_2_on_cpus_trains_the_pix2pix_defaults_with_per_process_batch_norm(tiny_pix2pix, tmp_path):
    import torch

    from test_distributed import IMG2IMG, run_cmd

    # the pix2pix defaults: unet and patchgan with batch norm (tiny widths)
    result = run_cmd(IMG2IMG + ["train", str(tiny_pix2pix), "--nproc", "2", "--out", str(tmp_path / "run"),
                                "--set", "train.max_steps=2", "--set", "model.discriminator.norm=batch"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SyncBatchNorm layers only work" not in result.stderr
    said = (result.stdout + result.stderr).count("each process normalises with its own batch's statistics")
    assert said == 1, result.stdout
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2


def test_a_demo_pipeline_trains_on_the_folders_the_user_gives(tmp_path, monkeypatch):
    from img2img.testing import write_pairs

    write_pairs(tmp_path / "pics" / "a", tmp_path / "pics" / "b", 4, 40)
    monkeypatch.chdir(tmp_path)
    tiny = ["--set", f"data.a={tmp_path / 'pics' / 'a'}", "--set", f"data.b={tmp_path / 'pics' / 'b'}",
            "--set", "model.generator={name: unet, num_downs: 5, ngf: 4}", "--set", "model.discriminator.ndf=4",
            "--set", "data.transforms=[{Resize: {height: 32, width: 32}}]", "--set", "data.num_workers=0",
            "--set", "train.batch_size=2", "--set", "train.max_steps=1"]
    checked = runner.invoke(app, ["validate", "demo-pix2pix", *tiny])
    assert checked.exit_code == 0, checked.output
    trained = runner.invoke(app, ["train", "demo-pix2pix", "--out", str(tmp_path / "run"), *tiny])
    assert trained.exit_code == 0, trained.output
    for result in (checked, trained):
        text = " ".join(result.output.split())
        assert text.count("data.synthesize: outlines is not used: data.a and data.b") == 1, text
    assert not (tmp_path / "data").exists() and sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["a", "b"]
    import yaml

    resolved = yaml.safe_load((tmp_path / "run" / "pipeline.yaml").read_text())["data"]
    assert resolved["synthesize"] is None and resolved["test_a"] is None  # the demo's test folders went with it


def test_a_demo_pipeline_given_one_own_folder_names_the_other_and_the_way_out(tmp_path, monkeypatch):
    from img2img.testing import write_images

    write_images(tmp_path / "pics", 4, 40)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", "demo-pix2pix", "--set", f"data.a={tmp_path / 'pics'}"])
    user_error(result, f"data.b (line 9): {tmp_path / 'data' / 'demo-outlines' / 'trainB'} is the demo's folder (data.synthesize: outlines), while "
                       f"data.a is your own {tmp_path / 'pics'}", "--set data.synthesize=null")


def test_the_batch_size_check_counts_readable_samples_and_lists_the_unreadable_in_one_message(tiny_pix2pix,
                                                                                               tmp_path):
    inputs = sorted((tiny_pix2pix.parent / "inA").glob("*.png"))
    for broken in inputs[:2]:
        broken.write_bytes(b"not a png")
    result = runner.invoke(app, ["train", str(tiny_pix2pix), "--out", str(tmp_path / "run"),
                                 "--set", "train.batch_size=8"])
    user_error(result, "2 image file(s) cannot be read:", str(inputs[0]), str(inputs[1]),
               "train.batch_size is 8 but there are only 4 readable (leaving out 2 unreadable file(s)) training "
               "sample(s)")
    skipping = runner.invoke(app, ["train", str(tiny_pix2pix), "--out", str(tmp_path / "run"),
                                   "--set", "train.batch_size=8", "--set", "data.skip_unreadable=true"])
    user_error(skipping, "only 4 readable (leaving out 2 unreadable file(s)) training sample(s)")


def test_docs_named_in_messages_are_shown_by_img2img_docs():
    listed = runner.invoke(app, ["docs"])
    assert listed.exit_code == 0 and "troubleshooting  When things go wrong" in listed.output
    shown = runner.invoke(app, ["docs", "docs/import.md"])
    assert shown.exit_code == 0 and shown.output.startswith("# Importing pretrained generators")
    user_error(runner.invoke(app, ["docs", "imprt"]), "no document named 'imprt'; did you mean 'import'?")
    helped = runner.invoke(app, ["translate", "--help"], env={"COLUMNS": "300"})
    assert "See `img2img docs import`" in " ".join(helped.output.split()) and "docs/import.md" not in helped.output


def test_serves_start_up_table_shows_every_direction_of_a_model(translate_run):
    import io

    from rich.console import Console

    from img2img.inference.serve.models import ModelTable
    from img2img.inference.serve.server import _summary

    out = io.StringIO()
    _summary(ModelTable.from_args([f"h2z={translate_run}"], device="cpu").load(), Console(file=out, width=300))
    row = next((line for line in out.getvalue().splitlines() if "h2z" in line), out.getvalue())
    assert "a2b, b2a" in row and "a2b (torch, cpu, fp32)" in row and "b2a (torch, cpu, fp32)" in row, row
