"""The HTML run report: one self-contained file built from a run folder, readable in a browser."""
from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2img.errors import Img2ImgError
from img2img.evaluation.report import PALETTE, ema, load_run, read_metrics, split_series, timing_summary, write_report

PIPELINE = """\
task: cyclegan
name: demo-zebra
seed: 3
data:
  a: data/a
  b: data/b
  transforms:
    - Resize: {height: 40, width: 40}
    - RandomCrop: {height: 32, width: 32}
model:
  generator: {name: resnet_6blocks, ngf: 8}
  discriminator: {name: patchgan, n_layers: 2}
losses:
  adversarial: {name: lsgan}
  cycle: {name: l1, weight: 10.0}
train:
  batch_size: 2
  lr: 0.0002
"""


def _sample_png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    image = np.stack([np.tile(ramp, (32, 1)), np.full((32, 64), 40.0 * seed), rng.uniform(0, 255, (32, 64))], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.astype(np.uint8)).save(path)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "pipeline.yaml").write_text(PIPELINE)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(1, 37):
        step = 10 * i
        seconds = 0.5 + 0.05 * rng.standard_normal()
        lines.append(json.dumps({
            "step": step, "epoch": step // 100, "lr": 2e-4 * (1 - step / 400), "lr_d": 1e-4,
            "seconds_per_step": seconds, "images_per_s": 2 / seconds, "skipped_steps": i // 10,
            "g_adv_b": 1 / (1 + step / 50) + 0.05 * rng.random(),
            "cycle_a": 2.0 * np.exp(-step / 150) + 0.1 * rng.random(),
            "d_b": 0.25 + 0.02 * rng.standard_normal(),
        }))
        if step % 60 == 0:
            val = {"step": step, "epoch": step // 100, "val_psnr": 15 + step / 40, "val_ssim": step / 400}
            lines.append(json.dumps(val))
    text = "\n".join(lines) + '\n{"step": 370, "epoch": 3, "g_adv'  # a crash cut the last line
    (run / "metrics.jsonl").write_text(text)
    _sample_png(run / "samples" / "step-100.png", 1)
    _sample_png(run / "samples" / "step-20.png", 2)
    (run / "checkpoints").mkdir()
    for name in ("last.pt", "step-100.pt", "step-20.pt", "best.pt"):
        (run / "checkpoints" / name).write_bytes(b"\0" * 1024)
    return run


def test_report_is_one_self_contained_file(run_dir: Path, tmp_path: Path) -> None:
    out = write_report(run_dir, tmp_path / "out" / "report.html")
    assert out == tmp_path / "out" / "report.html"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]
    page = out.read_text(encoding="utf-8")

    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<(link|iframe)\b|<script[^>]*\bsrc=|@import|url\((?!#)", page, re.I)
    assert page.count("<svg") >= 4  # losses, learning rate, validation, timing
    assert "demo-zebra" in page and "cyclegan" in page and "resnet_6blocks (ngf=8)" in page
    for term in ("g_adv_b", "cycle_a", "d_b", "val_psnr", "val_ssim", "lr_d", "seconds_per_step"):
        assert term in page
    assert "Resize(height=40, width=40) → RandomCrop(height=32, width=32)" in page
    assert "1 unreadable line(s)" in page
    assert "<details><summary>pipeline.yaml</summary>" in page and "RandomCrop: {height: 32, width: 32}" in page

    # samples: numeric order, the latest shown large, each file embedded byte for byte
    assert re.findall(r'data-step="(\d+)"', page) == ["20", "100"]
    assert "Latest samples · step 100" in page
    assert 'type="range"' in page and 'max="1"' in page
    for step in (20, 100):
        data = base64.b64encode((run_dir / "samples" / f"step-{step}.png").read_bytes()).decode()
        assert f"data:image/png;base64,{data}" in page

    # checkpoints in step order, then the named ones
    names = re.findall(r"<code>checkpoints/([^<]+)</code>", page)
    assert names == ["step-20.pt", "step-100.pt", "best.pt", "last.pt"]
    assert page.count("<td class=num>1.0 KiB</td>") == 4

    # throughput as the trainer logged it, and its running count of skipped steps
    rows, _ = read_metrics(run_dir / "metrics.jsonl")
    median = float(np.median([r["images_per_s"] for r in rows if "images_per_s" in r]))
    assert f"<td>images/s</td><td class=num>{median:.4g}</td>" in page
    assert "<td>total steps</td><td class=num>360</td>" in page
    assert "<td>skipped steps</td><td class=num>3</td>" in page


def test_metrics_reader_splits_terms_and_tolerates_a_cut_line(run_dir: Path) -> None:
    rows, skipped = read_metrics(run_dir / "metrics.jsonl")
    assert skipped == 1 and len(rows) == 36 + 6
    groups = split_series(rows)
    assert set(groups["loss"]) == {"g_adv_b", "cycle_a", "d_b"}
    assert set(groups["lr"]) == {"lr", "lr_d"}
    assert set(groups["time"]) == {"seconds_per_step", "images_per_s"}
    assert set(groups["counter"]) == {"skipped_steps"}
    assert set(groups["val"]) == {"val_psnr", "val_ssim"}
    assert groups["val"]["val_psnr"].steps == [60, 120, 180, 240, 300, 360]
    assert groups["loss"]["d_b"].steps == list(range(10, 361, 10))
    assert "epoch" not in groups["loss"] and "step" not in groups["loss"]


def test_resumed_steps_keep_the_last_value_and_non_finite_are_hidden(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 5.0}, {"step": 3, "loss": math.nan}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    series = split_series(read_metrics(path)[0])["loss"]["loss"]
    assert series.steps == [1, 2] and series.values == [1.0, 5.0] and series.hidden == 1


def test_images_per_second_falls_back_to_batch_size_over_seconds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "pipeline.yaml").write_text("task: pix2pix\nname: p\ntrain: {batch_size: 4}\n")
    rows = [{"step": 10 * i, "epoch": 0, "seconds_per_step": s, "l1": 1.0} for i, s in enumerate((0.4, 0.5, 2.0), 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = timing_summary(load_run(run))
    assert summary["median s/step"] == 0.5 and summary["images/s"] == pytest.approx(8.0)
    assert summary["estimated training time"] == "0m 29s"  # 10 * 0.4 + 10 * 0.5 + 10 * 2.0
    assert summary["total steps"] == 30


def test_ema_is_debiased_and_tracks_a_constant() -> None:
    assert ema([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])
    smoothed = ema([0.0, 10.0], 0.5)
    assert smoothed == pytest.approx([0.0, 10.0 * 0.5 / 0.75])
    assert ema([1.0, 2.0], 0.0) == [1.0, 2.0]


def test_empty_metrics_and_no_pipeline_still_give_a_page(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    page = write_report(run, tmp_path / "r.html").read_text()
    assert "no logged step yet" in page and "pipeline.yaml is missing" in page
    assert "<h1>run</h1>" in page


def test_missing_run_folder_and_metrics_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(Img2ImgError, match="does not exist"):
        write_report(tmp_path / "nope", tmp_path / "r.html")
    (tmp_path / "run").mkdir()
    with pytest.raises(Img2ImgError, match="metrics.jsonl is missing"):
        write_report(tmp_path / "run", tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_importing_the_report_module_does_not_load_matplotlib() -> None:
    code = "import sys, img2img.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)


def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium); the browser check needs it")
    report = write_report(run_dir, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000",
            f"--screenshot={shot}", report.resolve().as_uri(),
        ],
        check=True, timeout=120, capture_output=True,
    )
    # the inline script ran: it marks the thumbnail the slider points at (the latest)
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", report.resolve().as_uri()],
        check=True, timeout=120, capture_output=True, text=True,
    ).stdout
    assert re.search(r'<img[^>]*class="active"[^>]*data-step="100"|<img[^>]*data-step="100"[^>]*class="active"', dom)

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    # the smoothed loss curves are drawn in the first palette colours
    for color in PALETTE[:3]:
        close = np.abs(pixels.astype(np.int16) - _hex_rgb(color)).max(axis=-1) <= 12
        assert close.sum() > 200, f"curve colour {color} not found in the screenshot"


def test_validation_curves_mark_the_best_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "pipeline.yaml").write_text("task: cut\nname: kid-run\ntrain: {val_metric: kid}\n")
    kids = [0.30, 0.12, 0.18, 0.15]
    lines = []
    for i, kid in enumerate(kids, 1):
        lines.append({"step": 10 * i, "epoch": 0, "g_ab": 1.0 / i, "seconds_per_step": 0.2, "lr": 2e-4})
        row = {"step": 10 * i, "epoch": 0, "val_kid": kid, "val_kid_std": 0.01, "val_seconds": 1.5}
        if kid == min(kids[:i]):
            row["val_best"] = 1
        lines.append(row)
    lines.append({"step": 40, "epoch": 0, "<img src=x onerror=alert(1)>": 1.0})  # keys are data, not markup
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    for name in ("best.pt", "last.pt"):
        (run / "checkpoints" / name).write_bytes(b"\0" * 10)

    loaded = load_run(run)
    assert set(loaded.vals) == {"val_kid"} and set(loaded.spreads) == {"val_kid"}  # std is a band, not a panel
    assert loaded.val_seconds.values == [1.5] * 4 and "val_best" not in loaded.vals
    assert (loaded.best.step, loaded.best.key, loaded.best.value) == (20, "val_kid", 0.12)

    page = write_report(run, tmp_path / "r.html").read_text()
    assert "chosen by val_kid = 0.12" in page and "step 20" in page
    assert "<b>step 20</b><span>best.pt (val_kid 0.12)</span>" in page
    assert "<td>best validation, step 20: val_kid = 0.12</td>" in page
    assert '<tr class="best"><td>val_kid</td>' in page and "★ best.pt" in page  # the starred panel title
    assert "<td>validation time</td><td class=num>0m 06s</td>" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_every_section_comes_from_a_template(run_dir: Path, tmp_path: Path) -> None:
    """The page is templates/report.html.j2 plus one template per section; code passes data only."""
    from img2img.evaluation import report

    templates = Path(report.__file__).with_name("templates")
    sections = [s for s in (make(report.load_run(run_dir)) for make in report.SECTIONS) if s is not None]
    assert [s.id for s in sections] == ["losses", "lr", "validation", "health", "timing", "samples", "checkpoints",
                                       "pipeline"]
    for section in sections:
        assert (templates / "sections" / section.template).is_file()
    page = write_report(run_dir, tmp_path / "r.html").read_text()
    assert all(f'<section id="{s.id}">' in page for s in sections)
    assert "<h2" not in Path(report.__file__).read_text()  # no HTML built in the module
