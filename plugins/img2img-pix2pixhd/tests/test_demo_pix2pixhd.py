"""demo-pix2pixhd as a user runs it: the shipped pipeline (at tiny widths) trains, resumes exactly,
translates odd sizes, exports to ONNX, serves, reports and diagnoses, also under ``train --nproc 2``."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from img2img.config.builtin import init_pipeline
from img2img.engine.checkpoint import load_checkpoint, load_translator
from img2img.testing import train_steps

TINY = ["model.generator.ngf=8", "model.generator.n_blocks=1", "model.discriminator.ndf=8", "train.batch_size=2",
        "train.log_every=1", "train.sample_every=2", "train.checkpoint_every=2", "data.num_workers=0"]
TIMING = {"seconds_per_step", "images_per_s"}
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")


def img2img(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "img2img", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=timeout)


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A copy of the shipped demo-pix2pixhd; its data is synthesised beside it on first training."""
    root = tmp_path_factory.mktemp("demo")
    init_pipeline("demo-pix2pixhd", root / "demo-pix2pixhd.yaml")
    return root / "demo-pix2pixhd.yaml"


@pytest.fixture(scope="module")
def run(demo) -> Path:
    return train_steps(demo, steps=4, out=demo.parent / "run", overrides=TINY)


def test_demo_trains_with_three_scales_and_feature_matching(run):
    ckpt = load_checkpoint(run)
    assert ckpt["plugins"]["generator:pix2pixhd_global"]["distribution"] == "img2img-pix2pixhd"
    assert ckpt["plugins"]["discriminator:multiscale"]["distribution"] == "img2img-pix2pixhd"
    assert {k.split(".")[1] for k in ckpt["nets"]["d"] if k.startswith("scales.")} == {"0", "1", "2"}
    table = rows(run)
    assert [r["step"] for r in table] == [1, 2, 3, 4]
    for row in table:
        assert row["feature_matching"] > 0 and np.isfinite(row["g_adv"]) and np.isfinite(row["d"])
    assert 0.0 <= table[0]["health/d_separation_a2b"] <= 1.0  # health measured the three scales


def test_demo_resumes_exactly(demo, run, tmp_path):
    out = tmp_path / "resumed"
    train_steps(demo, steps=2, out=out, overrides=TINY)
    train_steps(demo, steps=4, out=out, overrides=TINY, resume=True)
    assert rows(out) == rows(run)
    resumed, straight = load_checkpoint(out)["nets"], load_checkpoint(run)["nets"]
    for net in straight:
        assert all(torch.equal(resumed[net][k], v) for k, v in straight[net].items()), net


def test_translate_keeps_odd_sizes(run, tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for w, h in ((37, 45), (61, 29)):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / f"{w}x{h}.png")
    result = img2img("translate", str(photos), "--model", str(run), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    for w, h in ((37, 45), (61, 29)):
        assert Image.open(tmp_path / "out" / f"{w}x{h}.png").size == (w, h)


def test_export_to_onnx_matches_torch(run, tmp_path):
    import onnxruntime as ort

    result = img2img("export", str(run), "--out", str(tmp_path / "g.onnx"))
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 40, 56) * 2 - 1  # a multiple of the generator's 8, other than the training size
    onnx_out = session.run(["translated"], {"image": x.numpy()})[0]
    with torch.no_grad():
        torch_out = load_translator(run).module.eval()(x).numpy()
    assert np.abs(onnx_out - torch_out).max() <= 1e-4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_translates_an_upload(run, tmp_path):
    import httpx

    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "img2img", "serve", f"hd={run}", "--port", str(port),
                               "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=ENV)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        image = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (33, 47, 3), dtype=np.uint8)).save(image, "PNG")
        answer = httpx.post(f"{url}/v1/models/hd/translate", content=image.getvalue(), timeout=120)
        assert answer.status_code == 200, answer.text
        assert Image.open(io.BytesIO(answer.content)).size == (47, 33)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def test_report_and_health_read_the_run(run, tmp_path):
    report = img2img("report", str(run), "--out", str(tmp_path / "report.html"))
    assert report.returncode == 0, report.stderr
    assert "multiscale" in (tmp_path / "report.html").read_text()
    health = img2img("health", str(run))
    assert health.returncode == 0, health.stderr
    assert "not judged yet (warm-up until step" in " ".join(health.stdout.split())  # a 4-step run: read, not judged
    assert "health/d_separation_a2b" in health.stdout and "health/diversity_a2b" in health.stdout


def test_demo_trains_and_resumes_exactly_under_torchrun_with_two_processes(demo, tmp_path):
    def train_ddp(out: Path, steps: int, *resume: str) -> None:
        args = ["train", *(resume or (str(demo), "--out", str(out))), "--nproc", "2", "--set", f"train.max_steps={steps}"]
        if not resume:
            args += [arg for setting in TINY for arg in ("--set", setting)]
        result = img2img(*args)
        assert result.returncode == 0, result.stdout + result.stderr

    straight, resumed = tmp_path / "ddp", tmp_path / "ddp-resumed"
    train_ddp(straight, 4)
    train_ddp(resumed, 2)
    train_ddp(resumed, 4, "--resume", str(resumed))
    table = rows(straight)
    assert [r["step"] for r in table] == [1, 2, 3, 4] and all(r["feature_matching"] > 0 for r in table)
    assert rows(resumed) == table
    a, b = load_checkpoint(straight)["nets"], load_checkpoint(resumed)["nets"]
    for net in a:
        assert all(torch.equal(b[net][k], v) for k, v in a[net].items()), net
    result = img2img("export", str(straight), "--out", str(tmp_path / "ddp.onnx"))
    assert result.returncode == 0, result.stderr
