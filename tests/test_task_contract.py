"""The task contract, held by recipes we did not write (tests/plugin_sources/contract_tasks.py, installed as a
third-party distribution): one direction with its own names, a translator made of two networks, a task that
keeps references to its networks; each gets the whole engine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from img2img.testing import write_images
from test_distributed import REPLICA_SCRIPT

SOURCE = (Path(__file__).parent / "plugin_sources" / "contract_tasks.py").read_text()
runner = CliRunner()
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture
def contract(fake_distribution):
    """The contract tasks installed as the distribution img2img-contract-tasks; returns its site folder."""
    return fake_distribution("img2img-contract-tasks", "contract_tasks", SOURCE)


def invoke(*args):
    from img2img.cli import app

    return runner.invoke(app, [str(a) for a in args])


def pipeline(root: Path, task: str, **train) -> Path:
    write_images(root / "A", 6, 36, seed=1, colour=(220, 120, 60))
    write_images(root / "B", 6, 36, seed=2, colour=(40, 90, 200))
    settings = {"max_steps": 4, "log_every": 1, "sample_every": 2, "checkpoint_every": 2, **train}
    lines = [f"task: {task}", "name: contract", "data:", f"  a: {root / 'A'}", f"  b: {root / 'B'}",
             "  num_workers: 0", "  transforms:", "    - RandomCrop: {height: 32, width: 32}", "train:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in settings.items()]
    path = root / f"{task}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path, keys: tuple[str, ...]) -> list[tuple]:
    return [(r["step"], *(r[k] for k in keys)) for r in rows(run) if keys[0] in r]


def env(site: Path) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", IMG2IMG_DIST_TIMEOUT="60", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    e.pop("WORLD_SIZE", None)
    return e


def test_one_direction_task_gets_the_whole_engine(contract, tmp_path):
    import contract_tasks

    path = pipeline(tmp_path, "painter", ema=0.9)
    assert invoke("validate", path).exit_code == 0
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert invoke("train", path, "--out", straight).exit_code == 0
    assert invoke("train", path, "--out", resumed, "--set", "train.max_steps=2").exit_code == 0
    assert invoke("train", "--resume", resumed, "--set", "train.max_steps=4").exit_code == 0
    keys = ("critic", "adv", "keep")
    assert losses(resumed, keys) == losses(straight, keys) and len(losses(straight, keys)) == 4
    row = rows(straight)[-1]
    assert {"lr", "lr_brush", "lr_critic"} <= set(row) and row["lr"] == row["lr_brush"]  # no optimiser is named g
    ckpt = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    assert {key for key, _ in ckpt["translators"]["a2b"].values()} == {"brush"}
    assert set(ckpt["ema"]) == {"a2b"} and set(ckpt["schedulers"]) == {"brush", "critic"}

    built = contract_tasks.BUILT["critic"]
    write_images(tmp_path / "photos", 2, 45, seed=5)
    result = invoke("translate", tmp_path / "photos", "--model", straight, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "img000.png").size == (45, 45)
    result = invoke("export", straight, "--out", tmp_path / "painter.onnx")
    assert result.exit_code == 0, result.output
    assert contract_tasks.BUILT["critic"] == built, "translate and export built a discriminator"
    result = invoke("translate", tmp_path / "photos", "--model", straight, "--direction", "b2a", "--out",
                    tmp_path / "nope")
    assert result.exit_code == 1 and "translates a2b, not b2a" in result.output


def test_translator_made_of_two_networks(contract, tmp_path):
    from img2img.engine.checkpoint import load_translator
    from img2img.tasks import unwrap

    path = pipeline(tmp_path, "unit", ema=0.5)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert invoke("train", path, "--out", straight).exit_code == 0
    assert invoke("train", path, "--out", resumed, "--set", "train.max_steps=2").exit_code == 0
    assert invoke("train", "--resume", resumed, "--set", "train.max_steps=4").exit_code == 0
    assert losses(resumed, ("d", "adv", "rec")) == losses(straight, ("d", "adv", "rec"))
    ckpt = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    assert {key for key, _ in ckpt["translators"]["a2b"].values()} == {"enc_a", "dec_b"}
    assert {key for key, _ in ckpt["translators"]["b2a"].values()} == {"enc_b", "dec_a"}

    # without EMA the translator is exactly decoder_b(encoder_a(x)) with the trained nets
    raw = load_translator(straight, "a2b", use_ema=False)
    assert raw.size_multiple == 2 and not raw.ema
    nets = {k: v for k, v in ckpt["nets"].items()}
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    import contract_tasks

    enc, dec = contract_tasks.Encoder(3, 8), contract_tasks.Decoder(8, 3)
    enc.load_state_dict(nets["enc_a"])
    dec.load_state_dict(nets["dec_b"])
    with torch.no_grad():
        assert torch.allclose(unwrap(raw.module)(x), dec.eval()(enc.eval()(x)), atol=1e-6)
    ema = load_translator(straight, "b2a")
    assert ema.ema
    write_images(tmp_path / "photos", 2, 37, seed=5)  # odd size: padded to the composite's multiple
    for direction in ("a2b", "b2a"):
        result = invoke("translate", tmp_path / "photos", "--model", straight, "--direction", direction,
                        "--out", tmp_path / direction)
        assert result.exit_code == 0, result.output
        assert Image.open(tmp_path / direction / "img001.png").size == (37, 37)
    result = invoke("export", straight, "--direction", "b2a", "--out", tmp_path / "unit.onnx")
    assert result.exit_code == 0, result.output

    # the server's model list names the translator's class when the pipeline names no generator
    from img2img.inference.serve.models import ModelTable

    served = ModelTable.from_args([f"unit={straight}"], device="cpu").load().models["unit"]
    assert served.info["generator"] == type(unwrap(raw.module)).__name__ and set(served.translators) == {"a2b", "b2a"}


def test_a_task_may_replace_the_schedule(contract, tmp_path):
    path = pipeline(tmp_path, "painter-steps", lr=0.001)
    run = tmp_path / "run"
    assert invoke("train", path, "--out", run).exit_code == 0
    brush = [r["lr_brush"] for r in rows(run)]
    assert brush == pytest.approx([0.0005, 0.00025, 0.000125, 0.0000625])
    assert all(r["lr_critic"] == pytest.approx(0.001) for r in rows(run))  # no scheduler asked for: constant
    resumed = tmp_path / "resumed"
    assert invoke("train", path, "--out", resumed, "--set", "train.max_steps=2").exit_code == 0
    assert invoke("train", "--resume", resumed, "--set", "train.max_steps=4").exit_code == 0
    assert [r["lr_brush"] for r in rows(resumed)] == brush


def test_the_reference_schedule_decays_per_epoch(tiny_cyclegan, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", tiny_cyclegan, "--out", run, "--set", "train.epochs=1", "--set", "train.decay_epochs=2",
                    "--set", "train.max_steps=18")
    assert result.exit_code == 0, result.output
    by_epoch = {}
    for r in rows(run):
        by_epoch.setdefault(r["epoch"], set()).add(round(r["lr_g"] / 2e-4, 6))
        assert r["lr_g"] == r["lr_d"] == r["lr"]
    assert by_epoch == {0: {1.0}, 1: {round(2 / 3, 6)}, 2: {round(1 / 3, 6)}}


def test_a_reference_kept_from_before_wrapping_is_refused(contract, tmp_path):
    path = pipeline(tmp_path, "stale", compile=True)
    result = invoke("train", path, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "self.raw_brush (the unwrapped nets['brush'])" in result.output
    assert "Traceback" not in result.output




def test_kept_references_train_bit_identical_replicas_and_nan_skips_are_agreed(contract, tmp_path):
    path = pipeline(tmp_path, "keeper", on_nan="skip", max_steps=3)
    script = tmp_path / "replicas.py"
    script.write_text(REPLICA_SCRIPT)
    run = tmp_path / "run"
    e = env(contract)
    e.update(PAINTER_NAN_RANK="1", PAINTER_NAN_STEP="2")  # rank 1 alone meets a NaN at its 2nd step
    result = subprocess.run(TORCHRUN + [str(script), str(path), str(run)], cwd=tmp_path, env=e,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r0 = torch.load(f"{run}-rank0.pt", weights_only=True)
    r1 = torch.load(f"{run}-rank1.pt", weights_only=True)
    for net in r0:
        for name, tensor in r0[net].items():
            assert torch.equal(tensor, r1[net][name]), f"{net}.{name} differs between ranks"
    assert [r.get("skipped_steps") for r in rows(run)] == [None, 1, 1]


def test_one_direction_task_under_torchrun(contract, tmp_path):
    path = pipeline(tmp_path, "painter")
    run = tmp_path / "run"
    result = subprocess.run(TORCHRUN + ["-m", "img2img", "train", str(path), "--out", str(run)], cwd=tmp_path,
                            env=env(contract), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and not any(k.startswith("module.") for k in ckpt["nets"]["brush"])


def test_fp16_step_whose_every_update_was_skipped(tmp_path):
    from img2img.precision import Precision

    amp = Precision("fp16-mixed", torch.device("cpu"))
    scale = amp.scaler.get_scale()
    amp.update()  # nothing stepped since the last update: the scale stays, no error
    assert amp.scaler.get_scale() == scale
    layer = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    amp.backward(layer(torch.ones(1, 2)).sum() * float("inf"))
    amp.step(opt)
    amp.update()
    assert amp.scaler.get_scale() < scale  # an inf gradient halves the scale as usual
    assert np.isfinite(layer.weight.detach().numpy()).all()


def test_three_domain_task_written_for_0_2_reaches_every_direction(contract, tmp_path, monkeypatch):
    """A task that holds its third folder in its own section (img2img 0.2's only way): the folder resolves
    against the YAML file like data.*, and translate/export/serve reach all six directions."""
    import onnx
    import onnxruntime as ort

    from img2img.engine.checkpoint import load_translator
    from img2img.inference.serve.models import ModelTable

    path = pipeline(tmp_path, "trio")
    write_images(tmp_path / "C", 4, 36, seed=3, colour=(60, 200, 80))
    path.write_text(path.read_text() + "third:\n  folder: C\n")  # relative to the YAML file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert invoke("validate", path).exit_code == 0
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = invoke("train", path, "--out", straight)
    assert result.exit_code == 0, result.output
    assert invoke("train", path, "--out", resumed, "--set", "train.max_steps=2").exit_code == 0
    assert invoke("train", "--resume", resumed, "--set", "train.max_steps=4").exit_code == 0
    assert losses(resumed, ("d", "adv", "rec")) == losses(straight, ("d", "adv", "rec"))

    write_images(tmp_path / "photos", 1, 37, seed=5)
    for direction in ("a2c", "c2b"):
        result = invoke("translate", tmp_path / "photos", "--model", straight, "-d", direction,
                        "--out", tmp_path / direction)
        assert result.exit_code == 0, result.output
        assert Image.open(tmp_path / direction / "img000.png").size == (37, 37)
    result = invoke("translate", tmp_path / "photos", "--model", straight, "-d", "b2cc", "--out", tmp_path / "no")
    assert result.exit_code == 1 and "did you mean 'b2c'?" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "no").exists()

    result = invoke("export", straight, "--direction", "c2a", "--out", tmp_path / "c2a.onnx")
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "c2a.onnx")).metadata_props}
    assert meta["direction"] == "c2a"
    torch_c2a = load_translator(straight, "c2a").module
    x = torch.rand(1, 3, 34, 30) * 2 - 1
    onnx_out = ort.InferenceSession(str(tmp_path / "c2a.onnx")).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(onnx_out - torch_c2a(x).numpy()).max() <= 1e-4

    served = ModelTable.from_args([f"trio={straight}"], device="cpu").load().models["trio"]
    assert set(served.translators) == {"a2b", "b2a", "a2c", "c2a", "b2c", "c2b"}
