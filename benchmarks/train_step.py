"""Seconds per training step of a real task (built through the registry from a pipeline).

Times ``task.train_step(batch)`` on random images in [-1, 1] and, with ``--vs-reference``, the
reference-equivalent plain step (shared/bench/reference_step.py) in a subprocess of the same run
with the same thread count, so that the result is a ratio that does not depend on the machine.
The last stdout line is one JSON object; progress goes to stderr.

    python benchmarks/train_step.py --task cyclegan --size 256 --steps 3 --vs-reference
    python benchmarks/train_step.py --task cyclegan --precision bf16-mixed --channels-last --vs-reference
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REFERENCE_STEP, build_task, compile_nets, emit, log, peak_rss_mb,  # noqa: E402
                    pick_device, random_batch, summary, timed)

REFERENCE_MODEL = {"cyclegan": "cyclegan", "pix2pix": "pix2pix"}


def count_flops(task, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one training step (convolutions and matrix products, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        task.train_step(batch)
    return int(counter.get_total_flops())


def run_reference(path: Path, model: str, size: int, batch: int, steps: int, threads: int) -> dict[str, float]:
    """Run the reference step in a child process; returns its median / min / max seconds and FLOPs."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(path), "--model", model, "--size", str(size), "--batch", str(batch),
           "--steps", str(steps), "--flops"]
    log(f"reference: {' '.join(cmd[1:])}")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the reference step failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    timing = re.search(r"seconds_per_step ([\d.]+) \(min ([\d.]+) max ([\d.]+)\)", done.stdout)
    flops = re.search(r"flops_per_step ([\d.eE+]+)", done.stdout)
    if timing is None:
        raise SystemExit(f"cannot read the reference step's output:\n{done.stdout[-2000:]}")
    out = {"seconds_per_step": float(timing[1]), "min": float(timing[2]), "max": float(timing[3])}
    if flops is not None:
        out["flops_per_step"] = float(flops[1])
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="cyclegan", choices=["cyclegan", "pix2pix", "cut"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed", "fp16-mixed"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile every network, as train.compile does")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (per round)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before timing (compilation happens here)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --vs-reference: alternate ours and the reference this many times (less noise)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-flops", action="store_true", help="skip counting FLOPs (one step less)")
    ap.add_argument("--vs-reference", action="store_true", help="also time the reference step; report ratios")
    ap.add_argument("--reference", type=Path, default=REFERENCE_STEP, help="path of reference_step.py")
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.vs_reference:
        if args.task not in REFERENCE_MODEL:
            raise SystemExit(f"--vs-reference: the reference step has no {args.task} model; "
                             f"it has {', '.join(REFERENCE_MODEL)}")
        if device.type != "cpu":
            raise SystemExit("--vs-reference: the reference step runs on the CPU only; use --device cpu")
        if not args.reference.is_file():
            raise SystemExit(f"--reference: {args.reference} does not exist")

    with tempfile.TemporaryDirectory() as data_root:
        task = build_task(args.task, size=args.size, batch=args.batch, precision=args.precision,
                          channels_last=args.channels_last, compile=args.compile, device=device,
                          data_root=Path(data_root))
    batch = random_batch(task, args.size, args.batch)
    flops = None
    if not args.no_flops:
        log("counting FLOPs over one step")
        flops = count_flops(task, batch)
    if args.compile:
        compile_nets(task)
    for i in range(args.warmup):
        log(f"warm-up step {i + 1}/{args.warmup}: {timed(lambda: task.train_step(batch), device):.3f} s")

    ours: list[float] = []
    reference: list[dict[str, float]] = []
    for r in range(max(1, args.rounds) if args.vs_reference else 1):
        if args.vs_reference and r % 2 == 1:  # alternate who goes first, so drift hits both alike
            reference.append(run_reference(args.reference, REFERENCE_MODEL[args.task], args.size, args.batch,
                                           args.steps, threads))
        for i in range(args.steps):
            ours.append(timed(lambda: task.train_step(batch), device))
            log(f"round {r + 1} step {i + 1}/{args.steps}: {ours[-1]:.3f} s")
        if args.vs_reference and r % 2 == 0:
            reference.append(run_reference(args.reference, REFERENCE_MODEL[args.task], args.size, args.batch,
                                           args.steps, threads))
        if reference:
            log(f"reference round {r + 1}: {reference[-1]['seconds_per_step']:.3f} s/step")

    result = summary(ours)
    result["images_per_s"] = args.batch / result["seconds_per_step"]
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["flops_per_step"] = flops
    if flops is not None:
        result["gflops_per_s"] = round(flops / result["seconds_per_step"] / 1e9, 1)
    result |= {"task": args.task, "size": args.size, "batch": args.batch, "precision": args.precision,
               "channels_last": args.channels_last, "compile": args.compile, "threads": threads,
               "device": str(device), "steps": len(ours), "rounds": len(reference) or 1}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if reference:
        medians = sorted(r["seconds_per_step"] for r in reference)
        ref_seconds = medians[len(medians) // 2] if len(medians) % 2 else sum(medians[len(medians) // 2 - 1:
                                                                                      len(medians) // 2 + 1]) / 2
        ref_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        result |= {
            "reference_seconds_per_step": ref_seconds,
            "reference_min": min(r["min"] for r in reference),
            "reference_max": max(r["max"] for r in reference),
            "ratio_to_reference": round(result["seconds_per_step"] / ref_seconds, 3),
            "reference_peak_rss_mb": round(ref_rss, 1),
            "rss_ratio_to_reference": round(result["peak_rss_mb"] / ref_rss, 3),
            "reference_flops_per_step": reference[0].get("flops_per_step"),
        }
    emit(result)
    return result


if __name__ == "__main__":
    main()
