"""Seconds per training step of a real task (built through the registry from a pipeline).

Times ``task.train_step(batch)`` on random images in [-1, 1]. With ``--vs-reference`` it also
times a plain PyTorch step of the published recipe in the same run and reports ratios, which do not
depend on the machine. ``--reference builtin`` (the default) is benchmarks/reference_step.py;
``--reference shared`` is the project's shared yardstick beside the checkout
(../shared/bench/reference_step.py), a cross-check where it exists; any other value is a path to a
script with the same interface. Against ``shared``, pix2pix uses that script's variant (ResNet
generator, instance-norm PatchGAN, LSGAN), and ours is built the same way.

- time: the reference's step is loaded into this process and the two steps alternate one by one
  (the order flipping every pair), so a change in the machine's load hits both alike; same threads.
- memory: the reference script runs once in a child process (one warm-up step, one counted step)
  that reports its own peak RSS; ours is taken before the reference is loaded.

The last stdout line is one JSON object; progress goes to stderr.

    python benchmarks/train_step.py --task cyclegan --size 256 --steps 3 --vs-reference
    python benchmarks/train_step.py --task cyclegan --precision bf16-mixed --channels-last --vs-reference
    python benchmarks/train_step.py --task pix2pix --vs-reference --reference shared
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REFERENCE_STEP, SHARED_REFERENCE_STEP, build_task, compile_nets, emit, log,  # noqa: E402
                    peak_rss_mb, pick_device, random_batch, summary, timed)

REFERENCE_MODELS = ("cyclegan", "pix2pix")


def reference_path(value: str) -> Path:
    """``builtin``, ``shared`` or a path, as a file that exists (or exit with what to do)."""
    if value == "builtin":
        return REFERENCE_STEP
    if value == "shared":
        if not SHARED_REFERENCE_STEP.is_file():
            raise SystemExit(f"--reference shared: {SHARED_REFERENCE_STEP} does not exist (it lies beside a "
                             "project checkout only); use the default, --reference builtin")
        return SHARED_REFERENCE_STEP
    path = Path(value)
    if not path.is_file():
        raise SystemExit(f"--reference: {path} does not exist; use builtin, shared or the path of a reference step")
    return path

# Runs the reference script as __main__, then prints its own peak RSS. A child's ru_maxrss (and so
# RUSAGE_CHILDREN) starts from the parent's RSS at fork, so the child reads VmHWM, which exec resets.
RSS_WRAPPER = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
with open("/proc/self/status") as fh:
    print("peak_rss_kb", next(line.split()[1] for line in fh if line.startswith("VmHWM")))
"""


def count_flops(task, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one training step (convolutions and matrix products, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        task.train_step(batch)
    return int(counter.get_total_flops())


def reference_in_child(path: Path, model: str, size: int, batch: int, threads: int) -> dict[str, float]:
    """One run of the reference script in a child process: its peak RSS, FLOPs and step seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    args = [str(path), "--model", model, "--size", str(size), "--batch", str(batch), "--steps", "1", "--flops"]
    log(f"reference in a child process, for its memory: {' '.join(args)}")
    done = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the reference step failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    timing = re.search(r"seconds_per_step ([\d.]+)", done.stdout)
    flops = re.search(r"flops_per_step ([\d.eE+]+)", done.stdout)
    rss = re.search(r"peak_rss_kb (\d+)", done.stdout)
    if timing is None or rss is None:
        raise SystemExit(f"cannot read the reference step's output:\n{done.stdout[-2000:]}")
    exact = _json_result(done.stdout)  # the built-in step's JSON line holds the exact FLOP count
    return {"seconds": float(timing[1]),
            "flops": exact.get("flops_per_step") or (float(flops[1]) if flops else None),
            "peak_rss_mb": int(rss[1]) / 1024}


def _json_result(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return {}
    return {}


def reference_step(path: Path, model: str, size: int, batch: int, device: torch.device) -> Callable[[], None]:
    """The reference's step function, built in this process exactly as its main() builds it (on a GPU
    only the built-in reference step can run: the shared one is CPU only)."""
    spec = importlib.util.spec_from_file_location("reference_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    random.seed(0)
    builder = getattr(module, model.replace("-", "_"))
    return builder(size, batch, str(device)) if device.type != "cpu" else builder(size, batch)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="cyclegan", choices=["cyclegan", "pix2pix", "cut"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed", "fp16-mixed"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile every network, as train.compile does")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (of each, with --vs-reference)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before timing (compilation happens here)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-flops", action="store_true", help="skip counting FLOPs (one step less)")
    ap.add_argument("--vs-reference", action="store_true", help="also time the reference step; report ratios")
    ap.add_argument("--reference", default="builtin",
                    help="builtin (benchmarks/reference_step.py), shared (../shared/bench/reference_step.py, where "
                         "it exists) or the path of a script with the same interface")
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.vs_reference:
        if args.task not in REFERENCE_MODELS:
            raise SystemExit(f"--vs-reference: the reference step has no {args.task} model; "
                             f"it has {', '.join(REFERENCE_MODELS)}")
    reference = reference_path(args.reference) if args.vs_reference else None
    if args.vs_reference and device.type != "cpu" and reference != REFERENCE_STEP:
        raise SystemExit("--vs-reference on a GPU: only the built-in reference step (--reference builtin) runs "
                         "there; the shared one is CPU only")
    # the built-in step runs the published pix2pix (U-Net); another script is taken to be the shared one's
    recipe = "unet" if reference in (None, REFERENCE_STEP) else "resnet"
    model = args.task

    with tempfile.TemporaryDirectory() as data_root:
        task = build_task(args.task, size=args.size, batch=args.batch, precision=args.precision,
                          channels_last=args.channels_last, compile=args.compile, device=device,
                          data_root=Path(data_root), pix2pix_recipe=recipe)
    batch = random_batch(task, args.size, args.batch)
    ours_step = lambda: task.train_step(batch)  # noqa: E731
    flops = None
    if not args.no_flops:
        log("counting FLOPs over one step")
        flops = count_flops(task, batch)
    if args.compile:
        compile_nets(task)
    for i in range(max(args.warmup, 1 if flops is None else 0)):  # at least one full step before RSS is read
        log(f"warm-up step {i + 1}: {timed(ours_step, device):.3f} s")
    rss = peak_rss_mb()

    ours: list[float] = []
    theirs: list[float] = []
    if not args.vs_reference:
        for i in range(args.steps):
            ours.append(timed(ours_step, device))
            log(f"step {i + 1}/{args.steps}: {ours[-1]:.3f} s")
    else:
        # its memory, in a process of its own (CPU only: a GPU's memory is read below, in this process)
        child = reference_in_child(reference, model, args.size, args.batch, threads) if device.type == "cpu" else {}
        if device.type == "cuda":
            ours_gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        ref_step = reference_step(reference, model, args.size, args.batch, device)
        log(f"reference warm-up step: {timed(ref_step, device):.3f} s")
        for i in range(args.steps):
            pair = [("ours", ours_step, ours), ("reference", ref_step, theirs)]
            for name, fn, times in pair if i % 2 == 0 else pair[::-1]:
                times.append(timed(fn, device))
                log(f"{name} step {i + 1}/{args.steps}: {times[-1]:.3f} s")

    result = summary(ours)
    result["images_per_s"] = args.batch / result["seconds_per_step"]
    result["peak_rss_mb"] = round(rss, 1)
    result["flops_per_step"] = flops
    if flops is not None:
        result["gflops_per_s"] = round(flops / result["seconds_per_step"] / 1e9, 1)
    if args.task == "pix2pix":
        result["pix2pix_recipe"] = recipe
    result |= {"task": args.task, "size": args.size, "batch": args.batch, "precision": args.precision,
               "channels_last": args.channels_last, "compile": args.compile, "threads": threads,
               "device": str(device), "steps": len(ours)}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        if theirs:
            result["peak_gpu_memory_mb"] = round(ours_gpu_mb, 1)
            result["reference_peak_gpu_memory_mb"] = round(peak, 1)
            result["gpu_memory_ratio_to_reference"] = round(ours_gpu_mb / peak, 3)
        else:
            result["peak_gpu_memory_mb"] = round(peak, 1)
    if theirs:
        ref = summary(theirs)
        result |= {
            "reference_seconds_per_step": ref["seconds_per_step"],
            "reference_min": ref["min"],
            "reference_max": ref["max"],
            "ratio_to_reference": round(result["seconds_per_step"] / ref["seconds_per_step"], 3),
            "pairwise_ratio_median": round(statistics.median(o / t for o, t in zip(ours, theirs)), 3),
            "reference_peak_rss_mb": round(child["peak_rss_mb"], 1) if child else None,
            "rss_ratio_to_reference": round(rss / child["peak_rss_mb"], 3) if child else None,
            "reference_flops_per_step": child.get("flops"),
            "reference": args.reference if args.reference in ("builtin", "shared") else str(reference),
        }
    emit(result)
    return result


if __name__ == "__main__":
    main()
