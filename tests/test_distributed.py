"""torchrun on the CPU (gloo, 2 processes): one run folder, identical replicas, resume across world sizes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
IMG2IMG = [sys.executable, "-m", "img2img"]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", IMG2IMG_DIST_TIMEOUT="30", PYTHONUNBUFFERED="1")
    e.pop("WORLD_SIZE", None)
    return e


def run_cmd(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def test_torchrun_writes_one_run_folder_and_resumes_on_one_process(tiny_cyclegan, tmp_path):
    run = tmp_path / "run"
    result = run_cmd(TORCHRUN + ["-m", "img2img", "train", str(tiny_cyclegan), "--out", str(run),
                                 "--set", "train.max_steps=4"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert files == ["checkpoints/last.pt", "checkpoints/step-2.pt", "checkpoints/step-4.pt", "metrics.jsonl",
                     "pipeline.yaml", "plugins.json", "samples/step-2.png", "samples/step-4.png", "transforms.json"]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 4
    resumed = run_cmd([sys.executable, "-m", "img2img", "train", "--resume", str(run),
                       "--set", "train.max_steps=6"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


REPLICA_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    import torch
    from img2img.config import load_pipeline
    from img2img.engine.train import RunFolder, Trainer, prepare_run_folder, setup_distributed
    from img2img.tasks import unwrap

    pipeline = load_pipeline(sys.argv[1], sys.argv[3:])
    dist, device = setup_distributed("cpu", 60)
    run = RunFolder(Path(sys.argv[2]))
    if dist.main:
        prepare_run_folder(run.root, resume=False, overwrite=True)
    dist.barrier()
    trainer = Trainer(pipeline, run, dist=dist, device=device)
    trainer.fit()
    state = {k: {n: t.clone() for n, t in unwrap(v).state_dict().items()} for k, v in trainer.task.nets.items()}
    torch.save(state, f"{sys.argv[2]}-rank{dist.rank}.pt")
    if dist.enabled:
        torch.distributed.destroy_process_group()
''')


def test_replicas_hold_identical_weights(tiny_cyclegan, tmp_path):
    script = tmp_path / "replicas.py"
    script.write_text(REPLICA_SCRIPT)
    run = tmp_path / "run"
    result = run_cmd(TORCHRUN + [str(script), str(tiny_cyclegan), str(run), "train.max_steps=3"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    r0 = torch.load(f"{run}-rank0.pt", weights_only=True)
    r1 = torch.load(f"{run}-rank1.pt", weights_only=True)
    for net in r0:
        for name, tensor in r0[net].items():
            assert torch.equal(tensor, r1[net][name]), f"{net}.{name} differs between ranks"


def test_two_ranks_of_batch_one_match_one_process_of_batch_two(tiny_pix2pix, tmp_path):
    """Instance norm is per sample and DDP averages gradients, so 2 x batch 1 == 1 x batch 2 up to rounding."""
    script = tmp_path / "replicas.py"
    script.write_text(REPLICA_SCRIPT)
    common = ["train.max_steps=3", "model.generator.norm=instance", "model.generator.dropout=0",
              "model.discriminator.norm=instance",
              "data.transforms=[{CenterCrop: {height: 32, width: 32}}]"]
    result = run_cmd(TORCHRUN + [str(script), str(tiny_pix2pix), str(tmp_path / "ddp"), "train.batch_size=1",
                                 *common], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    single = run_cmd([sys.executable, str(script), str(tiny_pix2pix), str(tmp_path / "single"),
                      "train.batch_size=2", *common], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = torch.load(f"{tmp_path / 'ddp'}-rank0.pt", weights_only=True)
    one = torch.load(f"{tmp_path / 'single'}-rank0.pt", weights_only=True)
    diffs = torch.cat([(ddp[n][k] - one[n][k]).abs().flatten() for n in ddp for k in ddp[n]
                       if ddp[n][k].is_floating_point()])
    # Gradients agree to float rounding; Adam turns rounding in near-zero gradients into updates of up
    # to lr for a handful of weights, so the bound is on the mean and on the fraction of outliers.
    assert diffs.mean() < 1e-5 and (diffs > 1e-4).float().mean() < 1e-2
    for a, b in zip(read_rows(tmp_path / "ddp"), read_rows(tmp_path / "single")):
        for key in ("d", "g_adv", "rec"):
            assert a[key] == pytest.approx(b[key], rel=1e-5)


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def start_training(launcher: list[str], pipeline: Path, run: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    """A long training in its own process group, returned once it has logged its first row."""
    proc = subprocess.Popen(launcher + ["train", str(pipeline), "--out", str(run), "--set", "train.max_steps=100000",
                                        "--set", "train.log_every=1", *extra],
                            cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.5)
    if not (run / "metrics.jsonl").exists():
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("training never started")
    return proc


def test_a_killed_worker_ends_the_job(tiny_cyclegan, tmp_path):
    proc = start_training(TORCHRUN + ["-m", "img2img"], tiny_cyclegan, tmp_path / "run", tmp_path)
    try:
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        os.kill(int(workers[-1]), signal.SIGKILL)
        code = proc.wait(timeout=90)
        assert code != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_nproc_reports_a_pipeline_error_once_without_a_traceback(tiny_cyclegan, tmp_path):
    """`train --nproc 2` with data that is not there: rank 0's message once, the others stop quietly, exit 1."""
    result = run_cmd(IMG2IMG + ["train", str(tiny_cyclegan), "--nproc", "2", "--out", str(tmp_path / "run"),
                                "--set", "data.a=nowhere"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "ChildFailedError" not in output, output[-3000:]
    assert "data.a" in output and "nowhere" in output, output[-3000:]  # (each rank that found it says so)
    assert "stopped (exit code 1); the reason is printed above" in output, output[-3000:]


def test_nproc_reports_rank_0_error_once(tiny_cyclegan, tmp_path):
    """An error only rank 0 can see (it prepares the run folder): said once, the other rank stops quietly."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.txt").write_text("user data")
    result = run_cmd(IMG2IMG + ["train", str(tiny_cyclegan), "--nproc", "2", "--out", str(tmp_path / "photos"),
                                "--overwrite"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert output.count("is not an img2img run folder") == 1, output[-3000:]
    assert (tmp_path / "photos" / "keep.txt").read_text() == "user data"


def test_nproc_ctrl_c_stops_every_process_once_and_resumes(tiny_cyclegan, tmp_path):
    run = tmp_path / "run"
    proc = start_training(IMG2IMG, tiny_cyclegan, run, tmp_path, "--nproc", "2")
    try:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and output.count("SIGINT: stopped after step") == 1, output[-3000:]
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    resumed = run_cmd(IMG2IMG + ["train", "--resume", str(run), "--set", f"train.max_steps={step + 1}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
