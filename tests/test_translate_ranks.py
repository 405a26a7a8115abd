"""`img2img translate` under torchrun (gloo, 2 CPU processes): the single-process output set byte for
byte, one summary whose counts add up, resumable after kill -9."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from img2img.inference.distributed import balance, image_shape, one_process_batches
from img2img.inference.files import plan_outputs, run_plan
from img2img.inference.translator import Translator, translate_inputs

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

IMG2IMG = [sys.executable, "-m", "img2img"]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", IMG2IMG_DIST_TIMEOUT="60", PYTHONUNBUFFERED="1", COLUMNS="200")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        e.pop(key, None)
    return e


def noise(h: int, w: int, seed: int, channels: int = 3) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)


def mixed_folder(root: Path) -> Path:
    """Subfolders, odd sizes (some shared, so batches form), PNG, JPEG and grey, an unreadable file."""
    sizes = [(33, 47), (40, 40), (40, 40), (61, 29), (17, 90), (40, 40), (33, 47), (52, 52), (29, 61)]
    for i, (h, w) in enumerate(sizes):
        sub = root / ("day" if i % 3 == 0 else "night/deep" if i % 3 == 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        noise(h, w, i).save(sub / f"img{i}.{'jpg' if i % 4 == 3 else 'png'}")
    noise(36, 28, 99, channels=1).save(root / "day" / "grey.png")
    (root / "night" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return root


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def single_process(inputs: Path, run: Path, out: Path, **options) -> None:
    translate_inputs([inputs], model=run, out=out, device="cpu", console=Console(file=io.StringIO()), **options)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own)."""
    found = []
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in map(int, children):
        found += [child, *descendants(child)]
    return found


def flat(text: str) -> str:
    return " ".join(text.split())


def test_balance_splits_by_weight_deterministically():
    weights = [100, 1, 1, 1, 50, 50, 1]
    shards = balance(weights, 2)
    assert shards == [[0, 1, 3], [2, 4, 5, 6]]  # 102 and 102 pixels' worth, each in input order
    assert balance(weights, 2) == shards
    assert balance([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]
    assert balance([3], 4) == [[0], [], [], []]
    assert sorted(i for s in balance(list(range(50)), 3) for i in s) == list(range(50))


@pytest.mark.parametrize("batch_size,resize", [(2, None), (3, 20)])
def test_ranks_form_the_batches_one_process_forms(translate_run, tmp_path, batch_size, resize):
    """Many distinct sizes (so the fullest-bucket rule fires), repeats, an unreadable file, --resize."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    sizes = [(20, 24), (22, 30), (20, 24), (26, 18), (30, 30), (22, 30), (18, 40), (34, 22), (20, 24), (40, 16),
             (24, 24), (36, 20), (16, 28), (22, 30), (28, 28), (20, 24), (38, 38), (18, 18)]
    for i, (h, w) in enumerate(sizes):
        noise(h, w, i).save(inputs / f"{i:02d}.png")
    (inputs / "07b.png").write_bytes(b"not an image")
    translator = Translator.load(translate_run, device="cpu", batch_size=batch_size)
    ran: list[list[tuple[int, int]]] = []
    original = translator.translate_arrays

    def recording(arrays):
        ran.append([a.shape[:2] for a in arrays])
        return original(arrays)

    translator.translate_arrays = recording
    plan = plan_outputs([inputs], tmp_path / "out", None, False)
    run_plan(translator, plan, tmp_path / "out", resize=resize, keep_depth=False, console=Console(file=io.StringIO()))
    shapes = [image_shape(job.src, resize) for job in plan.jobs]
    expected = one_process_batches(shapes, batch_size, lambda h, w: False)
    assert ran == [[shapes[i] for i in batch] for batch in expected if shapes[batch[0]] is not None]
    assert any(len(batch) < batch_size for batch in expected[:-3])  # the fullest-bucket rule fired


def test_two_ranks_write_the_single_process_outputs_byte_for_byte(translate_run, tmp_path):
    inputs = mixed_folder(tmp_path / "in")
    reference, out = tmp_path / "reference", tmp_path / "out"
    for folder in (reference, out):  # an output already there is kept, in both
        (folder / "day").mkdir(parents=True)
        noise(33, 47, 1000).save(folder / "day" / "img0.png")
    single_process(inputs, translate_run, reference, batch_size=2)

    args = IMG2IMG + ["translate", str(inputs), "--model", str(translate_run), "--out", str(out), "--device", "cpu",
                      "--batch-size", "2", "--nproc", "2"]
    result = subprocess.run(args, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    assert files(out) == files(reference)
    assert not list(out.rglob(".*.tmp"))

    # one summary, from rank 0: 9 translated + 1 skipped + 1 unreadable = the 11 inputs
    text = flat(result.stdout)
    assert text.count("translated 9 images") == 1, text
    assert "skipped 1 existing output(s)" in text and "not translated (1)" in text and "broken.png" in text
    per_rank = [int(n) for n in re.findall(r"rank \d \([^)]*\): (\d+) translated", text)]
    assert len(per_rank) == 2 and sum(per_rank) == 9 and min(per_rank) > 0, text

    # --strict: the unreadable file of whichever rank makes the job exit 1; nothing else changes
    strict = subprocess.run(args + ["--strict"], cwd=tmp_path, env=env(), capture_output=True, text=True,
                            timeout=240)
    assert strict.returncode == 1, (strict.stdout + strict.stderr)[-4000:]
    assert "Traceback" not in strict.stdout + strict.stderr
    assert "broken.png" in flat(strict.stdout) and "skipped 10 existing output(s)" in flat(strict.stdout)
    assert files(out) == files(reference)


def test_a_killed_launch_run_again_completes_the_set(translate_run, tmp_path):
    inputs = tmp_path / "in"
    for i in range(60):
        (inputs / f"part{i % 3}").mkdir(parents=True, exist_ok=True)
        noise(96 + (i % 4) * 8, 112, i).save(inputs / f"part{i % 3}" / f"frame{i:03d}.png")
    reference, out = tmp_path / "reference", tmp_path / "out"
    single_process(inputs, translate_run, reference)
    args = IMG2IMG + ["translate", str(inputs), "--model", str(translate_run), "--out", str(out), "--device", "cpu",
                      "--nproc", "2"]
    launch = subprocess.Popen(args, cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not any(out.rglob("*.png")):
            time.sleep(0.02)
        for pid in [launch.pid, *descendants(launch.pid)]:  # the launcher and both ranks, mid-way
            os.kill(pid, signal.SIGKILL)
        launch.wait(timeout=30)
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
    time.sleep(1)  # nothing is left running to add a file
    done = [p for p in out.rglob("*.png") if not p.name.startswith(".")]
    assert 0 < len(done) < 60, "the kill came too late to interrupt the translation"
    for path in done:  # what is there is complete
        assert path.read_bytes() == (reference / path.relative_to(out)).read_bytes()

    again = subprocess.run(args, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert files(out) == files(reference)  # complete, no duplicates, no temporary files left
    text = flat(again.stdout)
    assert f"translated {60 - len(done)} image" in text and f"skipped {len(done)} existing" in text, text


def test_a_problem_before_the_start_is_said_once(translate_run, tmp_path):
    result = subprocess.run(IMG2IMG + ["translate", str(tmp_path / "nowhere"), "--model", str(translate_run),
                                       "--out", str(tmp_path / "out"), "--nproc", "2"],
                            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=240)
    output = flat(result.stdout + result.stderr)
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "ChildFailedError" not in output
    assert output.count("no such input file or folder") == 1, output[-3000:]
    assert not (tmp_path / "out").exists()


def test_a_rank_that_stops_is_reported_with_the_files_it_did_not_translate(translate_run, tmp_path):
    """A 64 KiB tmpfs under the output folder: whichever rank writes there meets the kernel's ENOSPC."""
    inputs = tmp_path / "in"
    for i in range(8):
        for sub, size in (("big", 96), ("small", 24)):
            (inputs / sub).mkdir(parents=True, exist_ok=True)
            noise(size, size, i + (100 if sub == "big" else 0)).save(inputs / sub / f"{i}.png")
    out = tmp_path / "out"
    (out / "big").mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out / "big")],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    args = IMG2IMG + ["translate", str(inputs), "--model", str(translate_run), "--out", str(out), "--device", "cpu",
                      "--nproc", "2"]
    try:
        result = subprocess.run(args, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=240)
        written = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    finally:
        subprocess.run(["umount", str(out / "big")], check=False)
    output = flat(result.stdout + result.stderr)
    assert result.returncode == 1, output[-4000:]
    assert "Traceback" not in output and "stopped: disk full while writing" in output, output[-4000:]
    assert "Run the same command again" in output
    listed = set(re.findall(r"(\S+/in/(?:big|small)/\d\.png): not done", output))
    missing = {str(inputs / rel) for rel in (f"{s}/{i}.png" for s in ("big", "small") for i in range(8))
               if rel not in written}
    assert missing and listed == missing, (listed, missing)  # exactly the inputs without an output

    again = subprocess.run(args, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    reference = tmp_path / "reference"
    single_process(inputs, translate_run, reference)
    assert files(out) == files(reference)


def test_one_process_removes_what_a_killed_write_left_beside_its_outputs(translate_run, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    noise(24, 24, 0).save(inputs / "sub" / "a.png")
    noise(24, 24, 1).save(inputs / "sub" / "b.png")
    (tmp_path / "out" / "sub").mkdir(parents=True)
    leftover = tmp_path / "out" / "sub" / ".a.png.x1y2z3.tmp"  # as a kill -9 mid-write leaves it
    leftover.write_bytes(b"\x89PNG half")
    kept = inputs / "sub" / ".notes.tmp"  # never anything in an input folder
    kept.write_bytes(b"mine")
    single_process(inputs, translate_run, tmp_path / "out")
    assert not leftover.exists() and kept.read_bytes() == b"mine"
    assert sorted(p.name for p in (tmp_path / "out" / "sub").iterdir()) == ["a.png", "b.png"]
