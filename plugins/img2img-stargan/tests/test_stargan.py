"""The stargan task through img2img's loop, CLI, export, serve, report and health, as an installed plugin."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from img2img.testing import train_steps, write_images

DIRECTIONS = {"a2b", "a2c", "b2a", "b2c", "c2a", "c2b"}
TIMING = {"seconds_per_step", "images_per_s"}


def img2img(*args, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "img2img", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_one_generator_one_discriminator_every_direction(stargan_run):
    ckpt = torch.load(stargan_run / "checkpoints" / "last.pt", weights_only=True)
    assert set(ckpt["nets"]) == {"g", "d"} and set(ckpt["translators"]) == DIRECTIONS
    assert all({key for key, _ in sources.values()} == {"g"} for sources in ckpt["translators"].values())
    assert ckpt["plugins"]["task:stargan"]["distribution"] == "img2img-stargan"
    # the discriminator's classifier has one logit per domain; the generator sees image + 3 code channels
    assert ckpt["nets"]["d"]["conv_cls.weight"].shape[0] == 3
    assert ckpt["nets"]["g"]["main.0.weight"].shape[1] == 3 + 3
    logged = [r for r in rows(stargan_run) if "d_adv" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert logged[0]["g_rec"] == 0 and logged[1]["g_rec"] > 0  # n_critic 2: G's first update at step 2
    assert all(r["d_gp"] > 0 for r in logged)  # WGAN-GP's gradient penalty


def test_resume_continues_exactly(tmp_path, make_pipeline):
    pipeline = make_pipeline(tmp_path)
    straight = train_steps(pipeline, 4, out=tmp_path / "straight")
    resumed = train_steps(pipeline, 2, out=tmp_path / "resumed", overrides=["train.checkpoint_every=1"])
    train_steps(pipeline, 4, out=resumed, resume=True)
    def losses(run):  # (health/grad_* reads gradients a step leaves; G's last ones are not checkpointed)
        return [{k: v for k, v in r.items() if not k.startswith("health/")} for r in rows(run) if "d_adv" in r]

    assert losses(resumed) == losses(straight) and len(losses(straight)) == 4


def test_translate_any_direction_at_odd_sizes(stargan_run, tmp_path):
    write_images(tmp_path / "photos", 2, 37, seed=5)
    Image.new("RGB", (29, 23), (120, 30, 200)).save(tmp_path / "photos" / "odd.png")
    outputs = {}
    for direction in ("a2c", "c2b"):
        result = img2img("translate", tmp_path / "photos", "--model", stargan_run, "-d", direction,
                         "--out", tmp_path / direction)
        assert result.returncode == 0, result.stderr
        assert Image.open(tmp_path / direction / "odd.png").size == (29, 23)
        outputs[direction] = np.asarray(Image.open(tmp_path / direction / "img000.png"))
    assert not np.array_equal(outputs["a2c"], outputs["c2b"])  # the target's code changes the translation
    result = img2img("translate", tmp_path / "photos", "--model", stargan_run, "-d", "a2d", "--out", tmp_path / "x")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "translates a2b, a2c, b2a, b2c, c2a, c2b, not a2d" in " ".join((result.stdout + result.stderr).split())


def test_each_direction_exports_to_one_onnx_graph(stargan_run, tmp_path):
    import onnx
    import onnxruntime as ort

    from img2img.engine.checkpoint import load_translator

    x = (torch.rand(1, 3, 28, 36) * 2 - 1)
    outs = {}
    for direction in ("a2c", "b2a"):
        out = tmp_path / f"{direction}.onnx"
        result = img2img("export", stargan_run, "--direction", direction, "--out", out)
        assert result.returncode == 0, result.stderr
        model = onnx.load(str(out))
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["direction"] == direction and meta["task"] == "stargan"
        assert [i.name for i in model.graph.input] == ["image"]  # the domain code is baked in
        outs[direction] = ort.InferenceSession(str(out)).run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            reference = load_translator(stargan_run, direction).module(x).numpy()
        assert np.abs(outs[direction] - reference).max() <= 1e-4
    assert np.abs(outs["a2c"] - outs["b2a"]).max() > 1e-3


def test_kid_validation_in_every_direction(tmp_path, make_pipeline):
    for domain in ("a", "b", "c"):
        write_images(tmp_path / "val" / domain, 3, 20, seed=10 + ord(domain))
    pipeline = make_pipeline(
        tmp_path, data={"domains": {"a": "a", "b": "b", "c": "c"}, "num_workers": 0,
                        "transforms": [{"RandomCrop": {"height": 16, "width": 16}}],
                        "val": {"a": "val/a", "b": "val/b", "c": "val/c"}},
        train={"batch_size": 2, "max_steps": 2, "log_every": 1, "sample_every": 2, "checkpoint_every": 2,
               "val_every": 2, "val_metric": "kid", "val_extractor": "random_conv"})
    run = train_steps(pipeline, 2)
    val = next(r for r in rows(run) if "val_kid" in r)
    assert {f"val_kid_{d}" for d in DIRECTIONS} <= set(val)
    assert val["val_kid"] == pytest.approx(np.mean([val[f"val_kid_{d}"] for d in DIRECTIONS]))
    assert "val_cycle_l1" not in val  # a and b alone would not say how three domains cycle
    assert (run / "checkpoints" / "best.pt").is_file()

    del_c = yaml.safe_load(pipeline.read_text())
    del del_c["data"]["val"]["c"]
    pipeline.write_text(yaml.safe_dump(del_c))
    result = img2img("validate", pipeline)
    assert result.returncode == 1 and "data.val.c" in result.stdout + result.stderr


def test_report_and_health_cover_every_direction(stargan_run, tmp_path):
    result = img2img("report", stargan_run, "--out", tmp_path / "report.html")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.html").stat().st_size > 0
    result = img2img("health", stargan_run)
    assert result.returncode == 0, result.stderr
    logged = {k for r in rows(stargan_run) for k in r}
    for direction in DIRECTIONS:
        assert f"health/grad_{direction}" in logged
        assert f"health/d_separation_{direction}" in logged


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_offers_every_direction(stargan_run, tmp_path):
    import httpx

    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "img2img", "serve", f"star={stargan_run}", "--device", "cpu",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        models = httpx.get(f"{url}/v1/models", timeout=30).json()
        star = next(m for m in models["models"] if m["name"] == "star") if "models" in models else models["star"]
        assert set(star["directions"]) == DIRECTIONS
        write_images(tmp_path / "in", 1, 33, seed=3)
        body = (tmp_path / "in" / "img000.png").read_bytes()
        response = httpx.post(f"{url}/v1/models/star/translate", content=body, params={"direction": "c2a"},
                              timeout=120)
        assert response.status_code == 200 and response.headers["X-Img2img-Direction"] == "c2a"
        result = img2img("translate", tmp_path / "in", "--model", stargan_run, "-d", "c2a", "--out", tmp_path / "cli")
        assert result.returncode == 0, result.stderr
        import io

        served = np.asarray(Image.open(io.BytesIO(response.content)))
        assert np.array_equal(served, np.asarray(Image.open(tmp_path / "cli" / "img000.png")))
        wrong = httpx.post(f"{url}/v1/models/star/translate", content=body, params={"direction": "c2aa"}, timeout=60)
        assert wrong.status_code == 400 and "did you mean 'c2a'?" in wrong.text
        spec = httpx.get(f"{url}/openapi.json", timeout=30).text
        assert "a2b or b2a" not in spec
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def test_trains_under_nproc_2_and_resumes_on_one_process(tmp_path, make_pipeline):
    pipeline = make_pipeline(tmp_path)
    run = tmp_path / "run"
    result = img2img("train", pipeline, "--nproc", "2", "--out", run, "--set", "train.max_steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 2
    result = img2img("train", "--resume", run, "--set", "train.max_steps=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in rows(run) if "d_adv" in r] == [1, 2, 3]


def test_validate_explains_what_stargan_needs(tmp_path, make_pipeline):
    pipeline = make_pipeline(tmp_path)
    raw = yaml.safe_load(pipeline.read_text())
    raw["data"]["domains"] = {"a": "a"}
    raw["data"]["channels"] = {"a": 1}
    raw["model"]["discriminator"] = {"name": "patchgan"}
    pipeline.write_text(yaml.safe_dump(raw))
    result = img2img("validate", pipeline)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1 and "Traceback" not in out
    assert "at least two domains" in out and "no domain classifier" in out


def test_demo_and_paper_pipelines_ship_with_the_plugin(tmp_path):
    listed = img2img("pipelines", cwd=tmp_path)
    assert "demo-stargan" in listed.stdout and "stargan" in listed.stdout
    for name in ("demo-stargan", "stargan"):
        result = img2img("validate", name, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    from img2img.config import load_pipeline

    paper = load_pipeline("stargan")
    assert (paper.losses.adversarial.name, paper.losses.adversarial.params["gp_weight"]) == ("wgan_gp", 10.0)
    assert (paper.stargan.lambda_cls, paper.losses.reconstruction.weight, paper.stargan.n_critic) == (1.0, 10.0, 5)
    assert paper.train.lr == 0.0001 and tuple(paper.train.betas) == (0.5, 0.999)
    listed = {p["distribution"]: p for p in json.loads(img2img("plugins", "--json", cwd=tmp_path).stdout)}
    assert {"task:stargan", "generator:stargan_generator", "discriminator:stargan_discriminator"} <= set(
        listed["img2img-stargan"]["components"])
